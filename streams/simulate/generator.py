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

from .draws import KeyDraws, draw, schedule
from .scenarios import AUDIT_RATE, Scenario, ground_truth, scenario, scenario_names, stream_index


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


def key_draws(sc: Scenario, config: SimConfig, audit_rate: float) -> KeyDraws:
    """Every random draw of one key, from its own stream (see draws.py)."""
    rng = np.random.Generator(np.random.PCG64([config.seed, stream_index(sc.name)]))
    return draw(rng, sc, schedule(sc, config.n_windows), config.seed, config.start_ts, config.window_s,
                config.decisions_per_window, audit_rate, config.duplicate_rate, config.context_rate,
                config.random_weights)


def truth_row(sc: Scenario, config: SimConfig, w: int, gt: dict) -> dict:
    """A truth row: the key, its window and the ground truth ``gt`` there."""
    row = {"policy_id": sc.policy_id, "segment": sc.segment, "scenario": sc.name,
           "window_start": config.start_ts + w * config.window_s,
           "window_end": config.start_ts + (w + 1) * config.window_s, **gt}
    row["over_budget"] = row["true_loss"] > config.l_budget
    return row


def _key_events(sc: Scenario, cfg: SimConfig, audit_rate: float):
    """Return (events, arrival times, truth rows) for one key under its own schedule."""
    par = schedule(sc, cfg.n_windows)
    u = (np.arange(cfg.n_windows) + 0.5) / cfg.n_windows
    truth, cache = [], {}  # most windows repeat a neighbour's parameters
    for w, x in enumerate(u):
        key = tuple(v[w] for v in par.values())
        if key not in cache:
            cache[key] = ground_truth(sc, x, audit_rate)
        truth.append(truth_row(sc, cfg, w, cache[key]))
    d = key_draws(sc, cfg, audit_rate)
    pos, out = d.events(0, cfg.n_windows, d.s, par["tau"][d.win])
    events = [None] * len(out)
    for p, e in zip(pos, out):
        events[p] = e
    return events, d.arrival, truth


def simulate(config: SimConfig = SimConfig()) -> SimRun:
    """Generate all configured scenarios, interleaved in one arrival-ordered stream."""
    audit_rate = AUDIT_RATE if config.include_audit else 0.0
    events, arrivals, truth = [], [], []
    for name in config.scenarios:
        ev, arr, tr = _key_events(scenario(name), config, audit_rate)
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
