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
envelope path. Here events are read from the batch's columns
(:class:`streams.columns.EventColumns`) by C-level `map`s and numpy, and so is the score
feedback joins when its scenario has one score or none (:func:`_joined`). Only feedback that
waits for its score, or whose scenario has several scores to choose from, takes a Python loop.
"""
from __future__ import annotations

import itertools
import math
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, compress
from operator import attrgetter, is_not

import numpy as np

from kernels.layout import FEEDBACK_EVENT, LIKE, OVERRIDE, SCORE_EVENT
from streams.columns import EventColumns, FeedbackFields
from streams.operators.dedup import Deduplicator
from streams.operators.join import Contexts, FeedbackJoin, Pending, pick
from streams.operators.records import DECISION, KIND, PREFERRED, SOURCE, Records

_LABELLED = {LIKE, OVERRIDE}.__contains__
_ABLATION = {**KIND, "abstain": KIND["like"]}  # without abstention handling an abstain counts as a like
_PENDING_FIELDS = attrgetter("ts", "kind", "source", "preferred", "weight", "pair", "repeat")
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
    score_pos = np.flatnonzero(batch.is_score)
    sids = list(map(batch.scenario_id.__getitem__, score_at := score_pos.tolist()))
    score_ts = batch.ts[batch.is_score]
    contexts = Contexts(batch.policy_id, batch.segment, batch.score, batch.tau, batch.decision, score_ts)
    batch_scores = _Scores(sids, score_at)
    table = _ContextTable(contexts)
    feedback = _Feedback()
    fbs = batch.feedback
    out.kinds = Counter(fbs.kind)
    kinds = KIND if abstention_handling else _ABLATION

    # feedback parked by earlier batches goes right after the first score of its scenario here
    released: dict[int, list[Pending]] = {}  # score index -> the feedback it releases, in order
    if join.has_waiting:
        for sid in join.waiting_among(batch_scores.first.keys()):
            released[batch_scores.first[sid]] = join.release(sid)
    parked: list[Pending] = []
    if len(fbs):
        fb_pos, fb_ts = np.flatnonzero(~batch.is_score), batch.ts[~batch.is_score]
        fb_sids = list(map(batch.scenario_id.__getitem__, fb_pos.tolist()))
        pair, repeat = _labels(fbs, fb_sids, fb_ts, join, kinds)
        joined = _joined(fb_sids, fb_pos, fb_ts, batch_scores, score_pos, join, table)
        owned = _with_context(fbs)
        waits = ~owned & (joined < 0)
        now = np.flatnonzero(~waits)  # feedback that has its context now: its own, or its score's
        row = joined[now]
        own = owned[now]
        row[own] = table.add_columns(_own_contexts(fbs.take(now[own].tolist())))
        at = now.tolist()  # of its own fields, its record takes these
        own_fields = (list(map(column.__getitem__, at)) for column in (fbs.kind, fbs.source, fbs.preferred, fbs.weight))
        feedback.add(fb_pos[now], fb_ts[now], *own_fields, pair[now], repeat[now], row, table.ts_of(joined[now]))
        for i in np.flatnonzero(waits).tolist():  # feedback that waits for its score (few)
            out.waiting += 1
            sid, pos = fb_sids[i], int(fb_pos[i])
            pending = Pending(sid, batch.event_id[pos], float(fb_ts[i]), fbs.kind[i], fbs.source[i],
                              fbs.preferred[i] or "", fbs.weight[i], int(pair[i]), bool(repeat[i]))
            j = batch_scores.after(sid, pos)
            if j is None:
                parked.append(pending)
            else:
                released.setdefault(j, []).append(pending)
    out.joined_late = feedback.add_released(released, score_pos, score_ts)
    out.scores = len(sids)
    join.add_scores(sids, contexts)
    join.park(parked)
    out.records = _records(batch, score_ts, score_pos, feedback, table, kinds)
    return out


def _joined(sids: list[str], pos: np.ndarray, ts: np.ndarray, here: _Scores, score_pos: np.ndarray,
            join: FeedbackJoin, table: _ContextTable) -> np.ndarray:
    """The row of `table` of the score each feedback event (scenario, position in the batch,
    event time) joins (:func:`streams.operators.join.pick`), -1 for none. Its candidates are its
    scenario's scores stored by earlier batches and those of this batch before it. With one
    candidate or none, the usual case, it is found by numpy (a stored one read into `table` as
    columns); a scenario with more goes through `pick`, and the one picked into `table`."""
    n = len(sids)
    first = np.fromiter(map(here.first.get, sids, itertools.repeat(-1)), np.int64, n)
    before = first >= 0
    before[before] = score_pos[first[before]] < pos[before]  # its scenario's first score here came before it
    latest, rescored = join.latest_of(sids)  # serial of its latest stored score (0: none); scored more than once
    stored = latest > 0
    joined = np.where(before & ~stored, first, -1)
    alone = ~before & stored & ~rescored
    several = (before & stored) | rescored
    if here.many:  # a scenario scored more than once in this batch may have several scores before it
        many = np.fromiter(map(here.many.__contains__, sids), np.bool_, n)
        joined[many], alone, several = -1, alone & ~many, several | many
    if alone.any():
        joined[alone] = table.add_columns(join.contexts_at(latest[alone]))
    at = np.flatnonzero(several).tolist()
    stored_of = join.scores_of(list(map(sids.__getitem__, at)))
    for i in at:
        sid = sids[i]
        candidates = stored_of.get(sid, []) + list(map(table.contexts.__getitem__, here.before(sid, int(pos[i]))))
        if candidates:
            joined[i] = table.add([pick(candidates, float(ts[i]))])[0]
    return joined


def _with_context(fbs: FeedbackFields) -> np.ndarray:
    """Whether each feedback row carries its decision's context whole: it needs no join."""
    n = len(fbs)
    owned = np.ones(n, np.bool_)
    for column in (fbs.policy_id, fbs.score, fbs.tau, fbs.decision):
        if column.count(None) == n:
            return np.zeros(n, np.bool_)
        owned &= np.fromiter(map(is_not, column, itertools.repeat(None)), np.bool_, n)
    return owned


