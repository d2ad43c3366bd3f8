"""Common random numbers: every random draw of one key, made up front, none depending on tau.

A decision's score, whether it would be deferred near the threshold, what the person wants,
who gives feedback and when, and when each event arrives are all drawn before any threshold
or model is applied. Only what follows from those draws and the policy in force (the emitted
score, act/hold/abstain, like/override) is computed later, in ``KeyDraws.events``. So the
open loop (the scenario's own tau) and a closed loop (tau and model moved by triggers) see
the same decisions and the same people, and their difference is the loop's effect alone.

The draws are made in the generator's order from the key's own stream, so filling every
decision with the scenario's schedule gives ``simulate()``'s events exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scenarios import REVIEWER, Scenario, sigmoid

DECISIONS = np.array(["act", "hold", "abstain"], dtype=object)
SOURCES = np.array(["human", "reviewer", "llm_judge", "audit"], dtype=object)
ACT, HOLD, ABSTAIN = 0, 1, 2
AUDIT = 3


def _jitter(rng: np.random.Generator, n: int) -> np.ndarray:
    j = rng.exponential(1.0, n)
    j += np.where(rng.random(n) < 0.05, rng.uniform(10.0, 120.0, n), 0.0)
    return j + np.where(rng.random(n) < 0.005, rng.uniform(300.0, 900.0, n), 0.0)


def _delay(rng: np.random.Generator, n: int, audit: bool) -> np.ndarray:
    if audit:
        median = np.full(n, 8 * 3600.0)
        sigma = 0.8
    else:
        median = np.where(rng.random(n) < 0.85, 180.0, 4 * 3600.0)
        sigma = 1.2
    return np.clip(median * np.exp(sigma * rng.standard_normal(n)), 5.0, 7 * 86400.0)


def _override(decision: np.ndarray, label: np.ndarray, unsure: np.ndarray) -> np.ndarray:
    """Reported label disagrees with act/hold, or a deferral the person was sure about."""
    return np.where(decision == ACT, ~label, np.where(decision == HOLD, label, ~unsure))


def schedule(sc: Scenario, n_windows: int) -> dict[str, np.ndarray]:
    """The scenario's parameters at each window's midpoint."""
    u = (np.arange(n_windows) + 0.5) / n_windows
    return {k: np.array([getattr(sc, k)(x) for x in u])
            for k in ("tau", "c", "coverage", "abstention", "noise", "rate", "under_report")}


@dataclass
class KeyDraws:
    """One key's draws. Decisions are numbered in window order (window w holds decisions
    ``offsets[w]:offsets[w + 1]``); feedback ``j`` is about decision ``fi[j]``; a key's events
    are its n scores, then its m feedback events, then the duplicate copies."""

    sc: Scenario
    name: str
    offsets: np.ndarray
    ts: np.ndarray
    s: np.ndarray  # the model's raw score
    defer_coin: np.ndarray  # deferred if also within abstain_band of tau
    wants_act: np.ndarray  # the person's true preference y*
    unsure: np.ndarray
    fi: np.ndarray
    source: np.ndarray
    label: np.ndarray  # reported label: y* with the source's noise
    hidden: np.ndarray  # an override the reviewer reports as a like
    fb_abstain: np.ndarray
    f_ts: np.ndarray
    weight: np.ndarray
    context: np.ndarray
    arrival: np.ndarray  # of every event: scores, feedback, duplicates
    dup: np.ndarray  # feedback index each duplicate copies
    sid: list[str]

    @property
    def n(self) -> int:
        return self.s.size

    @property
    def m(self) -> int:
        return self.fi.size

    def feedback_of(self, w0: int, w1: int) -> np.ndarray:
        """Indices of the feedback about the decisions of windows w0..w1-1."""
        lo, hi = self._fb_offsets[w0], self._fb_offsets[w1]
        return self._fb_order[lo:hi]

    def decisions(self, idx: np.ndarray, score: np.ndarray, tau: np.ndarray) -> np.ndarray:
        """ACT/HOLD/ABSTAIN of decisions ``idx`` at emitted ``score`` and threshold ``tau``."""
        deferred = (np.abs(score - tau) < self.sc.abstain_band) & self.defer_coin[idx]
        return np.where(deferred, ABSTAIN, np.where(score >= tau, ACT, HOLD))

    def overrides(self, j: np.ndarray, decision: np.ndarray, reported: bool = True) -> np.ndarray:
        """Whether feedback ``j`` (on decisions ``decision``) reports an override, unless it abstains
        (``reported=False``: would report one, had no reviewer hidden it)."""
        over = _override(decision, self.label[j], self.unsure[self.fi[j]])
        return over & ~self.hidden[j] if reported else over

    def human_labels(self, j: np.ndarray, decision: np.ndarray) -> np.ndarray:
        """The human-implied label y* that feedback ``j`` on decisions ``decision`` carries, as the
        monitor reads it (act + like, hold + override, an overridden deferral preferring act: 1);
        NaN where it carries none (abstain feedback, an endorsed deferral)."""
        over = self.overrides(j, decision)
        y = np.where(decision == ABSTAIN, np.where(over, self.label[j], np.nan), (decision == ACT) != over)
        return np.where(self.fb_abstain[j], np.nan, y.astype(float))

    def events(self, w0: int, w1: int, score: np.ndarray, tau: np.ndarray) -> tuple[list[int], list[dict]]:
        """(positions, events) of windows w0..w1-1's decisions, their feedback and its copies,
        given each decision's emitted score and threshold (arrays over those decisions)."""
        sc, a, b = self.sc, int(self.offsets[w0]), int(self.offsets[w1])
        decision = self.decisions(np.arange(a, b), score, tau)
        dec_s, s_l, tau_l = DECISIONS[decision].tolist(), score.tolist(), tau.tolist()
        sid = self.sid
        out = [
            {"type": "score", "v": 1, "event_id": "s-" + i, "scenario_id": i, "policy_id": sc.policy_id,
             "segment": sc.segment, "score": sc_, "tau": t, "decision": d, "ts": e}
            for i, sc_, t, d, e in zip(sid[a:b], s_l, tau_l, dec_s, self.ts[a:b].tolist())
        ]
        pos = list(range(a, b))
        j = self.feedback_of(w0, w1)
        rel = self.fi[j] - a
        label = self.label[j]
        override = self.overrides(j, decision[rel])
        kind = np.where(self.fb_abstain[j], "abstain", np.where(override, "override", "like"))
        preferred = np.where(label, "act", "hold")
        has_pref = override & ~self.fb_abstain[j] & (decision[rel] == ABSTAIN)
        n_audit = (self.source[j] == AUDIT).astype(int)
        fb_pos = {}
        for jj, i, k, src, wt, e, n_, pr, hp, cx in zip(
                j.tolist(), rel.tolist(), kind.tolist(), SOURCES[self.source[j]].tolist(), self.weight[j].tolist(),
                self.f_ts[j].tolist(), n_audit.tolist(), preferred.tolist(), has_pref.tolist(),
                self.context[j].tolist()):
            ev = {"type": "feedback", "v": 1, "event_id": f"f-{sid[a + i]}-{n_}", "scenario_id": sid[a + i],
                  "ts": e, "kind": k, "source": src, "weight": wt}
            if hp:
                ev["preferred"] = pr
            if cx:
                ev.update(policy_id=sc.policy_id, segment=sc.segment, score=s_l[i], tau=tau_l[i], decision=dec_s[i])
            fb_pos[jj] = len(out)
            out.append(ev)
            pos.append(self.n + jj)
        for d in np.flatnonzero(np.isin(self.dup, j)).tolist():
            out.append(dict(out[fb_pos[int(self.dup[d])]]))
            pos.append(self.n + self.m + d)
        return pos, out

    def __post_init__(self) -> None:
        self.win = np.repeat(np.arange(self.offsets.size - 1), np.diff(self.offsets))  # each decision's window
        fb_window = self.win[self.fi]
        self._fb_order = np.argsort(fb_window, kind="stable")
        self._fb_offsets = np.searchsorted(fb_window[self._fb_order], np.arange(self.offsets.size))


