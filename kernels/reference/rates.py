"""Coverage, abstention and deferral: is there enough feedback to trust the loss?"""
from __future__ import annotations

import math

from kernels.reference.counts import DecisionCounts, FeedbackCounts


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


class MonitorRates:
    """Coverage = feedback / decisions, abstention = abstain feedback / feedback,
    deferral = abstained decisions / decisions (all unweighted event counts).

    >>> r = MonitorRates()
    >>> for d in ["act", "hold", "abstain", "act"]:
    ...     r.update_decision(d, 0.5)
    >>> r.update_feedback("abstain", "act")
    >>> r.update_feedback("like", "hold")
    >>> r.get()
    {'coverage': 0.5, 'abstention_rate': 0.5, 'deferral_rate': 0.25}
    """

    def __init__(self) -> None:
        self.decisions = DecisionCounts()
        self.feedback = FeedbackCounts()

    def update_decision(self, decision: str, tau: float) -> None:
        self.decisions.update(decision, tau)

    def update_feedback(self, kind: str, decision: str, weight: float = 1.0) -> None:
        self.feedback.update(kind, decision, weight)

    def merge(self, other: "MonitorRates") -> None:
        self.decisions.merge(other.decisions)
        self.feedback.merge(other.feedback)

    def get(self) -> dict[str, float]:
        n_dec, n_fb = self.decisions.total, self.feedback.total
        return {
            "coverage": _ratio(n_fb, n_dec),
            "abstention_rate": _ratio(self.feedback.events["abstain"], n_fb),
            "deferral_rate": _ratio(self.decisions.counts["abstain"], n_dec),
        }
