"""The closed loop: the monitor's triggers act on the simulated system, window by window.

For each simulated window: retrains that have finished by its start take effect; its
decisions are made with the threshold and model in force then, from the keys' common random
numbers (draws.py); the events arriving during it (of this window and earlier ones) go through
the in-process pipeline in arrival order; the triggers that emits are stamped with the
window's end and acted on, so they change decisions from the next window on.

What acts, and how (``LoopConfig.act_on``):

* threshold_adjust: through the production actuator's own decisions (streams/actuator/decide.py:
  held-out validation, probation, cool-down, stale advice, max step), and its probation
  settlement, which reverts a change that made the loss worse;
* retrain: ``retrain_latency_s`` after the trigger, a model refit from the labels received so
  far (retrain.py) re-maps the scores, unless the fit cannot tell the people's indifference
  point from the current model's; a model change restarts the actuator's cool-down (advice
  computed on the old model's labels is not applied) and is watched by the same probation
  verdict, and put back if the loss got worse;
* rollback: the last validated policy is restored: the threshold and the model that last
  passed probation, or the initial ones.

Changes land on window boundaries, so each window has one policy, and its ground truth
(``ground_truth`` with that threshold and model) is exact. With nothing acting (``OPEN``) every
event is the generator's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import msgspec
import numpy as np
from tqdm import tqdm

from kernels.params import StatsParams
from streams.actuator.decide import (
    ActuatorConfig,
    KeyState,
    Probation,
    decide_adjust,
    probation_due,
    probation_verdict,
    settle,
)
from streams.config import MonitorConfig
from streams.demo.runner import encode_messages, window_rows
from streams.events import TriggerEvent
from streams.pipeline import InProcessPipeline

from .draws import ACT, AUDIT, HOLD, schedule
from .generator import SimConfig, key_draws, truth_row
from .retrain import fit_indifference, realigning_shift
from .scenarios import AUDIT_RATE, Scenario, ground_truth, scenario

ACTIONS = ("threshold_adjust", "retrain", "rollback")


@dataclass(frozen=True)
class LoopConfig:
    """How the simulated system answers triggers."""

    actuator: ActuatorConfig = field(default_factory=ActuatorConfig)
    act_on: tuple[str, ...] = ACTIONS
    retrain_latency_s: float = 7200.0  # from the trigger to the new model deciding
    # a retrain fits on the labels of the last hour's decisions: a longer window lags a drift that
    # goes on, and its model can end up worse than the old one (two hours did, on gradual drift)
    retrain_lookback_s: float = 3600.0
    retrain_min_labels: int = 100  # fewer: the retrain keeps the model it has
    retrain_confidence: float = 0.99  # a refit moves the model only if its point is outside this interval
    unvalidated_advice: bool = False  # ablation: the rule's in-window point saving stands in for its held-out bound
    drop_audit: bool = False  # ablation: audits happen but never reach the system
    tail_s: float = 600.0  # arrivals after the last decision window still fed, so its windows close


OPEN = LoopConfig(act_on=())
"""The open loop: nothing acts on a trigger."""


def _cost(decision: np.ndarray, wants_act: np.ndarray, costs: StatsParams) -> np.ndarray:
    """Each decision's realised cost: c_fp for acting where the person wants hold, c_fn for
    holding where they want act, nothing for a deferral."""
    return costs.c_fp * ((decision == ACT) & ~wants_act) + costs.c_fn * ((decision == HOLD) & wants_act)


class KeySystem:
    """One key's simulated system: its draws, the policy in force, the actuator's memory."""

    def __init__(self, sc: Scenario, sim: SimConfig, audit_rate: float, loop: LoopConfig, costs: StatsParams):
        self.sc, self.sim, self.loop, self.costs, self.audit_rate = sc, sim, loop, costs, audit_rate
        self.key = (sc.policy_id, sc.segment)
        self.d = d = key_draws(sc, sim, audit_rate)
        self.par = schedule(sc, sim.n_windows)
        self.tau_set: float | None = None  # None: the scenario's own threshold
        self.shift = 0.0
        self.validated: tuple[float | None, float] = (None, 0.0)
        self.actuator = KeyState()
        self.windows: dict[float, dict] = {}  # final tumbling windows, for probation verdicts
        self.retrains: list[tuple[float, float, str]] = []  # (lands at, emitted at, trigger id)
        self.model_watch: tuple[Probation, float, float] | None = None  # probation, shift before, after
        self.w = 0
        self.taus = np.full(sim.n_windows, np.nan)
        self.shifts = np.zeros(sim.n_windows)
        self.decision = np.full(d.n, -1, np.int8)
        self.ystar = np.full(d.m, np.nan)
        self.events: list[dict | None] = [None] * d.arrival.size
        self.actions: list[dict] = []
        self.changes: list[dict] = []  # each change of the policy in force: window, before, after, cause
        self._cause: dict | None = None
        self._truth: dict = {}

    @property
    def tau(self) -> float:
        return float(self.par["tau"][self.w]) if self.tau_set is None else self.tau_set

    def emitted(self, idx: np.ndarray, shift: float) -> np.ndarray:
        return self.d.s[idx] if shift == 0.0 else np.clip(self.d.s[idx] + shift, 0.0, 1.0)

    def decide(self, w: int, t: float, events: bool = True) -> None:
        """Land the retrains due by ``t``, then make window w's decisions (and their events)."""
        self.w = w
        self._land(t)
        d, tau = self.d, self.tau
        idx = np.arange(d.offsets[w], d.offsets[w + 1])
        score = self.emitted(idx, self.shift)
        if events:
            pos, out = d.events(w, w + 1, score, np.full(idx.size, tau))
            for p, e in zip(pos, out):
                self.events[p] = e
        self.decision[idx] = d.decisions(idx, score, tau)
        j = d.feedback_of(w, w + 1)
        self.ystar[j] = d.human_labels(j, self.decision[d.fi[j]])
        self.taus[w], self.shifts[w] = tau, self.shift
        if w > 0 and (tau, self.shift) != (self.taus[w - 1], self.shifts[w - 1]):
            self.changes.append({"window": w, "tau_before": float(self.taus[w - 1]),
                                 "shift_before": float(self.shifts[w - 1]), "tau_after": tau,
                                 "shift_after": self.shift, "cause": self._cause})

    def _record(self, action: dict, changed: bool = False) -> None:
        """Log an action; one that changed the policy is the cause of the next change."""
        self.actions.append(action)
        if changed:
            self._cause = action

    def labels(self, t: float) -> np.ndarray:
        """Feedback the system may train on at t: received by t, about decisions of the last
        ``retrain_lookback_s``, with a label (audits only if they reach the system)."""
        d = self.d
        ok = ((d.arrival[d.n:d.n + d.m] <= t) & (d.ts[d.fi] >= t - self.loop.retrain_lookback_s)
              & ~np.isnan(self.ystar))
        if self.loop.drop_audit:
            ok &= d.source != AUDIT
        return np.flatnonzero(ok)

    def _land(self, t: float) -> None:
        due = [r for r in self.retrains if r[0] <= t]
        self.retrains = [r for r in self.retrains if r[0] > t]
        for at, emitted_at, tid in due:
            j = self.labels(at)
            fit = (fit_indifference(self.d.s[self.d.fi[j]], self.ystar[j], self.d.weight[j])
                   if j.size >= self.loop.retrain_min_labels else None)
            record = {"decision": "retrain_skipped", "rule": "retrain", "trigger_id": tid, "emitted_at": emitted_at,
                      "at": at, "labels": int(j.size), "shift_before": self.shift}
            shift = None
            if fit is not None:
                c_hat, k_hat, se = fit
                record.update(c_hat=c_hat, k_hat=k_hat, c_se=se, decision="retrain_no_change")
                shift = realigning_shift(c_hat, k_hat, self.tau, self.costs.c_fp, self.costs.c_fn)
                if abs(shift - self.shift) <= NormalDist().inv_cdf(0.5 + self.loop.retrain_confidence / 2) * se:
                    shift = None  # the refit cannot tell the people's point from the current model's
            if shift is not None:
                before, self.shift = self.shift, shift
                record["decision"] = "retrained"
                cfg = self.loop.actuator
                self.model_watch = (Probation(f"retrain-{tid}", tid, at, at + cfg.probation_s, self.tau, self.tau),
                                    before, self.shift)
                self.actuator = KeyState(last_change_at=at, probation=self.actuator.probation)
            self._record({**record, "shift_after": self.shift, "tau": self.tau}, changed=shift is not None)

    def on_window(self, row: dict) -> None:
        """A final tumbling window of this key: kept for probation, then verdicts that are due."""
        self.windows[row["start"]] = {k: row[k] for k in ("loss", "weight_sum", "n_eff", "n_labels",
                                                           "n_decisions", "n_feedback", "end")}
        keep = 2 * self.loop.actuator.probation_s + (row["end"] - row["start"])
        for start in [s for s, v in self.windows.items() if v["end"] < row["end"] - keep]:
            del self.windows[start]
        prob, cfg = self.actuator.probation, self.loop.actuator
        done = settle(self.windows, self.actuator, self.tau, *self.key, cfg)
        if done is not None:
            self.actuator = done.state
            if done.write_tau is not None:
                self.tau_set = done.write_tau
            elif self.tau == prob.tau_after:
                self.validated = (prob.tau_after, self.validated[1])
            self._record({**done.action, "rule": "threshold_adjust", "at": row["end"]}, done.write_tau is not None)
        if self.model_watch is not None and probation_due(self.windows, self.model_watch[0]):
            watch, before, after = self.model_watch
            self.model_watch = None
            verdict = probation_verdict(self.windows, watch, cfg)
            revert = verdict.decision == "reverted" and self.shift == after
            if revert:
                self.shift = before
            elif self.shift == after:
                self.validated = (self.validated[0], after)
            self._record({"decision": f"model_{verdict.decision}", "rule": "retrain", "at": row["end"],
                          "trigger_id": watch.trigger_id, "reason": verdict.reason, "shift": self.shift}, revert)

    def on_trigger(self, trig: dict, t: float) -> None:
        """Act on a trigger emitted at t (its effect: decisions from t on)."""
        rule = trig["rule"]
        if rule not in self.loop.act_on:
            return
        if rule == "threshold_adjust":
            self._adjust(trig)
        elif rule == "retrain":
            step = self.sim.window_s
            lands = self.sim.start_ts + math.ceil((t + self.loop.retrain_latency_s - self.sim.start_ts) / step) * step
            self.retrains.append((lands, t, trig["trigger_id"]))
        elif rule == "rollback":
            before = (self.tau, self.shift)
            self.tau_set, self.shift = self.validated
            self._record({"decision": "rolled_back", "rule": "rollback", "trigger_id": trig["trigger_id"], "at": t,
                          "tau_before": before[0], "shift_before": before[1], "tau_after": self.tau,
                          "shift_after": self.shift}, changed=True)

    def _adjust(self, trig: dict) -> None:
        ev = trig["evidence"]
        if self.loop.unvalidated_advice:
            trig = {**trig, "evidence": {**ev, "heldout_saving_lo": ev.get("cost_saved")}}
        decision = decide_adjust(msgspec.convert(trig, TriggerEvent), self.actuator, self.tau, self.loop.actuator)
        self.actuator = decision.state
        if decision.write_tau is not None:
            self.tau_set = decision.write_tau
        self._record({**decision.action, "rule": "threshold_adjust", "at": trig["emitted_at"],
                      "heldout_saving": ev.get("heldout_saving"), "cost_saved": ev.get("cost_saved")},
                     decision.write_tau is not None)

    def cost(self, idx: np.ndarray, tau: float | np.ndarray, shift: float) -> np.ndarray:
        """Realised costs of decisions ``idx`` had they been made under (tau, shift)."""
        decision = self.d.decisions(idx, self.emitted(idx, shift), tau)
        return _cost(decision, self.d.wants_act[idx], self.costs)

    def truth_at(self, w: int, tau: float, shift: float) -> dict:
        """Exact ground truth of window w had (tau, shift) been in force (cached: most windows
        repeat a neighbour's parameters)."""
        key = (*(v[w] for v in self.par.values()), tau, shift)
        if key not in self._truth:
            self._truth[key] = ground_truth(self.sc, (w + 0.5) / self.sim.n_windows, self.audit_rate, tau, shift)
        return self._truth[key]

    def true_loss(self) -> np.ndarray:
        """Each window's true loss under the policy in force in it."""
        return np.array([self.truth_at(w, float(self.taus[w]), float(self.shifts[w]))["true_loss"]
                         for w in range(self.sim.n_windows)])

    def fed(self, cut: float) -> np.ndarray:
        """Feedback (indices) the pipeline was given, with its decision's score, by arrival ``cut``."""
        d = self.d
        ok = (d.arrival[d.n:d.n + d.m] < cut) & (d.arrival[d.fi] < cut)
        return np.flatnonzero(ok & (d.source != AUDIT) if self.loop.drop_audit else ok)

    def truth(self) -> list[dict]:
        """Ground truth of each window under the policy that was in force in it."""
        return [{**truth_row(self.sc, self.sim, w, self.truth_at(w, float(self.taus[w]), float(self.shifts[w]))),
                 "shift": float(self.shifts[w])} for w in range(self.sim.n_windows)]


