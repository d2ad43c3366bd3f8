"""The actuator's decisions as pure functions: guard rails on threshold advice, and the
probation verdict on a change. No Kafka, no Redis, so every rule is testable on its own.

All times are event time (a trigger's window end, window statistics' bounds), never the
clock: a replayed trigger meets the same state and gets the same decision.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from statistics import NormalDist

from streams.events import TriggerEvent

#: Evidence tau is the mean threshold of the hour's decisions; a threshold in force that far
#: from it means the advice was computed under another threshold (mixed, or older data).
STALE_TOLERANCE = 0.01
ENV_PREFIX = "NPO_ACTUATOR_"


@dataclass(frozen=True)
class ActuatorConfig:
    """Guard rails and probation; each field ``x`` is also read as ``NPO_ACTUATOR_X``."""

    advisory: bool = False  # decide and publish "advised", never write a threshold
    max_step: float = 0.1  # most a threshold moves in one change
    cooldown_s: float = 3600.0  # event time between changes of a key
    probation_s: float = 3600.0  # event time a change is watched, compared with as long before it
    min_saving: float = 0.02  # held-out saving bound the advice must clear (the rule's min_cost_saving)
    min_labels: float = 30.0  # effective labels each side of the probation needs before it can revert
    confidence: float = 0.95  # one-sided, of "the loss got worse"
    group: str = "npo-actuator"  # consumer group on the triggers and stats topics
    from_beginning: bool = False  # a new group starts at the oldest message (default: the newest)

    def __post_init__(self) -> None:
        if not 0 < self.max_step <= 1:
            raise ValueError("max_step must be in (0, 1]")
        if self.cooldown_s < 0 or self.probation_s <= 0:
            raise ValueError("cooldown_s must be >= 0 and probation_s > 0")
        if not 0.5 < self.confidence < 1:
            raise ValueError("confidence must be in (0.5, 1)")
        if self.min_saving < 0 or self.min_labels < 1:
            raise ValueError("min_saving must be >= 0 and min_labels >= 1")

    @property
    def version(self) -> str:
        """Hash of what shapes decisions (not the group or where to start), for ``config_version``."""
        shaping = {k: v for k, v in asdict(self).items() if k not in ("group", "from_beginning")}
        return "act-" + hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def load(cls, overrides: dict | None = None, env: dict | None = None) -> ActuatorConfig:
        """Defaults, then ``NPO_ACTUATOR_*`` variables, then ``overrides`` (flags; None = unset)."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw not in (None, ""):
                values[f.name] = _coerce(f.name, f.default, raw)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls(**values)


def _coerce(name: str, default, raw: str):
    if isinstance(default, bool):
        if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise ValueError(f"{ENV_PREFIX}{name.upper()}: expected true or false, got {raw!r}")
        return raw.lower() in ("1", "true", "yes")
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError as e:
            raise ValueError(f"{ENV_PREFIX}{name.upper()}: expected a number, got {raw!r}") from e
    return raw


def action_id(trigger_id: str, decision: str) -> str:
    """Stable id of a decision on a trigger: a republished action keeps it."""
    return hashlib.sha256(f"{trigger_id}\x1f{decision}".encode()).hexdigest()[:32]


def rollback_trigger_id(change_id: str) -> str:
    """Stable id of the rollback trigger that reverts change ``change_id``."""
    return hashlib.sha256(f"rollback\x1factuator\x1f{change_id}".encode()).hexdigest()[:32]


@dataclass
class Probation:
    """A change under watch: event time [start, end), the thresholds on either side of it."""

    change_id: str
    trigger_id: str
    start: float
    end: float
    tau_before: float
    tau_after: float