def draw(rng: np.random.Generator, sc: Scenario, par: dict[str, np.ndarray], seed: int, start_ts: float,
         window_s: float, decisions_per_window: int, audit_rate: float, duplicate_rate: float,
         context_rate: float, random_weights: bool) -> KeyDraws:
    """Every draw of one key, in the generator's order (see generator.py for the timing model)."""
    w_n = par["rate"].size
    counts = rng.poisson(decisions_per_window * par["rate"])
    win = np.repeat(np.arange(w_n), counts)
    n = win.size
    p_ = {k: v[win] for k, v in par.items()}
    ts = start_ts + (win + rng.random(n)) * window_s
    s = rng.beta(*sc.beta, n)
    defer_coin = rng.random(n) < sc.abstain_prob
    pref = sigmoid(sc.k * (s - p_["c"]))
    wants_act = rng.random(n) < pref
    unsure = rng.random(n) < 1.0 - np.abs(2.0 * pref - 1.0)

    # Non-audit feedback, then audits; `fi` indexes the decision each one is about.
    fh = np.flatnonzero(rng.random(n) < p_["coverage"])
    if sc.paired_audit_rate > 0 and audit_rate > 0:  # audits of decisions the channel labelled
        fa = fh[rng.random(fh.size) < sc.paired_audit_rate]
    else:
        fa = np.flatnonzero(rng.random(n) < audit_rate)
    fi = np.concatenate([fh, fa])
    m = fi.size
    source = np.concatenate([rng.choice(3, fh.size, p=sc.sources), np.full(fa.size, AUDIT)])
    flip = np.concatenate([rng.random(fh.size) < p_["noise"][fh], np.zeros(fa.size, bool)])
    fb_abstain = np.concatenate([rng.random(fh.size) < p_["abstention"][fh], np.zeros(fa.size, bool)])
    hidden = np.zeros(m, bool)
    if p_["under_report"].any():  # drawn only here, so honest keys keep their random stream
        hidden = (source == REVIEWER) & (rng.random(m) < p_["under_report"][fi])
    f_ts = ts[fi] + np.concatenate([_delay(rng, fh.size, False), _delay(rng, fa.size, True)])
    weight = np.ones(m)
    if random_weights:  # humans and the llm judge vary; reviewers and audits stay 1.0
        vary = (source == 0) | (source == 2)
        weight[vary] = 1.0 - rng.random(int(vary.sum()))
    context = rng.random(m) < context_rate
    arrival = np.concatenate([ts, f_ts]) + _jitter(rng, n + m)
    dup = np.flatnonzero(rng.random(m) < duplicate_rate)
    arrival = np.concatenate([arrival, arrival[n + dup] + rng.uniform(1.0, 30.0, dup.size)])

    digits = [f"-{i:05d}" for i in range(int(counts.max(initial=0)))]
    sid = [f"{sc.name}-{seed}-{w:04d}" + d for w, c in enumerate(counts.tolist()) for d in digits[:c]]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return KeyDraws(sc, sc.name, offsets, ts, s, defer_coin, wants_act, unsure, fi, source, wants_act[fi] ^ flip,
                    hidden, fb_abstain, f_ts, weight, context, arrival, dup, sid)
