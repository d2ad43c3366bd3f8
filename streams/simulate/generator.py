"""Seeded, vectorised generation of score and feedback events.

Everything for one key is drawn in a few numpy calls from its own PCG64
stream, seeded by (seed, index of the scenario in ``scenario_names()``), so a
key's events do not change when other scenarios are added or removed.

Timing model (all times in seconds):

* decisions: Poisson(decisions_per_window * rate(u)) per window, uniform in it.
* feedback delay (event ts = decision ts + delay) is a heavy-tailed lognormal
  mixture: 85% median 3 min, 15% median 4 h (sigma 1.2 each), clipped to
  [5 s, 7 d]: median ~4 min, ~43% more than 5 min, ~14% more than 1 h and
  ~1% more than a day after the decision.  Audits: median 8 h, sigma 0.8, so
  an audit of a decision that also got other feedback mostly comes hours later.
* transport jitter (arrival = ts + jitter): Exp(1 s) for every event (so
  sub-second reordering is common), plus U(10, 120) s for 5% (out of order by
  up to a couple of minutes) and U(300, 900) s for 0.5% ("late" events beyond
  a 5-minute window).  About 1% of feedback arrives before its score.  Duplicates (feedback only, ``duplicate_rate``) are equal
  copies arriving U(1, 30) s after the original.  ``events`` is in arrival order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scenarios import AUDIT_RATE, REVIEWER, SCENARIOS, Scenario, ground_truth, scenario_names, sigmoid

DECISIONS = np.array(["act", "hold", "abstain"], dtype=object)
SOURCES = np.array(["human", "reviewer", "llm_judge", "audit"], dtype=object)
ACT, HOLD, ABSTAIN = 0, 1, 2
AUDIT = 3


@dataclass(frozen=True)
class SimConfig:
    seed: int = 7
    start_ts: float = 1767225600.0  # 2026-01-01T00:00:00Z
    n_windows: int = 288
    window_s: float = 300.0
    decisions_per_window: int = 400
    l_budget: float = 0.10
    duplicate_rate: float = 0.02
    context_rate: float = 0.5
    random_weights: bool = False
    scenarios: tuple[str, ...] = scenario_names()
    include_audit: bool = True


@dataclass
class SimRun:
    events: list[dict]
    truth: list[dict]
    config: SimConfig


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


def _key_events(rng: np.random.Generator, sc: Scenario, cfg: SimConfig, audit_rate: float):
    """Return (events, arrival times, truth rows) for one key."""
    w_n = cfg.n_windows
    u = (np.arange(w_n) + 0.5) / w_n
    par = {k: np.array([getattr(sc, k)(x) for x in u])
           for k in ("tau", "c", "coverage", "abstention", "noise", "rate", "under_report")}
    truth, cache = [], {}  # most windows repeat a neighbour's parameters
    for w, x in enumerate(u):
        key = tuple(v[w] for v in par.values())
        if key not in cache:
            cache[key] = ground_truth(sc, x, audit_rate)
        row = {"policy_id": sc.policy_id, "segment": sc.segment, "scenario": sc.name,
               "window_start": cfg.start_ts + w * cfg.window_s, "window_end": cfg.start_ts + (w + 1) * cfg.window_s,
               **cache[key]}
        row["over_budget"] = row["true_loss"] > cfg.l_budget
        truth.append(row)

    counts = rng.poisson(cfg.decisions_per_window * par["rate"])
    win = np.repeat(np.arange(w_n), counts)
    n = win.size
    p_ = {k: v[win] for k, v in par.items()}
    ts = cfg.start_ts + (win + rng.random(n)) * cfg.window_s
    s = rng.beta(*sc.beta, n)
    deferred = (np.abs(s - p_["tau"]) < sc.abstain_band) & (rng.random(n) < sc.abstain_prob)
    decision = np.where(deferred, ABSTAIN, np.where(s >= p_["tau"], ACT, HOLD))
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
    label = wants_act[fi] ^ flip
    override = _override(decision[fi], label, unsure[fi])
    fb_abstain = np.concatenate([rng.random(fh.size) < p_["abstention"][fh], np.zeros(fa.size, bool)])
    if p_["under_report"].any():  # drawn only here, so honest keys keep their random stream
        override &= ~((source == REVIEWER) & (rng.random(m) < p_["under_report"][fi]))
    kind = np.where(fb_abstain, "abstain", np.where(override, "override", "like"))
    preferred = np.where(label, "act", "hold")
    has_pref = override & ~fb_abstain & (decision[fi] == ABSTAIN)
    f_ts = ts[fi] + np.concatenate([_delay(rng, fh.size, False), _delay(rng, fa.size, True)])
    weight = np.ones(m)
    if cfg.random_weights:  # humans and the llm judge vary; reviewers and audits stay 1.0
        vary = (source == 0) | (source == 2)
        weight[vary] = 1.0 - rng.random(int(vary.sum()))
    context = rng.random(m) < cfg.context_rate

    digits = [f"-{i:05d}" for i in range(int(counts.max(initial=0)))]
    sid = [f"{sc.name}-{cfg.seed}-{w:04d}" + d for w, c in enumerate(counts.tolist()) for d in digits[:c]]
    dec_s = DECISIONS[decision].tolist()
    s_l, tau_l = s.tolist(), p_["tau"].tolist()
    events = [
        {"type": "score", "v": 1, "event_id": "s-" + i, "scenario_id": i, "policy_id": sc.policy_id,
         "segment": sc.segment, "score": sc_, "tau": t, "decision": d, "ts": e}
        for i, sc_, t, d, e in zip(sid, s_l, tau_l, dec_s, ts.tolist())
    ]
    n_of = np.concatenate([np.zeros(fh.size, int), np.ones(fa.size, int)]).tolist()
    for j, (i, k, src, wt, e, n_, pr, hp, cx) in enumerate(zip(
            fi.tolist(), kind.tolist(), SOURCES[source].tolist(), weight.tolist(), f_ts.tolist(),
            n_of, preferred.tolist(), has_pref.tolist(), context.tolist())):
        ev = {"type": "feedback", "v": 1, "event_id": f"f-{sid[i]}-{n_}", "scenario_id": sid[i],
              "ts": e, "kind": k, "source": src, "weight": wt}
        if hp:
            ev["preferred"] = pr
        if cx:
            ev.update(policy_id=sc.policy_id, segment=sc.segment, score=s_l[i], tau=tau_l[i], decision=dec_s[i])
        events.append(ev)

    arrival = np.concatenate([ts, f_ts]) + _jitter(rng, n + m)
    dup = n + np.flatnonzero(rng.random(m) < cfg.duplicate_rate)
    events += [dict(events[j]) for j in dup.tolist()]
    arrival = np.concatenate([arrival, arrival[dup] + rng.uniform(1.0, 30.0, dup.size)])
    return events, arrival, truth


def simulate(config: SimConfig = SimConfig()) -> SimRun:
    """Generate all configured scenarios, interleaved in one arrival-ordered stream."""
    names = scenario_names()
    audit_rate = AUDIT_RATE if config.include_audit else 0.0
    events, arrivals, truth = [], [], []
    for name in config.scenarios:
        rng = np.random.Generator(np.random.PCG64([config.seed, names.index(name)]))
        ev, arr, tr = _key_events(rng, SCENARIOS[name], config, audit_rate)
        events += ev
        arrivals.append(arr)
        truth += tr
    order = np.argsort(np.concatenate(arrivals), kind="stable") if events else []
    return SimRun([events[i] for i in order], truth, config)


def simulate_labels(rng: np.random.Generator, n: int, true_loss, weights=None):
    """Override indicators y ~ Bernoulli(true_loss) and their weights, for
    estimator convergence studies without the event machinery.

    true_loss: scalar or length-n array.  weights: None (all 1.0), "random"
    (uniform in (0, 1]) or a length-n array.  Returns float arrays (y, w).
    """
    y = (rng.random(n) < np.broadcast_to(true_loss, (n,))).astype(float)
    if weights is None:
        w = np.ones(n)
    elif isinstance(weights, str) and weights == "random":
        w = 1.0 - rng.random(n)
    else:
        w = np.asarray(weights, dtype=float)
    return y, w
