"""Threshold fidelity phi = P(D = T): how often the monitor's own decision is right."""
from __future__ import annotations

import math


def decision_fidelity(p_exceed: float, decided: bool) -> float:
    """Posterior probability that decision D is right: p_exceed if D = 1, else 1 - p_exceed."""
    return p_exceed if decided else 1.0 - p_exceed


class FidelityEstimate:
    """Running mean of the posterior probability that each window's decision was right.

    With ground truth (simulation), pass `truth` to measure phi directly instead.

    >>> f = FidelityEstimate()
    >>> f.update(0.9, decided=True); f.update(0.2, decided=False); f.update(0.7, decided=False)
    >>> round(f.get(), 4)
    0.6667
    """

    def __init__(self) -> None:
        self.n = 0
        self.total = 0.0

    def update(self, p_exceed: float, decided: bool, truth: bool | None = None) -> None:
        self.n += 1
        self.total += float(decided == truth) if truth is not None else decision_fidelity(p_exceed, decided)

    def merge(self, other: "FidelityEstimate") -> None:
        self.n += other.n
        self.total += other.total

    def get(self) -> float:
        return self.total / self.n if self.n else math.nan
