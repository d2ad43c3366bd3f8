"""Records: de-duplicated, joined events in arrival order, as columns for the kernels
(built by :mod:`streams.operators.ingest`), and the codes of their categorical fields."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels.batch import FeedbackBatch, ScoreBatch
from kernels.layout import DECISIONS, FEEDBACK_EVENT, KINDS, SCORE_EVENT, SOURCES
from kernels.layout import PREFERRED as PREFERRED_NAMES

DECISION = {d: i for i, d in enumerate(DECISIONS)}
KIND = {k: i for i, k in enumerate(KINDS)}
SOURCE = {s: i for i, s in enumerate(SOURCES)}
PREFERRED: dict = {p: i for i, p in enumerate(PREFERRED_NAMES)}
PREFERRED[None] = PREFERRED[""] = 0  # none given (an event's None, a parked one's "")


@dataclass
class Records:
    """One entry per event: key (policy_id, segment), event time, type, and the fields the kernels read.

    The key is two columns of strings, not a list of tuples: building a tuple a record cost
    about a twentieth of the worker on envelopes."""

    policy_id: list[str]
    segment: list[str]
    ts: np.ndarray
    etype: np.ndarray
    decision: np.ndarray
    tau: np.ndarray
    kind: np.ndarray
    source: np.ndarray
    preferred: np.ndarray
    score: np.ndarray
    weight: np.ndarray
    pair: np.ndarray | None = None  # audit-pair code a feedback completed (kernels.layout.PAIR_*)
    repeat: np.ndarray | None = None  # a label on a decision labelled before
    decided: np.ndarray | None = None  # event time of a feedback's decision (NaN: unknown)

    def __post_init__(self) -> None:
        if self.pair is None:
            self.pair = np.full(len(self), -1, np.int8)
        if self.repeat is None:
            self.repeat = np.zeros(len(self), np.bool_)
        if self.decided is None:
            self.decided = np.full(len(self), np.nan)

    @classmethod
    def empty(cls) -> "Records":
        f8, i8 = np.empty(0), np.empty(0, np.int8)
        return cls([], [], f8, i8, i8, f8, i8, i8, i8, f8, f8)

    def __len__(self) -> int:
        return len(self.policy_id)

    @property
    def keys(self) -> list[tuple[str, str]]:
        """(policy_id, segment) of each record."""
        return list(zip(self.policy_id, self.segment))

    def split(self, lo: int, hi: int, slot: np.ndarray, pane_s: float) -> tuple[ScoreBatch, FeedbackBatch]:
        """Records [lo, hi) as a score batch and a feedback batch, with their slots; a
        feedback's lag is in panes of `pane_s` from its decision's, -1 where the decision's
        time is unknown or after the feedback's (not counted by decision time)."""
        et = self.etype[lo:hi]
        s, f = et == SCORE_EVENT, et == FEEDBACK_EVENT
        cut = lambda col: col[lo:hi]  # noqa: E731
        scores = ScoreBatch(slot[s], cut(self.decision)[s], cut(self.tau)[s])
        feedback = FeedbackBatch(slot[f], cut(self.kind)[f], cut(self.source)[f], cut(self.decision)[f],
                                 cut(self.preferred)[f], cut(self.score)[f], cut(self.weight)[f],
                                 cut(self.pair)[f], cut(self.repeat)[f], _lag(cut(self.ts)[f], cut(self.decided)[f], pane_s))
        return scores, feedback


def _lag(ts: np.ndarray, decided: np.ndarray, pane_s: float) -> np.ndarray:
    """Panes from each decision's pane to its feedback's; -1 where unknown or negative."""
    lag = np.floor(ts / pane_s) - np.floor(decided / pane_s)
    return np.where(lag >= 0, lag, -1).astype(np.int64)  # NaN >= 0 is False