def _own_contexts(fbs: FeedbackFields) -> tuple:
    """The contexts feedback carries, as columns of a joined score's (its decision's event time
    unknown)."""
    segment = [s or "default" for s in fbs.segment]
    return fbs.policy_id, segment, fbs.score, fbs.tau, fbs.decision, [math.nan] * len(fbs)


def _labels(fbs: FeedbackFields, sids: list[str], ts: np.ndarray, join: FeedbackJoin,
            kinds: dict) -> tuple[np.ndarray, np.ndarray]:
    """The audit-pair code each feedback row (its scenario, event time) completes on arrival
    (-1: none), and whether its scenario was labelled before, in log order; -1 and False for an
    abstention."""
    labels = list(map(kinds.__getitem__, fbs.kind))
    labelled = list(compress(range(len(fbs)), map(_LABELLED, labels)))
    pair, repeat = np.full(len(fbs), -1, np.int8), np.zeros(len(fbs), np.bool_)
    if labelled:
        codes, repeats = join.labels(list(map(sids.__getitem__, labelled)),
                                     list(map("audit".__eq__, map(fbs.source.__getitem__, labelled))),
                                     list(map(labels.__getitem__, labelled)), ts[labelled].tolist())
        pair[labelled], repeat[labelled] = codes, repeats
    return pair, repeat


class _ContextTable:
    """The contexts a batch's records take: its scores' (a row each, in order), then those that
    feedback brought or joined from elsewhere (stored scores, its own), added as rows."""

    def __init__(self, contexts: Contexts) -> None:
        self.contexts = contexts
        self.rows = len(contexts)
        self.more: list[tuple] = []  # added rows as columns (policy_id, segment, score, tau, decision, ts)

    def add(self, rows: list[tuple]) -> np.ndarray:
        """The row numbers of these contexts (6-tuples), added."""
        return self.add_columns(tuple(zip(*rows))) if rows else np.zeros(0, np.int64)

    def add_columns(self, columns: tuple) -> np.ndarray:
        """The row numbers of these contexts (as columns), added."""
        start = self.rows
        self.rows += len(columns[0])
        self.more.append(columns)
        return np.arange(start, self.rows)

    def ts_of(self, rows: np.ndarray) -> np.ndarray:
        """The event times of these rows' decisions (NaN for -1, or where unknown)."""
        return np.concatenate((self._column(5), [math.nan]))[rows]

    def columns(self) -> tuple:
        """(policy_id, segment, score, decision) of every row."""
        return self._column(0), self._column(1), self._column(2), self._column(4)

    def _column(self, c: int):
        base = self.contexts.columns[c]
        if not self.more:
            return base
        if isinstance(base, np.ndarray):
            return np.concatenate((base, *(np.asarray(m[c], np.float64) for m in self.more)))
        return list(chain(base, *(m[c] for m in self.more)))


