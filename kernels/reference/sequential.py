"""The sequential retrain rule: a one-sided Bernoulli CUSUM with an anytime false-alarm bound.

Why a CUSUM: checking "p_exceed >= 0.95" in every window raises a false alarm
about once in twenty windows whenever the loss sits at the budget, so over a
day of 5-minute windows a false retrain is all but certain. The CUSUM instead
accumulates evidence across windows and only alarms when the likelihood
ratio of "loss = p1" against "loss = p0 (the budget)" has grown large.

Guarantee. Each window adds the log-likelihood ratio of its labels,
`wy * log(p1/p0) + (w - wy) * log((1-p1)/(1-p0))`, and S = max(0, S + llr).
While the true loss is at most p0 (and weights are at most 1), the ratio
started at any window is a non-negative supermartingale, so by Ville's
inequality it ever reaches e^h with probability at most e^-h. An alarm
within H windows needs one of H such starts to succeed, so

    P(false alarm within H windows) <= H * exp(-h),

however often the statistic is looked at; with `h = log(H / alpha)` the
false-alarm probability over the horizon is at most alpha. The in-control
average run length is at least e^h windows (Lorden). After an alarm S
restarts at 0. Detection delay is about h / KL(p1 || p0) labels.
"""
from __future__ import annotations

import math


def cusum_threshold(horizon_windows: int, alpha: float) -> float:
    """h such that P(false alarm within `horizon_windows`) <= alpha."""
    if horizon_windows < 1 or not 0.0 < alpha < 1.0:
        raise ValueError("need horizon_windows >= 1 and 0 < alpha < 1")
    return math.log(horizon_windows / alpha)


def llr_weights(p0: float, p1: float) -> tuple[float, float]:
    """Log-likelihood-ratio increments for one override (y=1) and one like (y=0)."""
    if not 0.0 < p0 < p1 < 1.0:
        raise ValueError(f"need 0 < p0 < p1 < 1, got p0={p0}, p1={p1}")
    return math.log(p1 / p0), math.log((1.0 - p1) / (1.0 - p0))


class BernoulliCUSUM:
    """One-sided CUSUM on override indicators, updated once per window with its sums.

    >>> c = BernoulliCUSUM(p0=0.1, p1=0.2, h=cusum_threshold(288, 0.05))
    >>> [c.update(wy=2, w=40) for _ in range(3)]      # loss 0.05: stays at 0
    [False, False, False]
    >>> alarms = [c.update(wy=10, w=40) for _ in range(6)]  # loss 0.25: alarms
    >>> alarms.index(True), c.get()
    (2, 0.0)
    """

    def __init__(self, p0: float, p1: float, h: float) -> None:
        self.up, self.down = llr_weights(p0, p1)
        if h <= 0:
            raise ValueError("h must be positive")
        self.h = h
        self.s = 0.0

    def update(self, wy: float, w: float) -> bool:
        """Add one window's override weight `wy` out of labelled weight `w`; True on alarm."""
        self.s = max(0.0, self.s + wy * self.up + (w - wy) * self.down)
        if self.s >= self.h:
            self.s = 0.0
            return True
        return False

    def get(self) -> float:
        return self.s
