"""The column-at-a-time ingest against a brute-force, one-event-at-a-time reference.

The reference is the join's contract written as plainly as possible: an id counts once,
feedback with its context is scored with it, other feedback takes, of the scores of its
scenario received before it, the latest at or before its event time (else the earliest), or
waits for the next one and then comes right after it; the first audit label and the first
other-channel label of a scenario make its one audit pair, whose code the second of them
carries; every label of a scenario after its first is a repeat. Hypothesis draws adversarial streams: few scenarios (re-scored scenarios out of
event-time order, feedback on both sides of its score, several feedback per scenario, every
source), repeated ids, and any cut into batches.
"""
from __future__ import annotations

import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import codec, columnar
from streams.columns import EventColumns
from streams.events import FeedbackEvent, ScoreEvent
from streams.operators.dedup import Deduplicator
from streams.operators.ingest import ingest
from streams.operators.join import FeedbackJoin
from kernels.layout import PAIR_AGREE, PAIR_AUDIT_OVERRIDES, PAIR_CHANNEL_OVERRIDES
from streams.operators.records import DECISION, KIND, PREFERRED, SOURCE

T0 = 1_767_225_600.0


def reference(events, abstention_handling=True) -> list[tuple]:
    """Rows (key, ts, etype, decision, tau, kind, source, preferred, score, weight, (pair, repeat),
    decision's event time (None: unknown)), one event at a time."""
    seen, scores, waiting, rows = set(), {}, {}, []
    first_label = {}  # (scenario, is audit) -> first label
    labelled = set()  # scenarios labelled so far

    def label_of(fb):
        """(the pair this feedback completes on arrival, if any (-1), whether a label came before)."""
        if kind_of(fb) not in ("like", "override"):
            return -1, False
        repeat = fb.scenario_id in labelled
        labelled.add(fb.scenario_id)
        return pair_code(fb), repeat

    def kind_of(fb):
        return "like" if fb.kind == "abstain" and not abstention_handling else fb.kind

    def pair_code(fb):
        """The pair this feedback completes on arrival, if any (-1)."""
        kind, audit = kind_of(fb), fb.source == "audit"
        if kind not in ("like", "override") or (fb.scenario_id, audit) in first_label:
            return -1
        first_label[fb.scenario_id, audit] = kind
        other = first_label.get((fb.scenario_id, not audit))
        if other is None:
            return -1
        audit_kind, channel_kind = (kind, other) if audit else (other, kind)
        if audit_kind == channel_kind:
            return PAIR_AGREE
        return PAIR_AUDIT_OVERRIDES if audit_kind == "override" else PAIR_CHANNEL_OVERRIDES

    def joined(fb):
        """Of the scores received, the latest at or before the feedback, else the earliest
        (equal event times: the later received counts as later)."""
        received = scores[fb.scenario_id]
        before = [(ts, i) for i, (ts, _) in enumerate(received) if ts <= fb.ts]
        return received[max(before)[1] if before else min((ts, i) for i, (ts, _) in enumerate(received))[1]]

    def feedback_row(fb, pair, decided, ctx):
        return ((ctx[0], ctx[1]), fb.ts, 1, DECISION[ctx[4]], 0.0, KIND[kind_of(fb)], SOURCE[fb.source],
                PREFERRED[fb.preferred], ctx[2], fb.weight, *pair, decided)

    for ev in events:
        if (type(ev), ev.event_id) in seen:
            continue
        seen.add((type(ev), ev.event_id))
        if type(ev) is ScoreEvent:
            ctx = (ev.policy_id, ev.segment, ev.score, ev.tau, ev.decision)
            rows.append(((ev.policy_id, ev.segment), ev.ts, 0, DECISION[ev.decision], ev.tau, 0, 0, 0, ev.score, 1.0, -1,
                         False, ev.ts))
            scores.setdefault(ev.scenario_id, []).append((ev.ts, ctx))
            rows += [feedback_row(fb, pair, ev.ts, ctx) for fb, pair in waiting.pop(ev.scenario_id, [])]
            continue
        pair = label_of(ev)
        if None not in (ev.policy_id, ev.score, ev.tau, ev.decision):
            decided = joined(ev)[0] if ev.scenario_id in scores else None
            rows.append(feedback_row(ev, pair, decided, (ev.policy_id, ev.segment or "default", ev.score, ev.tau,
                                                         ev.decision)))
        elif ev.scenario_id in scores:
            rows.append(feedback_row(ev, pair, *joined(ev)))
        else:
            waiting.setdefault(ev.scenario_id, []).append((ev, pair))
    return rows


