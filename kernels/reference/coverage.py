"""Coverage by decision time: the feedback each pane's decisions drew within a few panes.

Feedback lags its decision by minutes to days, and decisions may come in bursts (a batch
scorer every hour), so a window's feedback says little about that same window's
decisions. Counting each feedback event in its decision's pane instead (lags 0 to
`lag_panes - 1` panes), and reading the pane once the last of those has closed, gives a
count that depends only on those decisions: with each decision drawing feedback within
`lag_panes - 1` panes of it with probability c, it is at least binomial (D, c) whatever the
traffic's shape, which is what the coverage test needs.
"""
from __future__ import annotations


class FeedbackLags:
    """Feedback of one window by panes since its decision's pane (the kernel's FB_LAG columns).

    >>> f = FeedbackLags(lag_panes=3)
    >>> for lag in [0, 0, 2, 5, -1]:
    ...     f.update(lag)
    >>> f.get()
    [2, 0, 1]
    """

    def __init__(self, lag_panes: int) -> None:
        self.counts = [0] * lag_panes

    def update(self, lag: int) -> None:
        """Add a feedback event `lag` panes after its decision's (-1: unknown; not counted)."""
        if 0 <= lag < len(self.counts):
            self.counts[lag] += 1

    def merge(self, other: "FeedbackLags") -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]

    def get(self) -> list[int]:
        return list(self.counts)


class DecisionPaneCoverage:
    """Per key: each decision pane's feedback within `lag_panes` panes, once it is complete.

    Fed one final pane at a time, in order, with the pane's decisions and its `FeedbackLags`
    counts; returns the decision panes that became complete as (pane, feedback, decisions).

    >>> c = DecisionPaneCoverage(lag_panes=2)
    >>> c.update(0, decisions=10, lags=[3, 0])
    []
    >>> c.update(1, decisions=4, lags=[1, 2])
    [(0, 5.0, 10.0)]
    >>> c.update(5, decisions=0, lags=[0, 0])
    [(1, 1.0, 4.0)]
    """

    def __init__(self, lag_panes: int) -> None:
        self.lag_panes = lag_panes
        self.due: dict[int, list[float]] = {}  # decision pane -> [feedback so far, decisions]

    def update(self, pane: int, decisions: float, lags) -> list[tuple[int, float, float]]:
        for d, count in enumerate(lags):
            if count:
                self.due.setdefault(pane - d, [0.0, 0.0])[0] += float(count)
        self.due.setdefault(pane, [0.0, 0.0])[1] += float(decisions)
        done = sorted(j for j in self.due if j <= pane - self.lag_panes + 1)
        return [(j, *self.due.pop(j)) for j in done]

    def dump(self) -> list[list[float]]:
        return [[j, f, d] for j, (f, d) in sorted(self.due.items())]

    def load(self, state: list) -> None:
        self.due = {int(j): [float(f), float(d)] for j, f, d in state}
