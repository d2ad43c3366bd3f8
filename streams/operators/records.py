"""Records: de-duplicated, joined events in arrival order, as columns for the kernels."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels.batch import FeedbackBatch, ScoreBatch
from kernels.layout import DECISIONS, FEEDBACK_EVENT, KINDS, PREFERRED, SCORE_EVENT, SOURCES

_DECISION = {d: i for i, d in enumerate(DECISIONS)}
_KIND = {k: i for i, k in enumerate(KINDS)}
_SOURCE = {s: i for i, s in enumerate(SOURCES)}
_PREFERRED = {p: i for i, p in enumerate(PREFERRED)}
_PREFERRED[None] = 0


@dataclass
class Records:
    """One entry per event: key, event time, type, and the fields the kernels read."""

    keys: list
    ts: np.ndarray
    etype: np.ndarray
    decision: np.ndarray
    tau: np.ndarray
    kind: np.ndarray
    source: np.ndarray
    preferred: np.ndarray
    score: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def split(self, lo: int, hi: int, slot: np.ndarray) -> tuple[ScoreBatch, FeedbackBatch]:
        """Records [lo, hi) as a score batch and a feedback batch, with their slots."""
        et = self.etype[lo:hi]
        s, f = et == SCORE_EVENT, et == FEEDBACK_EVENT
        cut = lambda col: col[lo:hi]  # noqa: E731
        scores = ScoreBatch(slot[s], cut(self.decision)[s], cut(self.tau)[s])
        feedback = FeedbackBatch(slot[f], cut(self.kind)[f], cut(self.source)[f], cut(self.decision)[f],
                                 cut(self.preferred)[f], cut(self.score)[f], cut(self.weight)[f])
        return scores, feedback


class RecordBuilder:
    """Appends events one at a time (after de-duplication and join), then builds columns."""

    def __init__(self) -> None:
        self._rows: list[tuple] = []

    def score_event(self, key, ts: float, decision: str, tau: float, score: float,
                    _decision=_DECISION) -> None:
        self._rows.append((key, ts, SCORE_EVENT, _decision[decision], tau, 0, 0, 0, score, 1.0))

    def feedback_event(self, key, ts: float, kind: str, source: str, decision: str, preferred, score: float,
                       weight: float) -> None:
        self._rows.append((key, ts, FEEDBACK_EVENT, _DECISION[decision], 0.0, _KIND[kind], _SOURCE[source],
                           _PREFERRED[preferred or None], score, weight))

    def __len__(self) -> int:
        return len(self._rows)

    def build(self) -> Records:
        """Columns of everything appended so far; the builder starts empty again."""
        rows, self._rows = self._rows, []
        if not rows:
            z = np.empty(0)
            return Records([], z, z.astype(np.int8), z.astype(np.int8), z, z.astype(np.int8), z.astype(np.int8),
                           z.astype(np.int8), z, z)
        keys, ts, etype, decision, tau, kind, source, preferred, score, weight = zip(*rows)
        i8 = lambda xs: np.array(xs, dtype=np.int8)  # noqa: E731
        f8 = lambda xs: np.array(xs, dtype=np.float64)  # noqa: E731
        return Records(list(keys), f8(ts), i8(etype), i8(decision), f8(tau), i8(kind), i8(source), i8(preferred),
                       f8(score), f8(weight))