def _rows(records) -> list[tuple]:
    cols = [records.ts, records.etype, records.decision, records.tau, records.kind, records.source,
            records.preferred, records.score, records.weight, records.pair, records.repeat, records.decided]
    return [(k, *(c.item() for c in vals[:-1]), None if np.isnan(vals[-1]) else vals[-1].item())
            for k, *vals in zip(records.keys, *cols)]


@st.composite
def streams_of_events(draw):
    n = draw(st.integers(1, 60))
    events = []
    for i in range(n):
        sid = draw(st.sampled_from(["c0", "c1", "c2", "c3", "c0\x00c1", "c1\x00", "c0\n"]))  # ids may hold any character
        ts = T0 + draw(st.integers(0, 50))
        eid = f"e{draw(st.integers(0, 3 * n))}"  # repeats: duplicates, and score/feedback sharing an id
        if draw(st.booleans()):
            score = draw(st.sampled_from([0.1, 0.6, 0.9]))
            events.append(ScoreEvent(v=1, event_id=eid, scenario_id=sid, policy_id=draw(st.sampled_from("pq")),
                                     segment=draw(st.sampled_from(["a", "b"])), score=score, tau=0.5,
                                     decision=draw(st.sampled_from(["act", "hold", "abstain"])), ts=ts))
        else:
            context = {}
            if draw(st.integers(0, 4)) == 0:
                context = dict(policy_id="p", segment=draw(st.sampled_from([None, "c"])), score=0.3, tau=0.4,
                               decision="hold")
            events.append(FeedbackEvent(v=1, event_id=eid, scenario_id=sid, ts=ts,
                                        kind=draw(st.sampled_from(["like", "override", "abstain"])),
                                        source=draw(st.sampled_from(["human", "reviewer", "llm_judge", "audit"])),
                                        preferred=draw(st.sampled_from([None, "act"])),
                                        weight=draw(st.sampled_from([1.0, 2.5])), **context))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    return events, [0, *cuts, n]


def _through(wire: str, events: list):
    """`events` as ingest takes them from a wire format: objects, or columns decoded from a
    columnar or a JSON envelope."""
    if wire == "objects" or not events:
        return EventColumns.of_events(events)
    encode = columnar.encode if wire == "columnar" else codec.encode_envelope
    got, rejected = columnar.decode_batch([encode(events)])
    assert not rejected
    return got


@settings(max_examples=300, deadline=None)
@given(streams_of_events(), st.booleans(), st.booleans(), st.sampled_from(["objects", "columnar", "json"]))
def test_ingest_equals_one_event_at_a_time(drawn, abstention_handling, restart, wire):
    """`restart`: the join and de-duplication state go through their checkpoint at every cut."""
    events, cuts = drawn
    dedup, join = Deduplicator(horizon_s=86_400.0), FeedbackJoin(horizon_s=86_400.0)
    try:
        got, counts = [], {"duplicates": 0, "waiting": 0, "joined_late": 0}
        for lo, hi in zip(cuts, cuts[1:]):
            if restart:
                again = FeedbackJoin(horizon_s=86_400.0)
                again.load(join.dump())
                join.close()
                join = again
                dedup_again = Deduplicator(horizon_s=86_400.0)
                dedup_again.load(dedup.dump())
                dedup = dedup_again
            out = ingest(_through(wire, events[lo:hi]), dedup, join, abstention_handling)
            got += _rows(out.records)
            for k in counts:
                counts[k] += getattr(out, k)
        want = reference(events, abstention_handling)
        assert got == want
        distinct = len({(type(e), e.event_id) for e in events})
        assert counts["duplicates"] == len(events) - distinct
        # feedback still parked is neither a record nor lost: it waits in the store
        assert join.waiting_feedback == counts["waiting"] - counts["joined_late"]
    finally:
        join.close()


