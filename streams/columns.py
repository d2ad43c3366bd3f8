"""A batch of decoded events as columns: what the operators take.

Why columns: a batch decoded from a columnar envelope (:mod:`streams.columnar`) never becomes
an object per event, and the operators read rows straight from these lists and arrays,
feedback's own fields too (:class:`FeedbackFields`). JSON events are put into the same shape
(:meth:`EventColumns.of_events`), so there is one ingest path for both wire formats.

>>> from streams.events import ScoreEvent
>>> s = ScoreEvent(v=1, event_id="e1", scenario_id="s1", policy_id="p", score=0.7, tau=0.5,
...                decision="act", ts=10.0)
>>> batch = EventColumns.of_events([s, s])
>>> len(batch), batch.policy_id, batch.score.tolist()
(2, ['p', 'p'], [0.7, 0.7])
>>> batch.without([0]).event_id
['e1']
>>> f = FeedbackEvent(v=1, event_id="f1", scenario_id="s1", ts=11.0, kind="like")
>>> both = EventColumns.of_events([s, f])
>>> both.feedback.kind, both.feedback.weight, both.feedback_events() == [f]
(['like'], [1.0], True)
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from itertools import chain, compress
from operator import attrgetter, not_

import numpy as np

from streams.events import FeedbackEvent, ScoreEvent

_EVENT_ID, _SCENARIO_ID, _TS = attrgetter("event_id"), attrgetter("scenario_id"), attrgetter("ts")
_POLICY, _SEGMENT, _DECISION = attrgetter("policy_id"), attrgetter("segment"), attrgetter("decision")
_SCORE, _TAU, _MODEL_VERSION = attrgetter("score"), attrgetter("tau"), attrgetter("model_version")


@dataclass
class FeedbackFields:
    """The feedback rows' own fields, a list each, in their order: a field's default where a
    row was sent without it (source, weight), None for the decision's context it does not
    carry (and for no `preferred`)."""

    kind: list[str]
    source: list[str]
    preferred: list[str | None]
    weight: list[float]
    policy_id: list[str | None]
    segment: list[str | None]
    score: list[float | None]
    tau: list[float | None]
    decision: list[str | None]

    def __len__(self) -> int:
        return len(self.kind)

    @classmethod
    def of_events(cls, events: list[FeedbackEvent]) -> FeedbackFields:
        return cls(*(list(map(attrgetter(name), events)) for name in _FEEDBACK_FIELDS))

    @classmethod
    def concat(cls, parts: list[FeedbackFields]) -> FeedbackFields:
        return cls(*(list(chain.from_iterable(getattr(p, name) for p in parts)) for name in _FEEDBACK_FIELDS))

    def without(self, positions: list[int]) -> FeedbackFields:
        """These fields less the rows at `positions` (increasing)."""
        return FeedbackFields(*(_without(getattr(self, name), positions) for name in _FEEDBACK_FIELDS))

    def take(self, rows: list[int]) -> FeedbackFields:
        """The fields of these rows, in that order."""
        return FeedbackFields(*(list(map(getattr(self, name).__getitem__, rows)) for name in _FEEDBACK_FIELDS))


_FEEDBACK_FIELDS = tuple(f.name for f in fields(FeedbackFields))


@dataclass
class EventColumns:
    """Events in arrival order. Every row has `is_score`, `event_id`, `scenario_id` and `ts`;
    the score rows, in their order, have `policy_id` .. `model_version`; the feedback rows, in
    theirs, have `feedback`."""

    is_score: np.ndarray  # bool, a row each
    event_id: list[str]
    scenario_id: list[str]
    ts: np.ndarray  # float64, a row each
    policy_id: list[str]  # a score row each, from here on
    segment: list[str]
    score: np.ndarray  # float64
    tau: np.ndarray  # float64
    decision: list[str]
    model_version: list[str | None]  # not read by the operators; kept so that no field is lost
    feedback: FeedbackFields  # a feedback row each

    def __len__(self) -> int:
        return len(self.event_id)

    @classmethod
    def empty(cls) -> EventColumns:
        return cls(np.zeros(0, np.bool_), [], [], np.zeros(0), [], [], np.zeros(0), np.zeros(0), [], [],
                   FeedbackFields(*([] for _ in _FEEDBACK_FIELDS)))

    @classmethod
    def of_events(cls, events: list) -> EventColumns:
        """Score and feedback events (Structs), in arrival order, as columns (a C-level `map`
        a field: reading a row's fields as one tuple and transposing costs more)."""
        is_score = [type(ev) is ScoreEvent for ev in events]
        scores = list(compress(events, is_score))
        n, n_scores = len(events), len(scores)
        return cls(np.array(is_score, np.bool_), list(map(_EVENT_ID, events)), list(map(_SCENARIO_ID, events)),
                   np.fromiter(map(_TS, events), np.float64, n), list(map(_POLICY, scores)),
                   list(map(_SEGMENT, scores)), np.fromiter(map(_SCORE, scores), np.float64, n_scores),
                   np.fromiter(map(_TAU, scores), np.float64, n_scores), list(map(_DECISION, scores)),
                   list(map(_MODEL_VERSION, scores)),
                   FeedbackFields.of_events(list(compress(events, map(not_, is_score)))))

    @classmethod
    def concat(cls, parts: list[EventColumns]) -> EventColumns:
        """The rows of `parts`, one after another."""
        parts = [p for p in parts if len(p)]
        if len(parts) < 2:
            return parts[0] if parts else cls.empty()
        lists = {name: list(chain.from_iterable(getattr(p, name) for p in parts))
                 for name in ("event_id", "scenario_id", "policy_id", "segment", "decision", "model_version")}
        arrays = {name: np.concatenate([getattr(p, name) for p in parts])
                  for name in ("is_score", "ts", "score", "tau")}
        return cls(**lists, **arrays, feedback=FeedbackFields.concat([p.feedback for p in parts]))

    def feedback_events(self) -> list[FeedbackEvent]:
        """The feedback rows as events (for callers that want objects)."""
        rows = np.flatnonzero(~self.is_score).tolist()
        f, ts = self.feedback, self.ts.tolist()
        return [FeedbackEvent(v=1, event_id=self.event_id[i], scenario_id=self.scenario_id[i], ts=ts[i], kind=kind,
                              source=source, preferred=preferred, weight=weight, policy_id=policy_id,
                              segment=segment, score=score, tau=tau, decision=decision)
                for i, kind, source, preferred, weight, policy_id, segment, score, tau, decision
                in zip(rows, *(getattr(f, name) for name in _FEEDBACK_FIELDS))]

    def without(self, rows: np.ndarray) -> EventColumns:
        """The batch less these rows (positions in increasing order). Made for the few a batch
        loses to de-duplication: each list is copied and the rows deleted from it, which costs
        far less than gathering the rows that stay."""
        at = np.asarray(rows, np.intp)
        scores_before = np.cumsum(self.is_score) - self.is_score  # a row's place among the scores
        gone_scores = scores_before[at[self.is_score[at]]].tolist()
        gone_feedback = (at - scores_before[at])[~self.is_score[at]].tolist()
        rows = at.tolist()
        return EventColumns(np.delete(self.is_score, at), _without(self.event_id, rows),
                            _without(self.scenario_id, rows), np.delete(self.ts, at),
                            _without(self.policy_id, gone_scores), _without(self.segment, gone_scores),
                            np.delete(self.score, gone_scores), np.delete(self.tau, gone_scores),
                            _without(self.decision, gone_scores), _without(self.model_version, gone_scores),
                            self.feedback.without(gone_feedback))


def _without(values: list, positions: list[int]) -> list:
    """A copy of `values` less those at `positions` (increasing)."""
    out = list(values)
    for i in reversed(positions):
        del out[i]
    return out