@dataclass
class LoopRun:
    """What one loop run produced: its events (as fed), the truth under the policies in force,
    the monitor's outputs, every action taken, and the keys' systems (draws and policies)."""

    events: list[dict]
    truth: list[dict]
    triggers: list[dict]
    windows: list[dict]
    actions: list[dict]
    counters: dict
    systems: list[KeySystem]
    config: SimConfig
    dead_letters: list = field(default_factory=list)
    messages: int = 0


def decisions_only(sim: SimConfig, monitor: MonitorConfig | None = None) -> list[KeySystem]:
    """The open loop without the monitor: each key's decisions under its own schedule and their
    truth, for the figures that need no event (true loss, realised cost)."""
    costs = (monitor or MonitorConfig()).stats
    audit_rate = AUDIT_RATE if sim.include_audit else 0.0
    systems = [KeySystem(scenario(name), sim, audit_rate, OPEN, costs) for name in sim.scenarios]
    for s in systems:
        for w in range(sim.n_windows):
            s.decide(w, sim.start_ts + w * sim.window_s, events=False)
    return systems


def run_loop(sim: SimConfig, monitor: MonitorConfig | None = None, loop: LoopConfig = LoopConfig(),
             progress: str | None = None) -> LoopRun:
    """Step the scenarios of ``sim`` window by window through one in-process pipeline,
    acting on its triggers as ``loop`` says (``OPEN``: not at all); ``progress`` labels a bar."""
    monitor = monitor or MonitorConfig()
    audit_rate = AUDIT_RATE if sim.include_audit else 0.0
    systems = [KeySystem(scenario(name), sim, audit_rate, loop, monitor.stats) for name in sim.scenarios]
    by_key = {s.key: s for s in systems}
    sizes = [s.d.arrival.size for s in systems]
    arrival = np.concatenate([s.d.arrival for s in systems]) if systems else np.empty(0)
    order = np.argsort(arrival, kind="stable")  # the generator's order, ties included
    owner = np.repeat(np.arange(len(systems)), sizes)[order]
    pos = (np.arange(arrival.size) - np.repeat(np.cumsum([0] + sizes[:-1]), sizes))[order]
    arrival = arrival[order]
    if loop.drop_audit:
        audit = np.concatenate([np.concatenate([np.zeros(s.d.n, bool), s.d.source == AUDIT,
                                                s.d.source[s.d.dup] == AUDIT]) for s in systems])[order]
    run = LoopRun([], [], [], [], [], {}, systems, sim)
    pipe = InProcessPipeline(monitor)
    edges = sim.start_ts + sim.window_s * np.arange(sim.n_windows + 1)

    def feed(lo: int, hi: int, t: float, act: bool) -> None:
        events = [systems[o].events[p] for o, p, i in zip(owner[lo:hi].tolist(), pos[lo:hi].tolist(), range(lo, hi))
                  if not (loop.drop_audit and audit[i])]
        messages = encode_messages(events)
        out = pipe.process(messages, first_offset=run.messages, now=0.0)
        run.messages += len(messages)
        run.events.extend(events)
        run.dead_letters.extend(out.dead_letters)
        for res in out.windows:
            rows = window_rows(res)
            run.windows.extend(rows)
            for row in rows:
                if act and res.kind == "tumbling" and (row["policy_id"], row["segment"]) in by_key:
                    by_key[(row["policy_id"], row["segment"])].on_window(row)
        for trig in out.triggers:
            trig["emitted_at"] = t
            run.triggers.append(trig)
            if act and (trig["policy_id"], trig["segment"]) in by_key:
                by_key[(trig["policy_id"], trig["segment"])].on_trigger(trig, t)

    try:
        lo = 0
        for w in tqdm(range(sim.n_windows), desc=progress, unit="window", disable=progress is None, leave=False):
            for s in systems:
                s.decide(w, float(edges[w]))
            hi = int(np.searchsorted(arrival, edges[w + 1], "left"))
            feed(lo, hi, float(edges[w + 1]), act=True)
            lo = hi
        # the last windows close; what fires now has no decision left to change
        feed(lo, int(np.searchsorted(arrival, edges[-1] + loop.tail_s, "left")), float(edges[-1] + loop.tail_s),
             act=False)
    finally:
        pipe.close()
    run.truth = [row for s in systems for row in s.truth()]
    run.actions = [{"scenario": s.sc.name, **a} for s in systems for a in s.actions]
    run.counters = {"/".join(map(str, k)) if isinstance(k, tuple) else k: v for k, v in pipe.counters.items()}
    return run
