"""Calibration of scores against the human-implied label y* (1 = the person wants act)."""
from __future__ import annotations

import math

from kernels.layout import score_bin
from kernels.reference.intervals import z_lower

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
    """tau* = argmin over edges t = j/B, j < B, of c_fp * W{s >= t, y* = 0} + c_fn * W{s < t, y* = 1}.

    Edge 1 is no candidate: a threshold of 1 still acts on a score of exactly 1, which the
    top bin cannot tell from the rest of [1 - 1/B, 1], so its cost would be wrong.

    The cost at the tau in force is that of the decisions actually taken (`decision` of
    each label, whatever tau it was taken under): an acted y* = 0 costs c_fp, a held
    y* = 1 costs c_fn, a deferral nothing, as in the cost-weighted loss (a person decided).
    An edge is advised only if it beats that cost by more than the tie tolerance; else
    tau* = tau and the saving is 0, so advice never names a threshold that changes no
    decision. Among edges of equal cost the one nearest tau wins, then the lower one.

    `get(tau, n_eff, confidence)` returns tau*, the saving per labelled decision, and a
    lower bound on it. Per label the saving is d = (cost now) - (cost at tau*): +-c_fp or
    +-c_fn for scores between tau and tau*, 0 elsewhere, and minus the cost at tau* for a
    deferral. The bound is the mean of d minus z * sqrt(var(d) / n_eff), z one-sided at
    `confidence` with Bonferroni over the B candidates (tau* is picked on the same data);
    var(d) takes every label in the bins between tau and tau* (the bin holding tau
    included whole) and every deferral as a full +-c, so it errs large. It assumes the
    window's decisions followed one threshold; 0 when tau* = tau.

    >>> t = CostOptimalThreshold(n_bins=10, c_fp=1.0, c_fn=1.0)
    >>> for s, y in [(0.15, 0), (0.35, 0), (0.45, 1), (0.55, 1), (0.75, 1), (0.65, 0)]:
    ...     t.update(s, y, decision="act" if s >= 0.3 else "hold")
    >>> tau_star, saved, lo = t.get(tau=0.3, n_eff=6.0)
    >>> tau_star, round(saved, 4), round(lo, 4)
    (0.4, 0.1667, -0.2252)
    """

    def __init__(self, n_bins: int = 20, c_fp: float = 1.0, c_fn: float = 1.0) -> None:
        super().__init__(n_bins)
        self.c_fp, self.c_fn = c_fp, c_fn
        # weight by (decision taken, y*): what the labelled decisions cost now
        self.taken = {d: [0.0, 0.0] for d in ("act", "hold", "abstain")}

    def update(self, score: float, y: int, weight: float = 1.0, *, decision: str) -> None:  # type: ignore[override]
        super().update(score, y, weight)
        self.taken[decision][y] += weight

    def merge(self, other: "CostOptimalThreshold") -> None:  # type: ignore[override]
        super().merge(other)
        for d, (neg, pos) in other.taken.items():
            self.taken[d][0] += neg
            self.taken[d][1] += pos

    def costs(self) -> list[float]:
        """Cost at each candidate edge j/B, j < B: acting on bins >= j."""
        return [self.c_fp * sum(self.neg[j:]) + self.c_fn * sum(self.pos[:j]) for j in range(self.n_bins)]

    def cost_now(self) -> float:
        """Cost of the decisions taken: acted y* = 0 and held y* = 1 (deferrals cost nothing)."""
        return self.c_fp * self.taken["act"][0] + self.c_fn * self.taken["hold"][1]

    def get(self, tau: float, n_eff: float, confidence: float = 0.95) -> tuple[float, float, float]:  # type: ignore[override]
        n = self.total
        if n <= 0 or math.isnan(tau):
            return math.nan, math.nan, math.nan
        costs, now = self.costs(), self.cost_now()
        best = min(costs)
        tol = TIE_TOLERANCE * (1.0 + (self.c_fp + self.c_fn) * n)
        if not best < now - tol:
            return tau, 0.0, 0.0
        x = tau * self.n_bins  # tau in edge units
        ties = [j for j, c in enumerate(costs) if c <= best + tol]
        j_star = min(ties, key=lambda j: (abs(j - x), j))
        saved = (now - costs[j_star]) / n
        lo, hi = (math.floor(x), j_star) if j_star > x else (j_star, math.ceil(x))  # bins between
        m2 = (self.c_fp**2 * (sum(self.neg[lo:hi]) + abstained(self.taken["abstain"][0], n))
              + self.c_fn**2 * (sum(self.pos[lo:hi]) + abstained(self.taken["abstain"][1], n)))
        var = saved_variance(m2 / n, saved)
        return j_star / self.n_bins, saved, saved - z_lower(confidence, self.n_bins) * math.sqrt(var / n_eff)


    def saving_of(self, tau_new: float, tau: float, n_eff: float, confidence: float = 0.95,
                  candidates: int = 1) -> tuple[float, float]:
        """Saving per labelled decision of acting from the edge `tau_new` (j/B, j < B) instead of
        the decisions taken, and its lower bound, for a threshold chosen on other labels: no
        correction for the search, only Bonferroni over `candidates` bounds read at once."""
        n = self.total
        if n <= 0 or math.isnan(tau) or math.isnan(tau_new):
            return math.nan, math.nan
        j = round(tau_new * self.n_bins)
        saved = (self.cost_now() - self.costs()[j]) / n
        x = tau * self.n_bins
        lo, hi = (math.floor(x), j) if j > x else (j, math.ceil(x))
        m2 = (self.c_fp**2 * (sum(self.neg[lo:hi]) + abstained(self.taken["abstain"][0], n))
              + self.c_fn**2 * (sum(self.pos[lo:hi]) + abstained(self.taken["abstain"][1], n)))
        var = saved_variance(m2 / n, saved)
        return saved, saved - z_lower(confidence, candidates) * math.sqrt(var / n_eff)


def abstained(w: float, total: float) -> float:
    """Weight of deferred labels, 0 within the tie tolerance of the total (rounding noise)."""
    return w if w > TIE_TOLERANCE * total else 0.0


def saved_variance(m2: float, mean: float) -> float:
    """Variance of the per-label saving from its second moment; 0 within the tie tolerance."""
    var = m2 - mean * mean
    return var if var > TIE_TOLERANCE * m2 else 0.0
