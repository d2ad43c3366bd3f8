"""Alignment loss: the weighted override rate among labelled decisions."""
from __future__ import annotations

import math

from kernels.reference.intervals import effective_size, scaled_square


class AlignmentLoss:
    """`L = sum(w*y) / sum(w)` over like (y=0) and override (y=1) feedback.

    Also keeps the override weight per decision for the cost-weighted loss
    `L_c = (c_fp * W_override(act) + c_fn * W_override(hold)) / sum(w)`
    (overriding an abstention costs nothing: a person decided), and
    `sum(w^2)` for the effective sample size `(sum w)^2 / sum w^2` (as a sum of
    `scaled_square`s, so no accepted weight underflows to 0), and the
    sums with each weight capped at 1 (`w_cap`, `wy_cap`) that the sequential
    rules read: a label is at most one Bernoulli observation there, whatever its weight,
    and only a decision's first label counts (a `repeat` is a second look at the same
    decision, so not an independent observation).

    >>> m = AlignmentLoss()
    >>> for y, d in [(1, "act"), (0, "act"), (0, "hold"), (1, "hold")]:
    ...     m.update(y, d)
    >>> m.get(), m.cost_weighted(c_fp=3.0, c_fn=1.0), m.n_eff
    (0.5, 1.0, 4.0)
    >>> m.update(1, "act", weight=2.5)
    >>> m.update(1, "act", repeat=True)
    >>> m.w, m.w_cap, m.wy_cap
    (7.5, 5.0, 3.0)
    """

    def __init__(self) -> None:
        self.n = 0
        self.w = 0.0
        self.wy = 0.0
        self.w2 = 0.0
        self.w_cap = 0.0
        self.wy_cap = 0.0
        self.wy_by_decision = {"act": 0.0, "hold": 0.0, "abstain": 0.0}

    def update(self, y: int, decision: str, weight: float = 1.0, repeat: bool = False) -> None:
        self.n += 1
        self.w += weight
        self.w2 += scaled_square(weight)
        capped = 0.0 if repeat else min(weight, 1.0)
        self.w_cap += capped
        if y:
            self.wy += weight
            self.wy_cap += capped
            self.wy_by_decision[decision] += weight

    def merge(self, other: "AlignmentLoss") -> None:
        self.n += other.n
        self.w += other.w
        self.wy += other.wy
        self.w2 += other.w2
        self.w_cap += other.w_cap
        self.wy_cap += other.wy_cap
        for d, v in other.wy_by_decision.items():
            self.wy_by_decision[d] += v

    @property
    def n_eff(self) -> float:
        return effective_size(self.w, self.w2)

    def get(self) -> float:
        return self.wy / self.w if self.w > 0 else math.nan

    def cost_weighted(self, c_fp: float = 1.0, c_fn: float = 1.0) -> float:
        if self.w <= 0:
            return math.nan
        wy = self.wy_by_decision
        return (c_fp * wy["act"] + c_fn * wy["hold"]) / self.w