def test_feedback_that_carries_its_context_without_a_segment_counts_under_default():
    """No segment, or an empty one (the wire refuses it, a caller's objects may hold it), is the
    segment "default", and the decision's event time comes from the score it would join."""
    context = dict(v=1, scenario_id="x", kind="like", policy_id="p", score=0.3, tau=0.4, decision="hold")
    events = [ScoreEvent(v=1, event_id="s", scenario_id="x", policy_id="q", score=0.9, tau=0.5, decision="act", ts=T0),
              FeedbackEvent(event_id="f1", ts=T0 + 1, segment=None, **context),
              FeedbackEvent(event_id="f2", ts=T0 + 2, segment="", **context)]
    join = FeedbackJoin(horizon_s=86_400.0)
    try:
        records = ingest(EventColumns.of_events(events), Deduplicator(), join).records
        assert records.keys == [("q", "default"), ("p", "default"), ("p", "default")]
        assert records.decided.tolist() == [T0, T0, T0] and records.score.tolist() == [0.9, 0.3, 0.3]
    finally:
        join.close()


def test_released_feedback_comes_right_after_its_score_across_batches():
    fb = [FeedbackEvent(v=1, event_id=f"f{i}", scenario_id="x", ts=T0 + i, kind="override") for i in (3, 1, 2)]
    score = ScoreEvent(v=1, event_id="s", scenario_id="x", policy_id="p", score=0.9, tau=0.5, decision="act",
                       ts=T0 + 9)
    other = ScoreEvent(v=1, event_id="o", scenario_id="y", policy_id="p", score=0.2, tau=0.5, decision="hold",
                       ts=T0 + 10)
    dedup, join = Deduplicator(), FeedbackJoin()
    try:
        assert len(ingest(EventColumns.of_events(fb[:2]), dedup, join).records) == 0  # parked in the store
        out = ingest(EventColumns.of_events([fb[2], score, other]), dedup, join)
    finally:
        join.close()
    # parked first (in the order they came), then this batch's, then the next event
    assert out.records.ts.tolist() == [T0 + 9, T0 + 3, T0 + 1, T0 + 2, T0 + 10]
    assert np.array_equal(out.records.etype, [0, 1, 1, 1, 0])
    assert (out.waiting, out.joined_late) == (1, 3)  # waiting: counted in the batch it came


def _pending(sid, eid, ts):
    from streams.operators.join import Pending

    return Pending(sid, eid, ts, "override", "human", "", 1.0)


def test_a_reopened_store_numbers_new_parked_feedback_after_the_old(tmp_path):
    path = str(tmp_path / "join")
    join = FeedbackJoin(path)
    join.park([_pending("x", "f1", T0)])
    join.close()
    join = FeedbackJoin(path)
    try:
        join.park([_pending("x", "f2", T0 + 1)])
        assert join.waiting_feedback == 2
        assert [p.event_id for p in join.release("x")] == ["f1", "f2"]
    finally:
        join.close()


def test_expiring_a_scenario_first_score_keeps_its_newer_one():
    join = FeedbackJoin(horizon_s=100.0, expire_every_s=0.0)
    try:
        join.add_scores(["x"], [("p", "a", 0.9, 0.5, "act", T0)])
        join.add_scores(["x"], [("p", "a", 0.2, 0.5, "hold", T0 + 90)])  # re-scored
        join.add_scores(["y"], [("p", "a", 0.9, 0.5, "act", T0 + 120)])
        join.expire()  # the first score's index entry is past the horizon, the newer score is not
        assert join.lookup(["x"])[0][5] == T0 + 90
        assert join.expired_scores == 1
        join.add_scores(["z"], [("p", "a", 0.9, 0.5, "act", T0 + 200)])
        join.expire()
        assert join.lookup(["x"]) == [None] and join.expired_scores == 2  # every score expires on its own
    finally:
        join.close()