@dataclass
class KeyState:
    """What the actuator remembers of a key between decisions (kept in Redis)."""

    last_change_at: float | None = None  # event time of the last change (or advice, when advisory)
    probation: Probation | None = None

    def dump(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> KeyState:
        if not data:
            return cls()
        p = data.get("probation")
        return cls(last_change_at=data.get("last_change_at"), probation=Probation(**p) if p else None)


@dataclass
class Decision:
    """The outcome of one trigger: the action event's fields, the state after it, and the
    threshold to write (None: write nothing)."""

    action: dict
    state: KeyState
    write_tau: float | None = None


def decide_adjust(trigger: TriggerEvent, state: KeyState, tau_in_force: float | None,
                  config: ActuatorConfig) -> Decision:
    """Guard rails on one threshold_adjust trigger, in order: the advice passed its held-out
    validation; the key is not in probation; the cool-down since its last change is over; the
    advice was computed under the threshold in force; and it moves the threshold at all. Then
    apply (or advise) a move of at most ``max_step`` toward tau*."""
    ev, at = trigger.evidence, trigger.window.end
    current = tau_in_force if tau_in_force is not None else ev.tau
    base = {"policy_id": trigger.policy_id, "segment": trigger.segment, "trigger_id": trigger.trigger_id,
            "event_time": at, "tau_before": current, "tau_after": current, "tau_star": ev.tau_star,
            "heldout_saving_lo": ev.heldout_saving_lo, "advisory": config.advisory,
            "config_version": config.version}

    def skip(why: str, text: str) -> Decision:
        return Decision(_action(base, "skipped", text, skip_reason=why), state)

    lo = ev.heldout_saving_lo
    if lo is None or ev.tau_star is None or ev.tau is None or not lo >= config.min_saving:
        return skip("not_validated", "the advice carries no held-out saving bound of at least "
                                     f"{config.min_saving:g}" + (f" (it has {lo:.4f})" if lo is not None else ""))
    if state.probation is not None:
        return skip("probation", f"change {state.probation.change_id} is on probation until "
                                 f"{state.probation.end:.0f}")
    if state.last_change_at is not None and at - state.last_change_at < config.cooldown_s:
        return skip("cooldown", f"last change at {state.last_change_at:.0f}, cool-down {config.cooldown_s:g} s")
    if abs(ev.tau - current) > STALE_TOLERANCE:
        return skip("stale", f"advice computed under threshold {ev.tau:.3f}, {current:.3f} is in force")
    target = round(current + max(-config.max_step, min(config.max_step, ev.tau_star - current)), 6)
    if abs(target - current) < 1e-9:
        return skip("no_change", f"tau* {ev.tau_star:.3f} is the threshold in force")
    move = (f"threshold {current:.3f} -> {target:.3f} (tau* {ev.tau_star:.3f}, max step {config.max_step:g}); "
            f"held-out saving at least {lo:.4f}")
    base["tau_target"] = target
    if config.advisory:
        return Decision(_action(base, "advised", "advisory: would set " + move),
                        KeyState(last_change_at=at, probation=None))
    aid = action_id(trigger.trigger_id, "applied")
    probation = Probation(change_id=aid, trigger_id=trigger.trigger_id, start=at, end=at + config.probation_s,
                          tau_before=current, tau_after=target)
    base.update(tau_after=target, probation_end=probation.end)
    return Decision(_action(base, "applied", move), KeyState(last_change_at=at, probation=probation), write_tau=target)


def _action(base: dict, decision: str, reason: str, **extra) -> dict:
    return {"type": "action", "v": 1, "action_id": action_id(base["trigger_id"], decision), "decision": decision,
            "reason": reason[:256], **base, **extra}


@dataclass
class Pooled:
    """Labels of several windows together: override weight, label weight, sum of squared weights."""

    override_w: float = 0.0
    w: float = 0.0
    w2: float = 0.0
    n_decisions: int = 0
    n_feedback: int = 0
    n_labels: int = 0
    windows: int = 0

    @property
    def loss(self) -> float | None:
        return self.override_w / self.w if self.w > 0 else None

    @property
    def n_eff(self) -> float:
        return self.w * self.w / self.w2 if self.w2 > 0 else 0.0

    def add(self, win: dict) -> None:
        """Add one window's statistics (``loss``, ``weight_sum``, ``n_eff``, counts)."""
        self.windows += 1
        self.n_decisions += int(win.get("n_decisions") or 0)
        self.n_feedback += int(win.get("n_feedback") or 0)
        self.n_labels += int(win.get("n_labels") or 0)
        w, loss, n_eff = win.get("weight_sum") or 0.0, win.get("loss"), win.get("n_eff")
        if w > 0 and loss is not None and n_eff:
            self.override_w += loss * w
            self.w += w
            self.w2 += w * w / n_eff  # n_eff = w^2 / sum of squares


@dataclass
class Verdict:
    decision: str  # "kept" or "reverted"
    before: Pooled
    after: Pooled
    z: float | None
    reason: str = field(default="")


def probation_due(windows: dict[float, dict], probation: Probation) -> bool:
    """Whether a final window has reached the end of the probation (event time has passed it)."""
    return any(w["end"] >= probation.end for w in windows.values())


def probation_verdict(windows: dict[float, dict], probation: Probation, config: ActuatorConfig) -> Verdict:
    """Compare the loss over the probation after the change with the loss in as long an event
    time before it: one-sided two-proportion z-test, pooled, on effective sample sizes
    (``n_eff = (Σw)²/Σw²``, so unit weights give the textbook test). Revert only if the loss
    is worse at ``confidence`` and each side has ``min_labels`` effective labels; else keep.

    ``windows`` maps a final tumbling window's start to its statistics (with its ``end``)."""
    length = probation.end - probation.start
    before, after = Pooled(), Pooled()
    for start, win in sorted(windows.items()):
        if probation.start - length <= start and win["end"] <= probation.start:
            before.add(win)
        elif probation.start <= start and win["end"] <= probation.end:
            after.add(win)
    z = None
    if before.n_eff > 0 and after.n_eff > 0:
        n_b, n_a = before.n_eff, after.n_eff
        pooled = (before.loss * n_b + after.loss * n_a) / (n_b + n_a)
        se = math.sqrt(pooled * (1 - pooled) * (1 / n_b + 1 / n_a))
        diff = after.loss - before.loss
        z = diff / se if se > 0 else (math.inf if diff > 0 else 0.0)
    bar = NormalDist().inv_cdf(config.confidence)
    enough = min(before.n_eff, after.n_eff) >= config.min_labels
    losses = f"loss {_fmt(after.loss)} after the change vs {_fmt(before.loss)} before"
    if enough and z is not None and z >= bar:
        return Verdict("reverted", before, after, z, f"{losses} (z {z:.2f} >= {bar:.2f})")
    if not enough:
        why = (f"{losses}: too few labels to tell (n_eff {before.n_eff:.0f} before, {after.n_eff:.0f} after, "
               f"{config.min_labels:g} needed)")
    else:
        why = f"{losses} (z {_fmt(z)} < {bar:.2f}): not worse at {config.confidence:g}"
    return Verdict("kept", before, after, z, why)


@dataclass
class Settled:
    """A probation's outcome: the verdict's action event, the key's state after it, the
    threshold to write back (a revert, else None) and the rollback trigger announcing it."""

    action: dict
    state: KeyState
    write_tau: float | None = None
    rollback: dict | None = None


def settle(windows: dict[float, dict], state: KeyState, tau_in_force: float | None, policy_id: str, segment: str,
           config: ActuatorConfig) -> Settled | None:
    """Decide the key's probation once a final window has reached its end (None: nothing to
    decide yet). A revert writes the previous threshold back, unless someone else replaced
    the change's threshold meanwhile: then the change is left alone (kept)."""
    prob = state.probation
    if prob is None or not probation_due(windows, prob):
        return None
    verdict = probation_verdict(windows, prob, config)
    revert = verdict.decision == "reverted" and tau_in_force == prob.tau_after
    if verdict.decision == "reverted" and not revert:
        verdict.decision = "kept"
        verdict.reason = (f"{verdict.reason}, but the threshold in force ({tau_in_force}) is no longer the "
                          f"change's: left alone")
    after = KeyState(last_change_at=prob.end if revert else state.last_change_at, probation=None)
    action = verdict_action(verdict, prob, policy_id, segment, config)
    if not revert:
        return Settled(action, after)
    return Settled(action, after, prob.tau_before, rollback_trigger(verdict, prob, policy_id, segment, config))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def verdict_action(verdict: Verdict, probation: Probation, policy_id: str, segment: str,
                   config: ActuatorConfig) -> dict:
    """The action event of a probation's verdict."""
    reverted = verdict.decision == "reverted"
    return _action(
        {"policy_id": policy_id, "segment": segment, "trigger_id": probation.trigger_id,
         "change_id": probation.change_id, "event_time": probation.end, "tau_before": probation.tau_after,
         "tau_after": probation.tau_before if reverted else probation.tau_after,
         "loss_before": verdict.before.loss, "loss_after": verdict.after.loss,
         "n_eff_before": verdict.before.n_eff, "n_eff_after": verdict.after.n_eff, "z": _finite(verdict.z),
         "advisory": config.advisory, "config_version": config.version,
         **({"rollback_trigger_id": rollback_trigger_id(probation.change_id)} if reverted else {})},
        verdict.decision,
        (f"reverted change {probation.change_id}: {verdict.reason}; threshold back to {probation.tau_before:.3f}"
         if reverted else f"kept change {probation.change_id}: {verdict.reason}"))


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def rollback_trigger(verdict: Verdict, probation: Probation, policy_id: str, segment: str,
                     config: ActuatorConfig) -> dict:
    """The rollback trigger announcing a revert, in the worker's trigger schema: its window
    is the probation, its evidence the labels after the change, ``tau`` the threshold reverted."""
    a = verdict.after
    loss_lo = loss_hi = None
    if a.loss is not None and a.n_eff > 0:
        loss_lo, loss_hi = _wilson(a.loss, a.n_eff, 0.95)
    return {"type": "trigger", "v": 1, "trigger_id": rollback_trigger_id(probation.change_id), "rule": "rollback",
            "reason": f"the actuator reverted change {probation.change_id}: {verdict.reason}"[:256],
            "policy_id": policy_id, "segment": segment,
            "window": {"kind": "tumbling", "start": probation.start, "end": probation.end},
            "evidence": {"n_decisions": a.n_decisions, "n_feedback": a.n_feedback, "n_labels": a.n_labels,
                         "loss": a.loss, "loss_lo": loss_lo, "loss_hi": loss_hi, "tau": probation.tau_after},
            "config_version": config.version}


def _wilson(p: float, n: float, level: float) -> tuple[float, float]:
    z = NormalDist().inv_cdf(0.5 + level / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
