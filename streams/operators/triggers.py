"""Trigger rules: retrain, threshold_adjust, rollback, monitor_degraded.

Rules run on final windows, in event time, so a replay of the same events
gives the same triggers; cooldowns count panes, not wall-clock seconds.
Every trigger id is a hash of the rule, key, window and configuration
version: the same evidence always gives the same id, and consumers
de-duplicate on it.

Each alarm rule is a sequential detector (`kernels.reference.sequential.MixtureSR`, run compiled)
whose false-alarm probability within the horizon is at most its share of `alpha`
however often it is looked at: retrain against the budget, rollback against the
hard ceiling (also looked at mid-window), monitor_degraded against the coverage
floor (each pane's decisions against the feedback they drew within LAG_PANES panes), the
abstention ceiling and the audits (on decisions both labelled).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from kernels.derive import held_out_saving
from kernels.derive import tau_star as tau_star_of
from kernels.detector import MixtureSR, peek_each
from kernels.layout import FB_LAG, LAG_PANES, LIKE, N_DEC, N_FB, OVERRIDE, PAIR_B, PAIR_C, W_CAP, WY_CAP, StateLayout
from kernels.params import StatsParams
from kernels.reference.coverage import DecisionPaneCoverage
from kernels.reference.fidelity import decision_fidelity
from kernels.reference.sequential import sr_threshold
from streams.operators.aggregate import WindowResult

RULES = ("retrain", "threshold_adjust", "rollback", "monitor_degraded")
#: A move of tau by tau_eps plus this is needed for advice: the tau in force is a mean of
#: the decisions' thresholds, so 0.45 can read as 0.44999999999999835.
TAU_NOISE = 1e-9


@dataclass(frozen=True)
class TriggerConfig:
    """Settings of the four rules.

    `horizon_days` and `alpha`: every alarm rule keeps its false-alarm probability within
    the horizon at most alpha while its key is in control. `retrain_rule` is "sequential"
    (default) or "naive" (p_exceed >= p_fire in a window: the baseline the ablations show).
    """

    l_budget: float = 0.10
    horizon_days: float = 30.0
    alpha: float = 0.05
    retrain_rule: str = "sequential"
    n_min: int = 30  # labels a window needs before the naive rule or threshold advice reads it
    p_fire: float = 0.95
    p_rearm: float = 0.5
    hour_min_labels: int = 100  # labels a hopping window needs to re-arm retrain or inform fidelity
    cooldown_panes: int = 12
    readvise_panes: int = 288  # with the same tau in force, advice again at most once a day
    tau_eps: float = 0.05
    min_cost_saving: float = 0.02
    l_hard: float = 0.40
    c_min: float = 0.10
    a_max: float = 0.30
    degraded_clear_panes: int = 288  # a degraded reason whose detector is quiet this long is over (a day)
    threshold_tuning: bool = True
    validate_advice: bool = True  # False (ablation): advice on the window's own point saving
    use_audit: bool = True

    def __post_init__(self) -> None:
        if self.retrain_rule not in ("sequential", "naive"):
            raise ValueError(f"retrain_rule must be 'sequential' or 'naive', got {self.retrain_rule!r}")
        if not 0 < self.p_rearm < self.p_fire < 1:
            raise ValueError("need 0 < p_rearm < p_fire < 1")
        if self.n_min < 1 or self.cooldown_panes < 0 or self.hour_min_labels < 1 or self.readvise_panes < 0 \
                or self.degraded_clear_panes < 1:
            raise ValueError("n_min, hour_min_labels and degraded_clear_panes must be >= 1, cooldown_panes and "
                             "readvise_panes >= 0")
        if not (self.horizon_days > 0 and 0 < self.alpha < 1):
            raise ValueError("need horizon_days > 0 and 0 < alpha < 1")
        for name in ("l_budget", "l_hard", "c_min", "a_max"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.l_hard <= self.l_budget:
            raise ValueError("l_hard must be above l_budget")
        if self.tau_eps < 0 or self.min_cost_saving < 0:
            raise ValueError("tau_eps and min_cost_saving must be >= 0")


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
class Detectors:
    """The sequential detectors of one key (one start each per final tumbling window)."""

    retrain: MixtureSR
    rollback: MixtureSR
    coverage: MixtureSR
    abstention: MixtureSR
    under_reports: MixtureSR  # audit override, channel like: the channel hides overrides
    over_reports: MixtureSR
    covered: DecisionPaneCoverage = field(default_factory=lambda: DecisionPaneCoverage(LAG_PANES))

    NAMES = ("retrain", "rollback", "coverage", "abstention", "under_reports", "over_reports")

    def dump(self) -> dict:
        return {**{name: list(getattr(self, name).log_r) for name in self.NAMES}, "covered": self.covered.dump()}

    def load(self, state: dict) -> None:
        self.covered.load(state["covered"])
        for name in self.NAMES:
            log_r = [float(v) for v in state[name]]
            if len(log_r) != len(getattr(self, name).log_r):
                raise ValueError(f"rule state: detector {name} has {len(log_r)} components")
            getattr(self, name).log_r = log_r


@dataclass
class KeyState:
    """Per-key memory of the rules: hysteresis flags, cooldowns, fidelity."""

    alarmed: bool = False  # D: the monitor currently holds the key over budget
    retrain_after: int = -(2**62)
    adjust_after: int = -(2**62)
    rollback_after: int = -(2**62)
    rollback_through: int = -(2**62)  # panes up to here are in a rollback already fired
    last_pane: int = -(2**62)  # the latest final tumbling pane the detectors took
    degraded: dict = field(default_factory=dict)  # reason of the current episode -> pane it last alarmed
    advised: tuple | None = None  # (tau in force, tau*) of the last threshold_adjust
    phi: float = math.nan  # exponentially weighted posterior fidelity of recent windows
    phi_n: int = 0

    def observe_fidelity(self, phi_w: float, halflife: float) -> None:
        a = 1.0 - 0.5 ** (1.0 / halflife)
        self.phi = phi_w if self.phi_n == 0 else (1.0 - a) * self.phi + a * phi_w
        self.phi_n += 1


class TriggerEvaluator:
    """Turns final windows (and mid-window looks) into trigger events and per-window fidelity.

    `partitions`: input partitions, each of which sends its own mid-window looks; the
    rollback threshold pays for looking at each of them and at the final windows.
    """

    def __init__(self, config: TriggerConfig, version: str, pane_s: float, layout: StateLayout, params: StatsParams,
                 phi_halflife_panes: float = 12.0, partitions: int = 1):
        self.config, self.version, self.pane_s = config, version, pane_s
        self.layout, self.params = layout, params
        self.phi_halflife = phi_halflife_panes
        starts = max(1, math.ceil(config.horizon_days * 86_400.0 / pane_s))
        self.thresholds = {
            "retrain": sr_threshold(starts, config.alpha),
            "rollback": sr_threshold(starts * (partitions + 1), config.alpha),
            "degraded": sr_threshold(starts * 4, config.alpha),  # four detectors share alpha
        }
        self.state: dict[tuple[str, str], KeyState] = {}
        self.detectors: dict[tuple[str, str], Detectors] = {}

    def new_detectors(self) -> Detectors:
        c, t = self.config, self.thresholds
        return Detectors(
            retrain=MixtureSR(c.l_budget, t["retrain"]),
            rollback=MixtureSR(c.l_hard, t["rollback"]),
            coverage=MixtureSR(c.c_min, t["degraded"], upper=False, poisson=True),
            abstention=MixtureSR(c.a_max, t["degraded"]),
            under_reports=MixtureSR(0.5, t["degraded"]),
            over_reports=MixtureSR(0.5, t["degraded"]),
        )

    def dump(self) -> dict:
        """Plain values (for a checkpoint): every key's memory."""
        return {"keys": [[*key, asdict(st), self.detectors[key].dump()] for key, st in self.state.items()]}

    def load(self, state: dict) -> None:
        """Take the state `dump` gave."""
        for policy_id, segment, fields, detectors in state["keys"]:
            st = KeyState(**fields)
            st.advised = None if st.advised is None else tuple(st.advised)
            key = (policy_id, segment)
            self.state[key] = st
            self.detectors[key] = self.new_detectors()
            self.detectors[key].load(detectors)

    def _key(self, key) -> KeyState:
        st = self.state.get(key)
        if st is None:
            st = self.state[key] = KeyState()
            self.detectors[key] = self.new_detectors()
        return st

    def evaluate(self, res: WindowResult) -> list[dict]:
        """Triggers fired by one window result (and, for tumbling windows, D and phi per key)."""
        if res.kind == "early":
            return self._early(res)
        handler = {"tumbling": self._tumbling, "hopping": self._hopping}.get(res.kind)
        if handler is None:
            return []
        states = [self._key(key) for key in res.keys]
        if res.kind == "hopping":
            handler = functools.partial(self._hopping, tuned=self._tune(res, states))
        out = []
        for i, (key, st) in enumerate(zip(res.keys, states)):
            out.extend(handler(res, i, key, st))
        return out

    def _tune(self, res: WindowResult, states: list[KeyState]) -> dict[int, tuple[float, float, float]]:
        """Row -> (tau*, held-out saving, its bound) of every key `_advice` will read, in one
        call of each kernel for the whole window (row by row the same numbers as one call a
        key, at a fraction of the calls)."""
        c = self.config
        if not (c.threshold_tuning and c.validate_advice) or res.halves is None:
            return {}
        n_labels = res.stats["n_labels"]
        rows = [i for i, st in enumerate(states) if n_labels[i] >= c.n_min and res.pane >= st.adjust_after]
        if not rows:
            return {}
        tau = np.asarray(res.stats["tau"], np.float64)[rows]
        tau_star = tau_star_of(res.halves[rows, 0], self.layout, self.params, tau)
        saved, bound = held_out_saving(res.halves[rows, 1], self.layout, self.params, tau_star, tau,
                                       candidates=self.layout.n_bins)
        return {i: (float(t), float(s), float(b)) for i, t, s, b in zip(rows, tau_star, saved, bound)}

    def _event(self, rule, reason, res: WindowResult, i: int, key, kind=None, start=None, end=None, **extra):
        kind, start, end = kind or res.kind, res.start if start is None else start, res.end if end is None else end
        s = res.stats
        st = self.state[key]
        evidence = {
            "n_decisions": int(s["n_decisions"][i]), "n_feedback": int(s["n_feedback"][i]),
            "n_labels": int(s["n_labels"][i]), "loss": _num(s["loss"][i]), "loss_lo": _num(s["loss_lo"][i]),
            "loss_hi": _num(s["loss_hi"][i]), "p_exceed": _num(s["p_exceed"][i]),
            "phi": _num(st.phi), "tau": _num(s["tau"][i]),
            "tau_star": _num(s["tau_star"][i]), "cost_saved": _num(s["cost_saved"][i]),
            "cost_saved_lo": _num(s["cost_saved_lo"][i]),
            "coverage": _num(s["coverage"][i]), "abstention_rate": _num(s["abstention_rate"][i]),
            "audit_loss": _num(s["audit_loss"][i]), "evaluated_end": float(res.end), **extra,
        }
        return {
            "type": "trigger", "v": 1, "trigger_id": trigger_id(rule, key, kind, start, end, self.version),
            "rule": rule, "reason": reason, "policy_id": key[0], "segment": key[1],
            "window": {"kind": kind, "start": start, "end": end}, "evidence": evidence,
            "config_version": self.version,
        }

    def _tumbling(self, res: WindowResult, i: int, key, st: KeyState) -> list[dict]:
        c, s, row = self.config, res.stats, res.rows[i]
        det = self.detectors[key]
        st.last_pane = res.pane
        x, n = float(row[WY_CAP]), float(row[W_CAP])
        out = []
        fired = False
        if st.alarmed:
            pass  # fired already: held until a hopping window re-arms it (see _hopping)
        elif c.retrain_rule == "sequential":
            fired = det.retrain.update(x, n)
        else:
            fired = s["n_labels"][i] >= c.n_min and s["p_exceed"][i] >= c.p_fire
        if fired:
            st.alarmed = True
            log_r = det.retrain.get()
            det.retrain.reset()
            if res.pane >= st.retrain_after:
                st.retrain_after = res.pane + c.cooldown_panes + 1
                why = (f"sequential test: loss above budget {c.l_budget} (log R {log_r:.2f} >= "
                       f"{self.thresholds['retrain']:.2f})" if c.retrain_rule == "sequential"
                       else f"p_exceed {s['p_exceed'][i]:.3f} >= {c.p_fire}")
                out.append(self._event("retrain", why, res, i, key, log_r=log_r))
        if res.pane > st.rollback_through and det.rollback.update(x, n):
            out.extend(self._rollback(res, i, key, st, res.pane))
        out.extend(self._degraded(res, i, key, st))
        return out

    def _rollback(self, res: WindowResult, i: int, key, st: KeyState, pane: int) -> list[dict]:
        det, c = self.detectors[key], self.config
        log_r = det.rollback.get() if res.kind != "early" else None
        det.rollback.reset()
        st.rollback_through = max(st.rollback_through, pane)
        if pane < st.rollback_after:
            return []
        st.rollback_after = pane + c.cooldown_panes + 1
        return [self._event("rollback", f"sequential test: loss above hard ceiling {c.l_hard}", res, i, key,
                            kind="tumbling", start=pane * self.pane_s, end=(pane + 1) * self.pane_s, log_r=log_r)]

    def _early(self, res: WindowResult) -> list[dict]:
        """Mid-window looks: the rollback statistic continued over each key's open panes after
        the last it took, in pane order, for all keys of the snapshot in one kernel call."""
        group_of: dict = {}
        group = np.array([group_of.setdefault(key, len(group_of)) for key in res.keys], dtype=np.int64)
        keys = list(group_of)
        states = list(map(self._key, keys))
        panes = np.asarray(res.panes, dtype=np.int64)
        taken = np.array([max(st.last_pane, st.rollback_through) for st in states], dtype=np.int64)
        rows = np.flatnonzero(panes > taken[group])
        if not len(rows):
            return []
        rows = rows[np.lexsort((panes[rows], group[rows]))]  # by key, then pane; stable
        looked, starts = np.unique(group[rows], return_index=True)
        bounds = np.append(starts, len(rows))  # key looked[j]'s rows: rows[bounds[j]:bounds[j + 1]]
        detectors = [self.detectors[keys[g]].rollback for g in looked.tolist()]
        log_r = peek_each(detectors, res.rows[:, WY_CAP], res.rows[:, W_CAP], rows, bounds)
        out = []
        for j in np.flatnonzero(log_r >= self.thresholds["rollback"]).tolist():
            g, last = int(looked[j]), int(rows[bounds[j + 1] - 1])
            fired = self._rollback(res, last, keys[g], states[g], int(panes[last]))
            for trig in fired:
                trig["evidence"]["log_r"] = float(log_r[j])
            out.extend(fired)
        return out

    def _degraded(self, res: WindowResult, i: int, key, st: KeyState) -> list[dict]:
        """Why the monitor cannot be trusted: too little feedback, an abstention spike, or a
        channel whose labels disagree with the audits' on the same decisions. A trigger when a
        reason appears; it stays in the episode, and pages no more, until its detector
        (restarted at each alarm) has not alarmed again for `degraded_clear_panes` panes. A
        coverage alarm names the decision pane it read and that pane's counts."""
        c, s, row, det = self.config, res.stats, res.rows[i], self.detectors[key]
        b, cc = float(row[PAIR_B]), float(row[PAIR_C])
        covered = det.covered.update(res.pane, float(row[N_DEC:N_DEC + 3].sum()), row[FB_LAG:FB_LAG + LAG_PANES])
        checks = [("coverage", True, feedback, decisions, pane) for pane, feedback, decisions in covered]
        checks += [
            ("abstention", True, float(s["n_abstain_feedback"][i]), float(s["n_feedback"][i]), None),
            ("under_reports", c.use_audit, b, b + cc, None),
            ("over_reports", c.use_audit, cc, b + cc, None),
        ]
        new, where = [], {}
        for name, on, x, n, pane in checks:
            detector = getattr(det, name)
            if on and detector.update(x, n):
                detector.reset()
                if name not in st.degraded and name not in new:
                    new.append(name)
                    if pane is not None:
                        where = {"pane": pane, "feedback": x, "decisions": n}
                st.degraded[name] = res.pane  # (still) there: the episode goes on
        for name, last in list(st.degraded.items()):
            if res.pane - last >= c.degraded_clear_panes:
                del st.degraded[name]
        if not new:
            return []
        reason = "; ".join(self._why(name) for name in new)
        extra = {"audit_pairs": int(s["audit_pairs"][i]), "audit_pairs_b": int(b), "audit_pairs_c": int(cc)}
        if where:  # the decision pane the coverage test read, with its own counts
            start = where["pane"] * self.pane_s
            extra.update(start=start, end=start + self.pane_s, n_decisions=int(where["decisions"]),
                         n_feedback=int(where["feedback"]),
                         coverage=where["feedback"] / where["decisions"] if where["decisions"] else None)
        return [self._event("monitor_degraded", reason, res, i, key, **extra)]

    def _why(self, name: str) -> str:
        c = self.config
        return {
            "coverage": f"sequential test: coverage below {c.c_min}",
            "abstention": f"sequential test: abstention rate above {c.a_max}",
            "under_reports": "sequential test: on decisions both labelled, the channel likes where audits override",
            "over_reports": "sequential test: on decisions both labelled, the channel overrides where audits like",
        }[name]

    def _hopping(self, res: WindowResult, i: int, key, st: KeyState, tuned: dict) -> list[dict]:
        c, s = self.config, res.stats
        out = []
        n_labels = s["n_labels"][i]
        if st.alarmed and n_labels >= c.hour_min_labels and s["p_exceed"][i] < c.p_rearm:
            # re-arm on an hour of labels, not one noisy pane; the detector restarted at the alarm
            st.alarmed = False
        if n_labels >= c.hour_min_labels:
            # production fidelity: posterior probability that the decision held now is right
            st.observe_fidelity(decision_fidelity(s["p_exceed"][i], st.alarmed), self.phi_halflife)
        out.extend(self._advice(res, i, key, st, tuned))
        return out

    def _advice(self, res: WindowResult, i: int, key, st: KeyState, tuned: dict) -> list[dict]:
        """threshold_adjust: tau* chosen on the hour's even panes and validated on its odd ones.

        The saving's lower bound is computed on labels tau* was not tuned on, so it needs no
        correction for the search; with `validate_advice` off (an ablation) the hour's own
        point saving decides.
        """
        c, s = self.config, res.stats
        tau, n_labels = float(s["tau"][i]), float(s["n_labels"][i])
        if not c.threshold_tuning or n_labels < c.n_min or res.pane < st.adjust_after:
            return []
        extra = {}
        if c.validate_advice:
            if res.halves is None:
                return []  # nothing held out to validate on
            # tuned on the even panes, validated on the odd ones (`_tune`), with the bound as
            # strict as the in-sample one (Bonferroni over the candidate edges): the rule reads
            # an overlapping hour every pane, so a plain 95% bound would err too often
            tau_star, saved, bound = tuned[i]
            held_out = res.halves[i, 1]
            extra = {"tau_star": _num(tau_star), "heldout_saving": _num(saved), "heldout_saving_lo": _num(bound),
                     "heldout_labels": int(held_out[N_FB + LIKE] + held_out[N_FB + OVERRIDE])}
        else:
            tau_star, saved = float(s["tau_star"][i]), float(s["cost_saved"][i])
            bound = saved
        # new advice: the threshold in force changed, or (at most once per readvise_panes) tau* moved
        new_advice = (st.advised is None or abs(tau - st.advised[0]) > TAU_NOISE
                      or (abs(tau_star - st.advised[1]) > c.tau_eps + TAU_NOISE
                          and res.pane >= st.adjust_after - c.cooldown_panes + c.readvise_panes))
        if not (new_advice and abs(tau_star - tau) > c.tau_eps + TAU_NOISE and bound >= c.min_cost_saving):
            return []
        st.adjust_after = res.pane + c.cooldown_panes
        st.advised = (tau, tau_star)
        how = "on held-out labels" if extra else "in the window (not validated)"
        return [self._event("threshold_adjust", f"cost-optimal threshold {tau_star:.3f} vs {tau:.3f}: saving at "
                            f"least {bound:.3f} a labelled decision {how}", res, i, key, **extra)]
