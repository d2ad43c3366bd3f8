"""From decoded events to records: de-duplicate, join feedback to its score, keep arrival order.

The result is exactly what taking the events one at a time would give:

- an event id counts once (per event type) within the de-duplication horizon;
- feedback that carries its decision's context is scored with it (and takes its decision's
  event time from the score it would join, if one came before it);
- other feedback joins, of the scores of its scenario that arrived before it (in this batch,
  or an earlier one through the join store), the one with the latest event time at or before
  its own, else the earliest (:func:`streams.operators.join.pick`); with none, it waits for
  the next score of its scenario (in this batch, or parked in the store), and its record then
  comes right after that score's;
- labelled feedback that completes its scenario's audit pair on arrival (the first audit
  label and the first label of another channel) carries the pair's code in its record, and
  labelled feedback on a scenario labelled before is marked a repeat, wherever that record
  lands (:meth:`streams.operators.join.FeedbackJoin.labels`).

Why column at a time: a Python loop over every event cost about 5 µs an event, most of the
envelope path. Here scores (most events) are read from the batch's columns
(:class:`streams.columns.EventColumns`) by C-level `map`s and numpy; only feedback takes a
Python loop.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from itertools import compress
from operator import attrgetter

import numpy as np

from kernels.layout import FEEDBACK_EVENT, LIKE, OVERRIDE, SCORE_EVENT
from streams.columns import EventColumns
from streams.operators.dedup import Deduplicator
from streams.operators.join import Contexts, FeedbackJoin, Pending, pick
from streams.operators.records import DECISION, KIND, PREFERRED, SOURCE, Records

_SCENARIO_ID, _TS = attrgetter("scenario_id"), attrgetter("ts")
_KIND, _SOURCE = attrgetter("kind"), attrgetter("source")
_LABELLED = {LIKE, OVERRIDE}.__contains__
_ABLATION = {**KIND, "abstain": KIND["like"]}  # without abstention handling an abstain counts as a like
_OWN_CONTEXT = attrgetter("policy_id", "score", "tau", "decision")  # all set: feedback needs no join
_FEEDBACK_FIELDS = attrgetter("ts", "kind", "source", "preferred", "weight")
_UNLABELLED = (-1, False)
_ID_PREFIX = (b"f:", b"s:")  # by "is a score": score and feedback ids are separate namespaces


@dataclass
class Ingested:
    """A batch's records and what happened to its events on the way."""

    records: Records
    duplicates: int = 0
    scores: int = 0
    kinds: Counter = field(default_factory=Counter)  # accepted feedback, by kind
    joined_late: int = 0  # feedback released by a score that arrived after it
    waiting: int = 0  # feedback that had to wait for its score


class _Scores:
    """Where each scenario's scores are in the batch, for "those before" and "the first after"."""

    def __init__(self, sids: list[str], positions: list[int]) -> None:
        self.positions = positions
        self.first = dict(zip(reversed(sids), range(len(sids) - 1, -1, -1)))
        self.many: dict[str, list[int]] = {}  # scenarios scored more than once in the batch (rare)
        if len(self.first) < len(sids):
            seen: dict[str, list[int]] = {}
            for j, sid in enumerate(sids):
                seen.setdefault(sid, []).append(j)
            self.many = {sid: js for sid, js in seen.items() if len(js) > 1}

    def before(self, sid: str, pos: int) -> list[int]:
        """Indexes of the scores of `sid` before position `pos`, in arrival order."""
        js = self.many.get(sid)
        if js is None:
            j = self.first.get(sid)
            return [j] if j is not None and self.positions[j] < pos else []
        return js[:bisect_left([self.positions[j] for j in js], pos)]

    def after(self, sid: str, pos: int) -> int | None:
        """Index of the first score of `sid` after position `pos`."""
        js = self.many.get(sid)
        if js is None:
            j = self.first.get(sid)
            return j if j is not None and self.positions[j] > pos else None
        k = bisect_left([self.positions[j] for j in js], pos)
        return js[k] if k < len(js) else None


