"""From decoded events to records: de-duplicate, join feedback to its score, keep arrival order.

The result is exactly what taking the events one at a time would give:

- an event id counts once (per event type) within the de-duplication horizon;
- feedback that carries its decision's context is scored with it;
- other feedback joins the latest score of its scenario that arrived before it (in this
  batch, or an earlier one through the join store); with none, it waits for the next score
  of its scenario (in this batch, or parked in the store), and its record then comes right
  after that score's.

Why column at a time: a Python loop over every event cost about 5 µs an event, most of the
envelope path. Here scores (most events) are handled by C-level `map`s and numpy; only
feedback takes a Python loop.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from itertools import compress
from operator import attrgetter, not_

import numpy as np

from kernels.layout import FEEDBACK_EVENT, SCORE_EVENT
from streams.events import ScoreEvent
from streams.operators.dedup import Deduplicator
from streams.operators.join import FeedbackJoin, Pending
from streams.operators.records import DECISION, KIND, PREFERRED, SOURCE, Records

_SCORE_CONTEXT = attrgetter("policy_id", "segment", "score", "tau", "decision", "ts")
_EVENT_ID, _SCENARIO_ID, _TS = attrgetter("event_id"), attrgetter("scenario_id"), attrgetter("ts")
_ID_PREFIX = ("f:", "s:")  # by "is a score": score and feedback ids are separate namespaces


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
    """Where each scenario's scores are in the batch, for "the latest before" and "the first after"."""

    def __init__(self, sids: list[str], positions: list[int]) -> None:
        self.positions = positions
        self.first = dict(zip(reversed(sids), range(len(sids) - 1, -1, -1)))
        self.many: dict[str, list[int]] = {}  # scenarios scored more than once in the batch (rare)
        if len(self.first) < len(sids):
            seen: dict[str, list[int]] = {}
            for j, sid in enumerate(sids):
                seen.setdefault(sid, []).append(j)
            self.many = {sid: js for sid, js in seen.items() if len(js) > 1}

    def before(self, sid: str, pos: int) -> int | None:
        """Index of the latest score of `sid` before position `pos`."""
        js = self.many.get(sid)
        if js is None:
            j = self.first.get(sid)
            return j if j is not None and self.positions[j] < pos else None
        k = bisect_left([self.positions[j] for j in js], pos)
        return js[k - 1] if k else None

    def after(self, sid: str, pos: int) -> int | None:
        """Index of the first score of `sid` after position `pos`."""
        js = self.many.get(sid)
        if js is None:
            j = self.first.get(sid)
            return j if j is not None and self.positions[j] > pos else None
        k = bisect_left([self.positions[j] for j in js], pos)
        return js[k] if k < len(js) else None


def ingest(events: list, dedup: Deduplicator, join: FeedbackJoin, abstention_handling: bool = True) -> Ingested:
    """Records of `events` (decoded, in arrival order), with the join store updated."""
    is_score = [type(ev) is ScoreEvent for ev in events]
    ids = list(map(str.__add__, map(_ID_PREFIX.__getitem__, is_score), map(_EVENT_ID, events)))
    kept = dedup.fresh(ids, list(map(_TS, events)))
    out = Ingested(Records.empty(), duplicates=len(events) - len(kept))
    if len(kept) < len(events):
        events = list(map(events.__getitem__, kept))
        is_score = list(map(is_score.__getitem__, kept))
    score_pos = list(compress(range(len(events)), is_score))
    scores = list(map(events.__getitem__, score_pos))
    sids = list(map(_SCENARIO_ID, scores))
    contexts = list(map(_SCORE_CONTEXT, scores))
    batch = _Scores(sids, score_pos)
    feedback = _Feedback(abstention_handling)

    # feedback parked by earlier batches goes right after the first score of its scenario here
    released_from_store: dict[int, list[Pending]] = {}
    if join.has_waiting:
        for sid in join.waiting_among(batch.first.keys()):
            released_from_store[batch.first[sid]] = join.release(sid)
    waiting_here: dict[int, list[tuple[int, Pending]]] = {}  # score index -> (position, feedback)
    parked: list[Pending] = []
    fb_pos = list(compress(range(len(events)), map(not_, is_score)))
    bare = []  # (position, event) of feedback without its context nor an earlier score here
    for pos in fb_pos:
        ev = events[pos]
        out.kinds[ev.kind] += 1
        if ev.policy_id is not None and ev.score is not None and ev.tau is not None and ev.decision is not None:
            feedback.add(pos, ev, (ev.policy_id, ev.segment or "default", ev.score, ev.tau, ev.decision))
            continue
        j = batch.before(ev.scenario_id, pos)
        if j is not None:
            feedback.add(pos, ev, contexts[j])
        else:
            bare.append((pos, ev))
    stored = join.lookup([ev.scenario_id for _, ev in bare])
    for (pos, ev), ctx in zip(bare, stored):
        if ctx is not None:
            feedback.add(pos, ev, ctx)
            continue
        out.waiting += 1
        pending = Pending(ev.scenario_id, ev.event_id, ev.ts, ev.kind, ev.source, ev.preferred or "", ev.weight)
        j = batch.after(ev.scenario_id, pos)
        if j is None:
            parked.append(pending)
        else:
            waiting_here.setdefault(j, []).append((pos, pending))
    for j in sorted(released_from_store.keys() | waiting_here.keys()):
        released = released_from_store.get(j, []) + [p for _, p in waiting_here.get(j, [])]
        out.joined_late += len(released)
        for p in released:
            feedback.add_pending(score_pos[j] + 0.5, p, contexts[j])

    out.scores = len(scores)
    join.add_scores(sids, contexts)
    join.park(parked)
    out.records = _records(contexts, score_pos, feedback)
    return out