def test_scenario_ids_with_nul_and_newline_expire_and_release_only_their_own():
    join = FeedbackJoin(horizon_s=100.0, expire_every_s=0.0)
    try:
        join.park([_pending("a\x00b", "f1", T0)])
        join.add_scores(["a"], [("p", "a", 0.9, 0.5, "act", T0)])
        assert join.release("a") == [] and join.waiting_feedback == 1  # not a's: a\0b's
        assert [p.scenario_id for p in join.release("a\x00b")] == ["a\x00b"]
        join.add_scores(["x\ny", "x"], [("p", "a", 0.9, 0.5, "act", T0)] * 2)
        join.add_scores(["z"], [("p", "a", 0.9, 0.5, "act", T0 + 500)])
        join.expire()
        assert join.lookup(["x\ny", "x", "a"]) == [None, None, None] and join.expired_scores == 3
    finally:
        join.close()


def test_join_stores_sharing_a_block_cache_keep_the_blocks_they_read_within_it():
    """A worker's partitions share one cache of the blocks they read (RocksDB's default is 32 MB
    a store, so a worker's RAM grew with its partitions): stores that read back more than the
    cache holds report one usage, within its capacity, where one alone caches more."""
    from rocksdict import Cache

    capacity = 1 << 20
    shared = Cache(capacity)
    stores = [FeedbackJoin(block_cache=shared) for _ in range(3)]
    alone = FeedbackJoin()
    usage = lambda store: store.db.property_int_value("rocksdb.block-cache-usage")  # noqa: E731
    try:
        ctx = ("pol", "seg", 0.5, 0.5, "act", 1000.0)
        ids = [f"scn-{i:06d}-{'x' * 40}" for i in range(160_000)]
        for store in [*stores, alone]:
            for lo in range(0, len(ids), 5_000):
                store.add_scores(ids[lo:lo + 5_000], [ctx] * 5_000)
            store.db.flush()  # the pages now lie in a file: reading them fills the cache
            assert len(store.scores_of(ids[::7])) == len(ids[::7])
        assert len({usage(store) for store in stores}) == 1 and usage(stores[0]) <= capacity
        assert usage(alone) > 2 * capacity  # one store with a cache of its own holds more
    finally:
        for store in [*stores, alone]:
            store.close()


def test_join_stores_sharing_a_write_buffer_budget_keep_their_memtables_within_it():
    """A worker's partitions share one memtable budget: without it each store may hold two
    64 MB memtables, so a worker's RAM grew with the partitions it owned. RocksDB's limit is
    soft (memtables being flushed still count for a while), hence the slack."""
    from rocksdict import WriteBufferManager

    budget = 8 << 20
    shared = WriteBufferManager(budget, False)
    stores = [FeedbackJoin(write_buffers=shared) for _ in range(4)]
    alone = FeedbackJoin()
    memtables = lambda store: store.db.property_int_value("rocksdb.cur-size-all-mem-tables")  # noqa: E731

    def settled(stores, timeout_s=30.0):
        """Wait until no flush is pending or running: a memtable being flushed still counts, and
        how long that takes depends on the machine's load, not on the budget."""
        deadline = time.monotonic() + timeout_s
        busy = ("rocksdb.mem-table-flush-pending", "rocksdb.num-running-flushes")
        while any(st.db.property_int_value(prop) for st in stores for prop in busy):
            assert time.monotonic() < deadline, "flushes did not finish"  # fail-fast bound, not a speed check
            time.sleep(0.01)

    try:
        ctx = ("pol", "seg", 0.5, 0.5, "act", 1000.0)
        most_shared = most_usage = 0
        for r in range(12):  # alone: more than the budget, less than one default memtable
            for store in [*stores, alone]:
                store.add_scores([f"scn-{r}-{i:06d}-{'x' * 40}" for i in range(20_000)], [ctx] * 20_000)
            settled([*stores, alone])
            most_shared = max(most_shared, sum(map(memtables, stores)))
            most_usage = max(most_usage, shared.get_usage())
        assert 12 * 20_000 * 100 > 2 * budget  # each store alone took in more than the budget (a score: over 100 bytes)
        assert most_shared <= 1.5 * budget and most_usage <= 2.5 * budget
        assert memtables(alone) > 2 * budget  # one store without it holds more than the four with it
        assert stores[0].lookup(["scn-0-000001-" + "x" * 40]) == [ctx]  # flushed, not lost
    finally:
        for store in [*stores, alone]:
            store.close()