def ingest(batch: EventColumns, dedup: Deduplicator, join: FeedbackJoin, abstention_handling: bool = True) -> Ingested:
    """Records of `batch` (decoded events in arrival order), with the join store updated."""
    kept = dedup.fresh_positions(batch.event_id, batch.ts, _ID_PREFIX, batch.is_score)
    out = Ingested(Records.empty(), duplicates=len(batch) - len(kept))
    if len(kept) < len(batch):
        duplicate = np.ones(len(batch), np.bool_)
        duplicate[kept] = False
        batch = batch.without(np.flatnonzero(duplicate))
    score_pos = np.flatnonzero(batch.is_score).tolist()
    sids = list(map(batch.scenario_id.__getitem__, score_pos))
    score_ts = batch.ts[batch.is_score]
    contexts = Contexts(batch.policy_id, batch.segment, batch.score, batch.tau, batch.decision, score_ts)
    batch_scores = _Scores(sids, score_pos)

    # feedback parked by earlier batches goes right after the first score of its scenario here
    released_from_store: dict[int, list[Pending]] = {}
    if join.has_waiting:
        for sid in join.waiting_among(batch_scores.first.keys()):
            released_from_store[batch_scores.first[sid]] = join.release(sid)
    waiting_here: dict[int, list[tuple[int, Pending]]] = {}  # score index -> (position, feedback)
    parked: list[Pending] = []
    feedback = _Feedback()
    fb_pos = np.flatnonzero(~batch.is_score).tolist()
    fbs = batch.feedback
    out.kinds = Counter(map(_KIND, fbs))
    kinds = KIND if abstention_handling else _ABLATION
    bare, owned = [], []  # (position, event, (pair code, repeat)) of feedback without / with its context
    for pos, ev, label, own in zip(fb_pos, fbs, _labels(fbs, join, kinds), map(_OWN_CONTEXT, fbs)):
        (bare if None in own else owned).append((pos, ev, label))
    stored = join.scores_of([ev.scenario_id for _, ev, _ in bare + owned])

    def joins(sid: str, pos: int, ts: float):
        """The score feedback at `pos` with event time `ts` joins, or None."""
        candidates = stored.get(sid, [])
        here = batch_scores.before(sid, pos)
        if here:
            candidates = candidates + list(map(contexts.__getitem__, here))
        return pick(candidates, ts) if candidates else None

    for pos, ev, label in owned:
        ctx = joins(ev.scenario_id, pos, ev.ts)
        feedback.add(pos, ev, label, (ev.policy_id, ev.segment or "default", ev.score, ev.tau, ev.decision,
                                      math.nan if ctx is None else ctx[5]))
    for pos, ev, label in bare:
        sid = ev.scenario_id
        ctx = joins(sid, pos, ev.ts)
        if ctx is not None:
            feedback.add(pos, ev, label, ctx)
            continue
        out.waiting += 1
        pending = Pending(sid, ev.event_id, ev.ts, ev.kind, ev.source, ev.preferred or "", ev.weight, *label)
        j = batch_scores.after(sid, pos)
        if j is None:
            parked.append(pending)
        else:
            waiting_here.setdefault(j, []).append((pos, pending))
    for j in sorted(released_from_store.keys() | waiting_here.keys()):
        released = released_from_store.get(j, []) + [p for _, p in waiting_here.get(j, [])]
        out.joined_late += len(released)
        for p in released:
            feedback.add(score_pos[j] + 0.5, p, (p.pair, p.repeat), contexts[j])

    out.scores = len(sids)
    join.add_scores(sids, contexts)
    join.park(parked)
    out.records = _records(batch, score_ts, score_pos, feedback, kinds)
    return out