class _Feedback:
    """Joined feedback as columns: its place in arrival order, its own fields (event time,
    kind, source, preferred, weight: from the batch's rows, or from Pending), its audit pair
    and repeat, its context (a row of the batch's _ContextTable) and its decision's event time."""

    _NAMES = ("order", "ts", "kind", "source", "preferred", "weight", "pair", "repeat", "context", "decided")
    _LISTS = {"kind", "source", "preferred", "weight"}  # the rest are arrays

    def __init__(self) -> None:
        self.parts: list[tuple] = []

    def add(self, order: np.ndarray, ts: np.ndarray, kind: list, source: list, preferred: list, weight: list,
            pair: np.ndarray, repeat: np.ndarray, context: np.ndarray, decided: np.ndarray) -> None:
        self.parts.append((order.astype(np.float64), ts, kind, source, preferred, weight, pair, repeat, context,
                           decided))

    def add_released(self, released: dict[int, list[Pending]], score_pos: np.ndarray, score_ts: np.ndarray) -> int:
        """Add the feedback each score releases (score index -> feedback), right after its score;
        how many."""
        if not released:
            return 0
        at = sorted(released)
        scores = np.repeat(np.array(at, np.int64), [len(released[j]) for j in at])
        pending = [p for j in at for p in released[j]]
        ts, kind, source, preferred, weight, pair, repeat = map(list, zip(*map(_PENDING_FIELDS, pending)))
        self.add(score_pos[scores] + 0.5, np.array(ts, np.float64), kind, source, preferred, weight,
                 np.array(pair, np.int8), np.array(repeat, np.bool_), scores, score_ts[scores])
        return len(pending)

    def columns(self) -> dict:
        """Each column in one piece, by name."""
        return {name: list(chain.from_iterable(part[c] for part in self.parts)) if name in self._LISTS
                else np.concatenate([part[c] for part in self.parts]) for c, name in enumerate(self._NAMES)}

    def __len__(self) -> int:
        return sum(len(part[0]) for part in self.parts)


def _records(batch: EventColumns, score_ts: np.ndarray, score_pos: np.ndarray, feedback: _Feedback,
             table: _ContextTable, kinds: dict) -> Records:
    """Score rows (from the batch's columns) and feedback rows merged into arrival order,
    released feedback right after its score. Score rows' constant fields are numpy fills;
    feedback rows' contexts are gathered from `table`, and only their own fields go through
    Python lists."""
    n_s, n_f = len(score_pos), len(feedback)
    if not n_s + n_f:
        return Records.empty()
    fill = lambda value, dtype: np.full(n_s, value, dtype)  # noqa: E731
    i8 = lambda values: np.fromiter(values, np.int8)  # noqa: E731
    columns = {"ts": score_ts, "tau": batch.tau.copy(), "kind": fill(0, np.int8), "source": fill(0, np.int8),
               "preferred": fill(0, np.int8), "weight": fill(1.0, np.float64), "pair": fill(-1, np.int8),
               "repeat": fill(False, np.bool_), "decided": score_ts.copy(), "etype": fill(SCORE_EVENT, np.int8)}
    rows = np.arange(n_s)  # each record's row of `table`
    if n_f:
        f = feedback.columns()
        more = {"ts": f["ts"], "tau": np.zeros(n_f), "kind": i8(map(kinds.__getitem__, f["kind"])),
                "source": i8(map(SOURCE.__getitem__, f["source"])),
                "preferred": i8(map(PREFERRED.__getitem__, f["preferred"])),
                "weight": np.array(f["weight"], np.float64), "pair": f["pair"], "repeat": f["repeat"],
                "decided": f["decided"], "etype": np.full(n_f, FEEDBACK_EVENT, np.int8)}
        arrival = np.argsort(np.concatenate((score_pos.astype(np.float64), f["order"])), kind="stable")
        columns = {name: np.concatenate((column, more[name]))[arrival] for name, column in columns.items()}
        rows = np.concatenate((rows, f["context"]))[arrival]
    policy, segment, score, decision = table.columns()
    at = rows.tolist()
    return Records(list(map(policy.__getitem__, at)), list(map(segment.__getitem__, at)), columns["ts"],
                   columns["etype"], i8(map(DECISION.__getitem__, map(decision.__getitem__, at))), columns["tau"],
                   columns["kind"], columns["source"], columns["preferred"], score[rows], columns["weight"],
                   columns["pair"], columns["repeat"], columns["decided"])