class _Feedback:
    """Feedback records, one row at a time (feedback is the smaller part of the traffic)."""

    def __init__(self, abstention_handling: bool) -> None:
        self.rows: list[tuple] = []
        self.kind = dict(KIND)
        if not abstention_handling:  # the ablation: an abstention counts as a like
            self.kind["abstain"] = KIND["like"]

    def add(self, order: float, ev, ctx: tuple) -> None:
        self.rows.append((order, (ctx[0], ctx[1]), ev.ts, DECISION[ctx[4]], self.kind[ev.kind], SOURCE[ev.source],
                          PREFERRED[ev.preferred], ctx[2], ev.weight))

    def add_pending(self, order: float, p: Pending, ctx: tuple) -> None:
        self.rows.append((order, (ctx[0], ctx[1]), p.ts, DECISION[ctx[4]], self.kind[p.kind], SOURCE[p.source],
                          PREFERRED[p.preferred or None], ctx[2], p.weight))


def _records(contexts: list[tuple], score_pos: list[int], feedback: _Feedback) -> Records:
    """Score rows (from their contexts) and feedback rows merged into arrival order, released
    feedback right after its score."""
    n_s, n_f = len(contexts), len(feedback.rows)
    if not n_s + n_f:
        return Records.empty()
    if n_s:
        policy, segment, score, tau, decision, ts = zip(*contexts)  # one C-level pass
        keys = list(zip(policy, segment))
        decision = list(map(DECISION.__getitem__, decision))
    else:
        keys, score, tau, decision, ts = [], (), (), [], ()
    order, kind, source, preferred, weight = score_pos, [0] * n_s, [0] * n_s, [0] * n_s, [1.0] * n_s
    if n_f:
        f_order, f_keys, f_ts, f_dec, f_kind, f_src, f_pref, f_score, f_weight = zip(*feedback.rows)
        order, keys, ts, decision, score = order + list(f_order), keys + list(f_keys), ts + f_ts, \
            decision + list(f_dec), score + f_score
        tau, kind, source, preferred, weight = tau + (0.0,) * n_f, kind + list(f_kind), source + list(f_src), \
            preferred + list(f_pref), weight + list(f_weight)
    etype = np.repeat(np.array([SCORE_EVENT, FEEDBACK_EVENT], np.int8), [n_s, n_f])
    arrival = np.argsort(np.array(order, np.float64), kind="stable")
    f8 = lambda values: np.array(values, np.float64)[arrival]  # noqa: E731
    i8 = lambda values: np.array(values, np.int8)[arrival]  # noqa: E731
    return Records(list(map(keys.__getitem__, arrival.tolist())), f8(ts), etype[arrival], i8(decision), f8(tau),
                   i8(kind), i8(source), i8(preferred), f8(score), f8(weight))