def _labels(fbs: list, join: FeedbackJoin, kinds: dict) -> list[tuple[int, bool]]:
    """(audit-pair code it completes on arrival or -1, whether its scenario was labelled
    before) of each feedback event, in log order; (-1, False) for an abstention."""
    labels = list(map(kinds.__getitem__, map(_KIND, fbs)))
    labelled = list(compress(range(len(fbs)), map(_LABELLED, labels)))
    out = [_UNLABELLED] * len(fbs)
    if labelled:
        events = list(map(fbs.__getitem__, labelled))
        codes, repeats = join.labels(list(map(_SCENARIO_ID, events)), list(map("audit".__eq__, map(_SOURCE, events))),
                                     list(map(labels.__getitem__, labelled)), list(map(_TS, events)))
        for i, code, repeat in zip(labelled, codes, repeats):
            out[i] = (code, repeat)
    return out


class _Feedback:
    """Joined feedback: its place in arrival order, its own fields, and its decision's context."""

    def __init__(self) -> None:
        self.order: list[float] = []
        self.own: list = []  # events, or Pending (both have the fields of _FEEDBACK_FIELDS)
        self.pair: list[int] = []
        self.repeat: list[bool] = []
        self.contexts: list[tuple] = []  # (policy_id, segment, score, tau, decision, decision's ts)

    def add(self, order: float, own, label: tuple[int, bool], ctx: tuple) -> None:
        self.order.append(order)
        self.own.append(own)
        self.pair.append(label[0])
        self.repeat.append(label[1])
        self.contexts.append(ctx)

    def __len__(self) -> int:
        return len(self.order)


def _records(batch: EventColumns, score_ts: np.ndarray, score_pos: list[int], feedback: _Feedback,
             kinds: dict) -> Records:
    """Score rows (from the batch's columns) and feedback rows merged into arrival order,
    released feedback right after its score. Score rows' constant fields are numpy fills; only
    the feedback rows' own fields go through Python lists."""
    n_s, n_f = len(score_pos), len(feedback)
    if not n_s + n_f:
        return Records.empty()
    f8 = lambda values: np.array(values, np.float64)  # noqa: E731
    i8 = lambda values: np.array(values, np.int8)  # noqa: E731
    fill = lambda value, dtype: np.full(n_s, value, dtype)  # noqa: E731
    columns = {"ts": score_ts, "decision": i8(list(map(DECISION.__getitem__, batch.decision))),
               "tau": batch.tau.copy(), "kind": fill(0, np.int8), "source": fill(0, np.int8),
               "preferred": fill(0, np.int8), "score": batch.score.copy(), "weight": fill(1.0, np.float64),
               "pair": fill(-1, np.int8), "repeat": fill(False, np.bool_), "decided": score_ts.copy(),
               "etype": fill(SCORE_EVENT, np.int8)}
    policy, segment = batch.policy_id, batch.segment
    if n_f:
        f_policy, f_segment, f_score, _, f_decision, f_decided = zip(*feedback.contexts)
        f_ts, f_kind, f_source, f_preferred, f_weight = zip(*map(_FEEDBACK_FIELDS, feedback.own))
        more = {"ts": f8(f_ts), "decision": i8(list(map(DECISION.__getitem__, f_decision))),
                "tau": np.zeros(n_f), "kind": i8(list(map(kinds.__getitem__, f_kind))),
                "source": i8(list(map(SOURCE.__getitem__, f_source))),
                "preferred": i8(list(map(PREFERRED.__getitem__, f_preferred))), "score": f8(f_score),
                "weight": f8(f_weight), "pair": i8(feedback.pair), "repeat": np.array(feedback.repeat, np.bool_),
                "decided": f8(f_decided), "etype": np.full(n_f, FEEDBACK_EVENT, np.int8)}
        columns = {name: np.concatenate((column, more[name])) for name, column in columns.items()}
        arrival = np.argsort(np.array(score_pos + feedback.order, np.float64), kind="stable")
        order = arrival.tolist()
        policy = list(map([*policy, *f_policy].__getitem__, order))
        segment = list(map([*segment, *f_segment].__getitem__, order))
        columns = {name: column[arrival] for name, column in columns.items()}
    return Records(policy, segment, columns["ts"], columns["etype"], columns["decision"], columns["tau"],
                   columns["kind"], columns["source"], columns["preferred"], columns["score"], columns["weight"],
                   columns["pair"], columns["repeat"], columns["decided"])