def _rescored(ts_order):
    return [ScoreEvent(v=1, event_id=f"s{t}", scenario_id="x", policy_id="p", segment=f"at{t}", score=0.5, tau=0.5,
                       decision="act", ts=T0 + t) for t in ts_order]


def test_feedback_on_a_rescored_scenario_joins_by_event_time_not_delivery_order():
    """Scores at +20 and +10 delivered in that order: feedback at +30 takes +20 (the latest at
    or before it), at +15 takes +10, at +5 (before both) the earliest, +10, whichever the
    delivery order and batch cuts."""
    fbs = [FeedbackEvent(v=1, event_id=f"f{t}", scenario_id="x", ts=T0 + t, kind="like") for t in (30, 15, 5)]
    for order in ((20, 10), (10, 20)):
        for cut in (1, 2, 3):
            events = _rescored(order) + fbs
            dedup, join = Deduplicator(), FeedbackJoin()
            try:
                got = [key for part in (events[:cut], events[cut:])
                       for key in ingest(EventColumns.of_events(part), dedup, join).records.keys]
            finally:
                join.close()
            assert got[2:] == [("p", "at20"), ("p", "at10"), ("p", "at10")], (order, cut)


def test_label_state_survives_a_reopen_and_ends_with_the_horizon(tmp_path):
    """An unpaired audit is remembered on disk (a reopened store pairs it), a scenario pairs
    once, every label after a scenario's first is a repeat, and past the horizon its label
    state is forgotten like its scores."""
    path = str(tmp_path / "join")
    join = FeedbackJoin(path, horizon_s=100.0, expire_every_s=0.0)
    assert join.labels(["x", "x", "y"], [True, True, False], [1, 0, 0], [T0, T0 + 1, T0 + 2]) == \
        ([-1, -1, -1], [False, True, False])
    join.close()
    join = FeedbackJoin(path, horizon_s=100.0, expire_every_s=0.0)
    try:
        # x: first audit said override, channel like; y: channel like first, audit like
        assert join.labels(["x", "y", "x", "y", "w"], [False, True, False, True, False], [0, 0, 1, 1, 0],
                           [T0 + 3] * 5) == ([PAIR_AUDIT_OVERRIDES, PAIR_AGREE, -1, -1, -1], [True] * 4 + [False])
        join.add_scores(["z"], [("p", "a", 0.9, 0.5, "act", T0 + 500)])
        join.expire()
        assert join.labels(["x", "x"], [True, False], [0, 1], [T0 + 501] * 2) == \
            ([-1, PAIR_CHANNEL_OVERRIDES], [False, True])
    finally:
        join.close()


def test_a_feedback_lag_is_counted_only_where_its_decision_time_is_known_and_not_after_it():
    from streams.operators.records import _lag
    ts = np.array([T0 + 10, T0 + 700, T0 + 5, T0 + 100, T0 + 3600 * 5])
    decided = np.array([T0 + 20, T0 + 10, T0 + 400, np.nan, T0])
    assert _lag(ts, decided, 300.0).tolist() == [0, 2, -1, -1, 60]
