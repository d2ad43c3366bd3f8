"""Decision and feedback counts: the denominators of every rate."""
from __future__ import annotations

from kernels.layout import DECISIONS, KINDS


class DecisionCounts:
    """Decisions seen, by decision, and the mean threshold in force.

    >>> c = DecisionCounts()
    >>> for d, tau in [("act", 0.5), ("hold", 0.5), ("abstain", 0.7)]:
    ...     c.update(d, tau)
    >>> c.get()["abstain"], round(c.mean_tau, 3)
    (1, 0.567)
    """

    def __init__(self) -> None:
        self.counts = {d: 0 for d in DECISIONS}
        self.tau_sum = 0.0

    def update(self, decision: str, tau: float) -> None:
        self.counts[decision] += 1
        self.tau_sum += tau

    def merge(self, other: "DecisionCounts") -> None:
        for d in DECISIONS:
            self.counts[d] += other.counts[d]
        self.tau_sum += other.tau_sum

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def mean_tau(self) -> float:
        return self.tau_sum / self.total if self.total else float("nan")

    def get(self) -> dict[str, int]:
        return dict(self.counts)


class FeedbackCounts:
    """Feedback events by kind, and weighted like/override/abstain counts per decision.

    >>> c = FeedbackCounts()
    >>> c.update("override", "act", 2.0)
    >>> c.update("like", "act", 1.0)
    >>> c.update("abstain", "hold", 1.0)
    >>> c.get()["override"]["act"], c.events["abstain"], c.total
    (2.0, 1, 3)
    """

    def __init__(self) -> None:
        self.events = {k: 0 for k in KINDS}
        self.weights = {k: {d: 0.0 for d in DECISIONS} for k in KINDS}

    def update(self, kind: str, decision: str, weight: float = 1.0) -> None:
        self.events[kind] += 1
        self.weights[kind][decision] += weight

    def merge(self, other: "FeedbackCounts") -> None:
        for k in KINDS:
            self.events[k] += other.events[k]
            for d in DECISIONS:
                self.weights[k][d] += other.weights[k][d]

    @property
    def total(self) -> int:
        return sum(self.events.values())

    def get(self) -> dict[str, dict[str, float]]:
        return {k: dict(v) for k, v in self.weights.items()}
