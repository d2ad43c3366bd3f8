"""Calibration of scores against the human-implied label y* (1 = the person wants act)."""
from __future__ import annotations

import math

from kernels.layout import score_bin

#: Costs within this relative tolerance count as a tie when choosing tau*.
TIE_TOLERANCE = 1e-9


class BrierScore:
    """Weighted mean of `(s - y*)^2`.

    >>> b = BrierScore()
    >>> for s, y in [(0.9, 1), (0.2, 0), (0.6, 0)]:
    ...     b.update(s, y)
    >>> round(b.get(), 4)
    0.1367
    """

    def __init__(self) -> None:
        self.w = 0.0
        self.total = 0.0

    def update(self, score: float, y: int, weight: float = 1.0) -> None:
        self.w += weight
        self.total += weight * (score - y) ** 2

    def merge(self, other: "BrierScore") -> None:
        self.w += other.w
        self.total += other.total

    def get(self) -> float:
        return self.total / self.w if self.w > 0 else math.nan


class LabelHistogram:
    """Score histogram on equal-width bins, split by y*, with the weighted score sum per bin.

    >>> h = LabelHistogram(n_bins=4)
    >>> h.update(0.1, 0); h.update(0.8, 1); h.update(0.9, 0, weight=2.0)
    >>> h.neg, h.pos
    ([1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 1.0])
    """

    def __init__(self, n_bins: int = 20) -> None:
        self.n_bins = n_bins
        self.neg = [0.0] * n_bins
        self.pos = [0.0] * n_bins
        self.ws = [0.0] * n_bins

    def update(self, score: float, y: int, weight: float = 1.0) -> None:
        b = score_bin(score, self.n_bins)
        (self.pos if y else self.neg)[b] += weight
        self.ws[b] += weight * score

    def merge(self, other: "LabelHistogram") -> None:
        for b in range(self.n_bins):
            self.neg[b] += other.neg[b]
            self.pos[b] += other.pos[b]
            self.ws[b] += other.ws[b]

    @property
    def total(self) -> float:
        return sum(self.neg) + sum(self.pos)

    def get(self) -> tuple[list[float], list[float]]:
        return list(self.neg), list(self.pos)


class ExpectedCalibrationError(LabelHistogram):
    """ECE = sum over bins of (n_b / N) * |mean y*_b - mean s_b| = sum_b |sum y*_b - sum s_b| / N.

    >>> e = ExpectedCalibrationError(n_bins=2)
    >>> for s, y in [(0.9, 1), (0.8, 1), (0.2, 1), (0.1, 0)]:
    ...     e.update(s, y)
    >>> round(e.get(), 4)
    0.25
    """

    def get(self) -> float:  # type: ignore[override]
        n = self.total
        if n <= 0:
            return math.nan
        return sum(abs(self.pos[b] - self.ws[b]) for b in range(self.n_bins)) / n


class CostOptimalThreshold(LabelHistogram):
    """tau* = argmin over bin edges t of c_fp * W{s >= t, y* = 0} + c_fn * W{s < t, y* = 1}.

    `get(tau)` returns tau* and the expected cost saved per labelled decision
    by moving from the edge nearest `tau` to tau*. Among equal costs the edge
    nearest `tau` wins (do not move without a reason), then the lower one.

    >>> t = CostOptimalThreshold(n_bins=10, c_fp=1.0, c_fn=1.0)
    >>> for s, y in [(0.15, 0), (0.35, 0), (0.45, 1), (0.55, 1), (0.75, 1)]:
    ...     t.update(s, y)
    >>> t.get(tau=0.7)
    (0.4, 0.4)
    """

    def __init__(self, n_bins: int = 20, c_fp: float = 1.0, c_fn: float = 1.0) -> None:
        super().__init__(n_bins)
        self.c_fp, self.c_fn = c_fp, c_fn

    def costs(self) -> list[float]:
        """Cost at each edge j/B: acting on bins >= j."""
        out = []
        for j in range(self.n_bins + 1):
            out.append(self.c_fp * sum(self.neg[j:]) + self.c_fn * sum(self.pos[:j]))
        return out

    def get(self, tau: float) -> tuple[float, float]:  # type: ignore[override]
        n = self.total
        if n <= 0 or math.isnan(tau):
            return math.nan, math.nan
        costs = self.costs()
        best = min(costs)
        tol = TIE_TOLERANCE * (1.0 + (self.c_fp + self.c_fn) * n)
        j_tau = min(self.n_bins, max(0, round(tau * self.n_bins)))
        ties = [j for j, c in enumerate(costs) if c <= best + tol]
        j_star = min(ties, key=lambda j: (abs(j - j_tau), j))
        return j_star / self.n_bins, (costs[j_tau] - costs[j_star]) / n
