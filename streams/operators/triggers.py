"""Trigger rules (DESIGN section 3): retrain, threshold_adjust, rollback, monitor_degraded.

Rules run on final windows, in event time, so a replay of the same events
gives the same triggers; cooldowns count panes, not wall-clock seconds.
Every trigger id is a hash of the rule, key, window and configuration
version: the same evidence always gives the same id, and consumers
de-duplicate on it.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

from kernels.derive import derive
from kernels.layout import StateLayout
from kernels.params import StatsParams
from kernels.reference.fidelity import decision_fidelity
from kernels.reference.sequential import cusum_threshold, llr_weights
from streams.operators.aggregate import WindowResult

RULES = ("retrain", "threshold_adjust", "rollback", "monitor_degraded")


@dataclass(frozen=True)
class TriggerConfig:
    """Thresholds of the four rules. `retrain_rule` = "cusum" (sequential, default) or "naive"."""

    l_budget: float = 0.10
    n_min: int = 30
    retrain_rule: str = "cusum"
    cusum_p1: float | None = None  # default: min(2 * l_budget, l_budget + 0.2)
    cusum_horizon_windows: int = 8640  # 30 days of 5-minute windows
    cusum_alpha: float = 0.05
    p_fire: float = 0.95
    p_rearm: float = 0.5
    cooldown_panes: int = 12
    tau_eps: float = 0.05
    min_cost_saving: float = 0.02
    l_hard: float = 0.40
    phi_min: float = 0.60
    phi_warmup: int = 12  # hopping windows observed before the fidelity check counts
    hour_min_labels: int = 100  # labels a hopping window needs to re-arm retrain or inform fidelity
    c_min: float = 0.10
    a_max: float = 0.30
    audit_min: int = 100
    audit_tolerance: float = 0.05
    threshold_tuning: bool = True
    use_audit: bool = True

    def __post_init__(self) -> None:
        if self.retrain_rule not in ("cusum", "naive"):
            raise ValueError(f"retrain_rule must be 'cusum' or 'naive', got {self.retrain_rule!r}")
        if not 0 < self.p_rearm < self.p_fire < 1:
            raise ValueError("need 0 < p_rearm < p_fire < 1")
        if self.n_min < 1 or self.cooldown_panes < 0:
            raise ValueError("n_min must be >= 1 and cooldown_panes >= 0")
        llr_weights(self.l_budget, self.p1)  # validates 0 < p0 < p1 < 1

    @property
    def p1(self) -> float:
        return self.cusum_p1 if self.cusum_p1 is not None else min(2 * self.l_budget, self.l_budget + 0.2)

    @property
    def cusum_h(self) -> float:
        return cusum_threshold(self.cusum_horizon_windows, self.cusum_alpha)


def config_version(*parts) -> str:
    """Short stable hash of the configuration objects that shape results."""
    blob = json.dumps([asdict(p) for p in parts], sort_keys=True, default=str)
    return "cfg-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def trigger_id(rule: str, key: tuple[str, str], kind: str, start: float, end: float, version: str) -> str:
    text = "\x1f".join([rule, key[0], key[1], kind, repr(float(start)), repr(float(end)), version])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


@dataclass
class KeyState:
    """Per-key memory of the rules: CUSUM, hysteresis flags, cooldowns, fidelity."""

    cusum: float = 0.0
    cusum_labels: float = 0.0
    alarmed: bool = False  # D: the monitor currently holds the key over budget
    retrain_after: int = -(2**62)
    adjust_after: int = -(2**62)
    degraded: bool = False
    advised: tuple | None = None  # (tau in force, tau*) of the last threshold_adjust
    first_start: float | None = None  # start of the key's first tumbling window
    audit_gap: str | None = None
    rollback_panes: tuple = ()
    phi: float = math.nan  # exponentially weighted posterior fidelity of recent windows
    phi_n: int = 0

    def observe_fidelity(self, phi_w: float, halflife: float) -> None:
        a = 1.0 - 0.5 ** (1.0 / halflife)
        self.phi = phi_w if self.phi_n == 0 else (1.0 - a) * self.phi + a * phi_w
        self.phi_n += 1


class TriggerEvaluator:
    """Turns final windows into trigger events and per-window fidelity."""

    def __init__(self, config: TriggerConfig, version: str, pane_s: float, layout: StateLayout, params: StatsParams,
                 phi_halflife_panes: float = 12.0):
        self.config, self.version, self.pane_s = config, version, pane_s
        self.layout, self.params = layout, params
        self.phi_halflife = phi_halflife_panes
        self.up, self.down = llr_weights(config.l_budget, config.p1)
        self.state: dict[tuple[str, str], KeyState] = {}

    def dump(self) -> dict:
        """Plain values (for a checkpoint): every key's memory."""
        return {"keys": [[*key, asdict(st)] for key, st in self.state.items()]}

    def load(self, state: dict) -> None:
        """Take the state `dump` gave."""
        for policy_id, segment, fields in state["keys"]:
            st = KeyState(**fields)
            st.advised = None if st.advised is None else tuple(st.advised)
            st.rollback_panes = tuple(st.rollback_panes)
            self.state[(policy_id, segment)] = st

    def _key(self, key) -> KeyState:
        st = self.state.get(key)
        if st is None:
            st = self.state[key] = KeyState()
        return st

    def evaluate(self, res: WindowResult) -> list[dict]:
        """Triggers fired by one window result (and, for tumbling windows, D and phi per key)."""
        handler = {"tumbling": self._tumbling, "cumulative": self._cumulative, "hopping": self._hopping,
                   "early": self._early}.get(res.kind)
        if handler is None:
            return []
        out = []
        for i, key in enumerate(res.keys):
            out.extend(handler(res, i, key, self._key(key)))
        return out

    def _event(self, rule, reason, res: WindowResult, i: int, key, kind=None, start=None, end=None, **extra):
        kind, start, end = kind or res.kind, res.start if start is None else start, res.end if end is None else end
        s = res.stats
        if res.kind == "early":  # early results carry only loss bounds: derive the full row now
            s, i = derive(res.rows[i : i + 1], self.layout, self.params), 0
        st = self.state[key]
        evidence = {
            "n_decisions": int(s["n_decisions"][i]), "n_feedback": int(s["n_feedback"][i]),
            "n_labels": int(s["n_labels"][i]), "loss": _num(s["loss"][i]), "loss_lo": _num(s["loss_lo"][i]),
            "loss_hi": _num(s["loss_hi"][i]), "p_exceed": _num(s["p_exceed"][i]),
            "phi": _num(st.phi), "tau": _num(s["tau"][i]),
            "tau_star": _num(s["tau_star"][i]), "cost_saved": _num(s["cost_saved"][i]), "cusum": st.cusum,
            "coverage": _num(s["coverage"][i]), "abstention_rate": _num(s["abstention_rate"][i]),
            "audit_loss": _num(s["audit_loss"][i]), **extra,
        }
        return {
            "type": "trigger", "v": 1, "trigger_id": trigger_id(rule, key, kind, start, end, self.version),
            "rule": rule, "reason": reason, "policy_id": key[0], "segment": key[1],
            "window": {"kind": kind, "start": start, "end": end}, "evidence": evidence,
            "config_version": self.version,
        }

    def _tumbling(self, res: WindowResult, i: int, key, st: KeyState) -> list[dict]:
        c, s = self.config, res.stats
        if st.first_start is None:
            st.first_start = res.start
        wy, w = float(s["override_weight"][i]), float(s["weight_sum"][i])
        p_exceed, n_labels = float(s["p_exceed"][i]), float(s["n_labels"][i])
        out = []
        fired = False
        if st.alarmed:
            pass  # fired already: held until a hopping window re-arms it (see _hopping)
        elif c.retrain_rule == "cusum":
            st.cusum = max(0.0, st.cusum + wy * self.up + (w - wy) * self.down)
            st.cusum_labels = st.cusum_labels + n_labels if st.cusum > 0 else 0.0
            fired = st.cusum >= c.cusum_h and st.cusum_labels >= c.n_min
        else:
            fired = n_labels >= c.n_min and p_exceed >= c.p_fire
        if fired:
            st.alarmed = True
            if res.pane >= st.retrain_after:
                st.retrain_after = res.pane + c.cooldown_panes + 1
                rule_name = "cusum" if c.retrain_rule == "cusum" else "p_exceed"
                out.append(self._event("retrain", f"{rule_name} alarm: loss above budget {c.l_budget}", res, i, key))
        out.extend(self._rollback(res, i, key, st, res.pane))
        return out

    def _rollback(self, res: WindowResult, i: int, key, st: KeyState, pane: int) -> list[dict]:
        c, s = self.config, res.stats
        if pane in st.rollback_panes or s["n_labels"][i] < c.n_min or not s["loss_lo"][i] > c.l_hard:
            return []
        st.rollback_panes = (st.rollback_panes + (pane,))[-4:]
        return [self._event("rollback", f"loss lower bound above hard ceiling {c.l_hard}", res, i, key,
                            kind="tumbling", start=pane * self.pane_s, end=(pane + 1) * self.pane_s)]

    def _early(self, res: WindowResult, i: int, key, st: KeyState) -> list[dict]:
        return self._rollback(res, i, key, st, int(res.panes[i]))

    def _cumulative(self, res: WindowResult, i: int, key, st: KeyState) -> list[dict]:
        """Remember the long-run audit comparison; the degraded rule reads it on the next hopping window."""
        s = res.stats
        st.audit_gap = _audit_gap(s, i, self.config)
        return []

    def _hopping(self, res: WindowResult, i: int, key, st: KeyState) -> list[dict]:
        c, s = self.config, res.stats
        out = []
        n_labels = s["n_labels"][i]
        if st.alarmed and n_labels >= c.hour_min_labels and s["p_exceed"][i] < c.p_rearm:
            # re-arm on an hour of labels, not one noisy pane; the CUSUM starts afresh
            st.alarmed = False
            st.cusum = st.cusum_labels = 0.0
        if n_labels >= c.hour_min_labels:
            # production fidelity: posterior probability that the decision held now is right
            st.observe_fidelity(decision_fidelity(s["p_exceed"][i], st.alarmed), self.phi_halflife)
        tau, tau_star, saved = s["tau"][i], s["tau_star"][i], s["cost_saved"][i]
        new_advice = st.advised is None or abs(tau - st.advised[0]) > 1e-9 or abs(tau_star - st.advised[1]) > c.tau_eps
        if (c.threshold_tuning and n_labels >= c.n_min and res.pane >= st.adjust_after and new_advice
                and abs(tau_star - tau) > c.tau_eps and saved >= c.min_cost_saving):
            # once per piece of advice: again only if the threshold in force or tau* moves
            st.adjust_after = res.pane + c.cooldown_panes
            st.advised = (float(tau), float(tau_star))
            out.append(self._event("threshold_adjust", f"cost-optimal threshold {tau_star:.3f} vs {tau:.3f}",
                                   res, i, key))
        reasons = self._degraded_reasons(s, i, st, full=st.first_start is not None and res.start >= st.first_start)
        if reasons and not st.degraded:
            out.append(self._event("monitor_degraded", "; ".join(reasons), res, i, key))
        st.degraded = bool(reasons)
        return out

    def _degraded_reasons(self, s: dict, i: int, st: KeyState, full: bool) -> list[str]:
        """Why the monitor cannot be trusted now; rates count only on windows the key fully covers."""
        c = self.config
        reasons = []
        if st.phi_n >= c.phi_warmup and st.phi < c.phi_min:
            reasons.append(f"fidelity estimate {st.phi:.3f} below {c.phi_min}")
        if full and s["n_decisions"][i] > 0 and s["coverage"][i] < c.c_min:
            reasons.append(f"coverage {s['coverage'][i]:.3f} below {c.c_min}")
        if full and s["n_feedback"][i] >= c.n_min and s["abstention_rate"][i] > c.a_max:
            reasons.append(f"abstention rate {s['abstention_rate'][i]:.3f} above {c.a_max}")
        if c.use_audit and st.audit_gap is not None:
            reasons.append(st.audit_gap)
        return reasons


def _audit_gap(s: dict, i: int, c: TriggerConfig) -> str | None:
    """A reason when audit and monitored loss disagree: disjoint intervals and a gap above tolerance."""
    if s["audit_n"][i] < c.audit_min or s["n_labels"][i] < c.n_min:
        return None
    gap = max(s["audit_lo"][i] - s["loss_hi"][i], s["loss_lo"][i] - s["audit_hi"][i])
    if gap <= 0 or abs(s["audit_loss"][i] - s["loss"][i]) <= c.audit_tolerance:
        return None
    return f"audit loss {s['audit_loss'][i]:.3f} disagrees with monitored loss {s['loss'][i]:.3f} (cumulative)"

