"""Pure pieces of the Kafka worker: the partials wire format, the co-partition merge, output events."""
from __future__ import annotations

import asyncio
from collections import Counter, namedtuple
from itertools import repeat

import msgspec
import numpy as np
import pytest
from aiokafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from kernels.layout import PAIR_B, PAIR_N, StateLayout
from streams.config import MonitorConfig
from streams.events import WindowStatsEvent
from streams.metrics import Metrics
from streams.kafka.checkpoints import Packed
from streams.operators.aggregate import WindowResult
from streams.operators.windows import Partials
from streams.worker import partials as codec
from streams.worker.merge import CoPartitionMerge
from streams.worker.outputs import Delivery, window_stats_events
from streams.worker.own_partials import written_ends

Rec = namedtuple("Rec", "topic timestamp offset")


def test_partials_round_trip_and_row_selection():
    width = StateLayout().width
    rows = np.arange(3 * width, dtype=float).reshape(3, width)
    p = Partials([("a", "x"), ("b", "y"), ("c", "z")], np.array([5, 5, -1]), rows, closed_through=6)
    early = Partials([("b", "y")], np.array([7]), rows[[1]], early=True, closed_through=6)
    units = [(p, np.array([0, 2]), 6), (p, np.array([], dtype=np.int64), 6), (early, np.array([0]), 6)]
    inp, first, back = codec.decode(codec.encode(units, 2, 99, width), width)
    assert (inp, first, len(back)) == (2, 99, 3)
    assert (back[0].closed_through, back[0].early, back[0].keys) == (6, False, [("a", "x"), ("c", "z")])
    assert back[0].panes.tolist() == [5, -1] and np.array_equal(back[0].rows, rows[[0, 2]])
    assert back[1].keys == [] and back[1].rows.shape == (0, width) and back[1].closed_through == 6
    assert back[2].early and back[2].keys == [("b", "y")] and np.array_equal(back[2].rows, rows[[1]])
    inp, first, (one,) = codec.decode(codec.encode(units[:1], 2, 99, width, version=1), width)  # version 1: one part
    assert (inp, first, one.keys, one.panes.tolist()) == (2, 99, back[0].keys, [5, -1])
    assert np.array_equal(one.rows, back[0].rows)


@pytest.mark.parametrize("data", [b"", b"\x93\x01", b"not msgpack at all", b"\x95\x03\x00\x01\x53\x90", None])
def test_malformed_partials_are_rejected(data):
    with pytest.raises(ValueError):
        codec.decode(data, StateLayout().width)


@pytest.mark.parametrize("first, parts, match", [
    (1, [], "numbered 1 with 0 parts"),
    (-1, [(("a", "x"), 1, False)], "numbered -1"),
    (3, [(("a", "x"), 1, True)], "idleness note"),  # an idle part with a number
    (0, [(("a", "x"), 1, False)], "idleness note"),  # a number 0 that is no note
    (0, [], "numbered 0 with 0 parts"),
])
def test_partials_messages_numbered_wrongly_are_rejected(first, parts, match):
    width = StateLayout().width
    units = [(Partials([key], np.array([pane]), np.zeros((1, width)), closed_through=2, idle=idle),
              np.array([0]), 2) for key, pane, idle in parts]
    with pytest.raises(ValueError, match=match):
        codec.decode(codec.encode(units, 0, first, width), width)


def test_the_partials_format_is_a_setting_and_an_unknown_one_is_refused():
    from streams.settings import Settings, load
    from streams.worker.outputs import PartialsRouter

    assert load(env={}).partials_format == 2 and load(env={"NPO_PARTIALS_FORMAT": "1"}).partials_format == 1
    with pytest.raises(ValueError, match="partials_format must be 1 or 2"):
        Settings(partials_format=3)
    with pytest.raises(ValueError, match="partials version"):
        PartialsRouter("partials", 83, version=3)


def test_an_idleness_note_that_says_it_is_an_early_snapshot_is_rejected():
    width = StateLayout().width
    note = Partials.empty(width, 0, idle=True)
    note.early = True
    with pytest.raises(ValueError, match="no early snapshot"):
        codec.decode(codec.encode([(note, np.empty(0, np.int64), 0)], 0, 0, width), width)


def test_partials_with_wrong_width_are_rejected():
    p = Partials([("a", "x")], np.array([1]), np.zeros((1, 10)), closed_through=2)
    with pytest.raises(ValueError, match="width"):
        codec.decode(codec.encode([(p, np.array([0]), 2)], 0, 1, 10), StateLayout().width)
    with pytest.raises(ValueError, match="shape"):
        codec.decode(codec.encode([(p, np.array([0]), 2)], 0, 1, StateLayout().width), StateLayout().width)


def test_merge_orders_by_timestamp_and_waits_for_the_other_topic():
    m = CoPartitionMerge("s", "f", idle_s=0.5)
    m.add("s", 0, [Rec("s", 10, 0), Rec("s", 30, 1)], now=100.0)
    m.add("f", 0, [Rec("f", 20, 0)], now=100.0)
    first = m.pop_ready(0, {"s": False, "f": False}, now=100.0)
    assert [(r.topic, r.timestamp) for r in first] == [("s", 10), ("f", 20)]  # s@30 waits for f
    assert m.pop_ready(0, {"s": False, "f": False}, now=100.0) == []
    # f looks drained, but only as of the last fetch: s@30 waits idle_s for a late f record
    assert m.pop_ready(0, {"s": False, "f": True}, now=100.4) == []
    m.add("f", 0, [Rec("f", 25, 1)], now=100.45)
    got = m.pop_ready(0, {"s": False, "f": True}, now=100.5)
    assert [(r.topic, r.timestamp) for r in got] == [("f", 25), ("s", 30)]
    assert m.pending_on("s", 0) == m.pending_on("f", 0) == 0 and not m.arrived[("s", 0)]


def test_merge_ties_go_to_scores_first():
    m = CoPartitionMerge("s", "f", idle_s=0.0)
    m.add("f", 1, [Rec("f", 5, 0)])
    m.add("s", 1, [Rec("s", 5, 0)])
    assert [r.topic for r in m.pop_ready(1, {"s": True, "f": True})] == ["s", "f"]


def test_merge_rejects_a_negative_wait():
    with pytest.raises(ValueError):
        CoPartitionMerge("s", "f", idle_s=-1)


Ack = namedtuple("Ack", "topic partition offset")


def test_delivery_gives_each_message_s_acknowledgement_in_order_also_after_retries(monkeypatch):
    """What the worker learns of where its writes landed (to read its own partials in the same
    round) comes from delivery, whose retries must not reorder it."""
    no_wait = asyncio.sleep
    monkeypatch.setattr(asyncio, "sleep", lambda s: no_wait(0))
    offsets, refusals = {}, {"b": 2}  # message "b" is refused twice, then written

    async def send(topic, value, key, partition):  # as aiokafka's: the acknowledgement to await
        if refusals.get(value, 0):
            refusals[value] -= 1
            raise TimeoutError("refused")
        offsets[partition] = offsets.get(partition, -1) + 1
        done = asyncio.get_running_loop().create_future()
        done.set_result(Ack(topic, partition, offsets[partition]))
        return done

    counters = Counter()
    delivery = Delivery(send, Metrics(), counters)
    messages = [("t", "a", None, 0), ("t", "b", None, 0), ("u", "c", None, 1)]
    acks = asyncio.run(delivery.deliver(messages))
    assert acks == [Ack("t", 0, 0), Ack("t", 0, 1), Ack("u", 1, 0)]
    assert counters["output_retries"] == 2 and delivery.undelivered == 0
    assert written_ends(acks, "t") == {TopicPartition("t", 0): 2}
    assert written_ends(acks, "u") == {TopicPartition("u", 1): 1} and written_ends(acks, "v") == {}


class _ScriptedConsumer:
    """What `fetch_through` asks of an aiokafka consumer, answering each fetch from a script."""

    def __init__(self, held, paused, fetches) -> None:
        self.held, self._paused, self.fetches, self.asked = set(held), set(paused), list(fetches), []
        self.at = {tp: 0 for tp in held}

    def assignment(self):
        return self.held

    def paused(self):
        return self._paused

    async def position(self, tp):
        return self.at[tp]

    async def getmany(self, *partitions, timeout_ms=0, max_records=None):
        self.asked.append(partitions)
        out = self.fetches.pop(0) if self.fetches else {}
        for tp, records in out.items():
            self.at[tp] = records[-1].offset + 1
        return out


def test_a_round_waits_only_for_partitions_it_reads_and_keeps_every_partition_s_records():
    """Partitions not held, or paused until a rebalance's load, are not waited for; a later
    fetch's records of partitions not waited for are kept, after those fetched before."""
    from streams.worker.own_partials import fetch_through

    a, b, c, d = (TopicPartition("partials", q) for q in range(4))
    rec = lambda offset: Rec("partials", 0, offset)  # noqa: E731
    consumer = _ScriptedConsumer([a, b, c], [c], [{a: [rec(0)], b: [rec(0)]}, {b: [rec(1)]}, {a: [rec(1), rec(2)]}])
    fetched = asyncio.run(fetch_through(consumer, {a: 3, c: 5, d: 9}, timeout_ms=10, max_records=100, wait_s=30.0))
    assert {tp: [r.offset for r in records] for tp, records in fetched.items()} == {a: [0, 1, 2], b: [0, 1]}
    assert consumer.asked == [(), (), ()]  # every fetch of every partition; none once `a` is read through 3
    idle = _ScriptedConsumer([a, b, c], [c], [{}])
    assert asyncio.run(fetch_through(idle, {b: 0, c: 5, d: 9}, timeout_ms=10, max_records=100, wait_s=30.0)) == {}
    assert idle.asked == [()]  # `b` is read through its end, `c` paused, `d` not held: no wait


def test_window_stats_events_follow_the_schema():
    config = MonitorConfig()
    layout = config.layout
    rows = layout.zeros(2)
    rows[0, 0] = 3  # three act decisions
    rows[0, PAIR_N], rows[0, PAIR_B] = 2, 1  # the kernels count audit pairs as floats too
    from kernels.derive import derive

    stats = derive(rows, layout, config.stats)
    stats["late_events"] = np.array([0.0, 2.0])
    res = WindowResult("cumulative", 0.0, 600.0, [("p", "s"), ("q", "t")], rows, stats, 1)
    validator = schemas.validator("window_stats")
    events = window_stats_events(res, config.version)
    for _, event in events:
        validator.validate(event)
        msgspec.json.decode(msgspec.json.encode(event), type=WindowStatsEvent, strict=True)  # counts as ints
    assert events[0][1]["stats"]["audit_pairs"] == 2 and type(events[0][1]["stats"]["audit_pairs_b"]) is int
    assert events[0][1]["stats"]["n_act"] == 3 and events[1][1]["late_events"] == 2
    assert events[0][1]["stats"]["loss"] is None  # empty window: no loss, not NaN


def _many_keys_stage_partials(config, partition: int, keys: range) -> list[Partials]:
    """Partials of one partition whose panes close with many keys at once."""
    import orjson

    from streams.pipeline import PartitionStage

    stage = PartitionStage(config, partition=partition)
    events = [{"type": "score", "v": 1, "event_id": f"s{partition}-{k}-{t}", "scenario_id": f"c{k}-{t}",
               "policy_id": f"policy-{k}", "segment": "s", "score": 0.6, "tau": 0.5, "decision": "act",
               "ts": 1767225600.0 + 60.0 * t + k / 1000}
              for t in range(30) for k in keys]
    out = stage.process([orjson.dumps(e) for e in events]).partials + stage.drain().partials
    stage.close()
    return out


@pytest.mark.parametrize("version", [1, 2])
def test_partials_split_into_bounded_messages_give_the_same_windows(monkeypatch, version):
    """A pane closing with more keys than a message holds goes out in several messages; only
    the last reports progress, so another partition's progress cannot finalise the pane
    before all its rows have arrived."""
    from streams.pipeline import Monitor
    from streams.worker.outputs import PartialsRouter

    config = MonitorConfig()
    monkeypatch.setattr(codec, "ROWS_PER_PART", 7)
    parts = {p: _many_keys_stage_partials(config, p, range(p, 60, 2)) for p in (0, 1)}
    assert max(len(x.keys) for x in parts[0]) > 3 * 7

    whole = Monitor(config, partitions=2)
    want = [r for p in (1, 0) for r in whole.add(p, parts[p]).windows]
    split = Monitor(config, partitions=2)
    router, got = PartialsRouter("partials", config.layout.width, partitions=1, version=version), []
    for p in (1, 0):  # partition 1 far ahead: a chunk reporting progress too early would cut panes short
        for i in range(0, len(parts[p]), 5):  # rounds of five parts
            for _, value, _, _ in router.messages(p, parts[p][i:i + 5]):
                _, _, back = codec.decode(value, config.layout.width)
                assert max(len(b.keys) for b in back) <= 7 and (version == 2 or len(back) == 1)
                got += split.add(p, back).windows

    def table(results):
        return sorted((r.kind, r.start, key, tuple(r.rows[i])) for r in results for i, key in enumerate(r.keys))

    assert len(table(want)) > 500 and table(got) == table(want)


@pytest.mark.parametrize("char", ["k", "\u00e9", "\U0001f600"])
def test_a_round_s_parts_go_in_messages_under_the_byte_budget_whatever_the_keys(char):
    """Keys of the longest ids (256 characters of 1, 2 or 4 bytes of UTF-8): each message stays
    within MESSAGE_BYTES unless it holds a single part, and every part arrives once, in order."""
    from streams.worker.outputs import PartialsRouter

    width = StateLayout().width
    rng = np.random.default_rng(7)
    parts = []
    for pane in range(40):
        n = int(rng.integers(0, 1200))
        keys = [(f"{k:04d}" + char * 252, char * 256) for k in range(n)]
        parts.append(Partials(keys, np.full(n, pane), rng.random((n, width)), closed_through=pane + 1))
    router = PartialsRouter("partials", width, partitions=1)
    got, numbers = [], []
    for _, value, _, _ in router.messages(0, parts):
        _, first, back = codec.decode(value, width)
        assert len(value) <= codec.MESSAGE_BYTES or len(back) == 1
        numbers += range(first, first + len(back))
        got += back
    assert numbers == list(range(1, len(got) + 1)) and router.numbers(0) == [[0, len(got)]]
    assert [k for g in got for k in g.keys] == [k for p in parts for k in p.keys]
    assert np.array_equal(np.concatenate([g.rows for g in got]), np.concatenate([p.rows for p in parts]))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=10), st.lists(st.integers(1, 12), min_size=1, max_size=10),
       st.integers(0, 40), st.sampled_from([(2, 2), (1, 2), (2, 1)]))
def test_a_replay_that_cuts_its_rounds_differently_gives_the_same_windows(cuts, replay_cuts, crash, versions):
    """An input partition's router numbers its parts as it sends them, so a replay from a
    checkpoint, whose rounds (and so messages) are cut differently, and of either message
    version, repeats each number with the same part: the monitor, applying each number once,
    gets every part once, in order (the windows of the run without a crash)."""
    from streams.pipeline import Monitor
    from streams.worker.outputs import PartialsRouter
    from streams.worker.sequencer import PartialsSequencer

    config = MonitorConfig()
    parts = _many_keys_stage_partials(config, 0, range(0, 12))
    want = Monitor(config).add(0, parts).windows

    def rounds(router, todo, sizes):
        """(partials partition, message) of `todo` sent in rounds of `sizes` parts (cycled)."""
        out, i, k = [], 0, 0
        while i < len(todo):
            out += [(q, value) for _, value, _, q in router.messages(0, todo[i:i + sizes[k % len(sizes)]])]
            i, k = i + sizes[k % len(sizes)], k + 1
        return out

    first = PartialsRouter("partials", config.layout.width, partitions=2, version=versions[0])
    checkpoint_at = sum(cuts[: len(cuts) // 2])  # a round boundary: parts before it are checkpointed
    log = rounds(first, parts[:checkpoint_at], cuts)
    numbers = first.numbers(0)
    log += rounds(first, parts[checkpoint_at:], cuts)[:crash]  # crashed after sending some of the rest
    again = PartialsRouter("partials", config.layout.width, partitions=2, version=versions[1])
    again.restore(0, numbers)
    log += rounds(again, parts[checkpoint_at:], replay_cuts)

    monitors = {q: Monitor(config) for q in (0, 1)}
    got, sequencers = [], {q: PartialsSequencer() for q in (0, 1)}
    for offset, (q, value) in enumerate(log):
        inp, n, back = codec.decode(value, config.layout.width)
        ready = sequencers[q].accept(inp, n, offset, back)
        got += monitors[q].add(inp, ready).windows if ready else []

    def table(results):
        return sorted((r.kind, r.start, key, tuple(r.rows[i])) for r in results for i, key in enumerate(r.keys))

    assert len(table(want)) > 50 and table(got) == table(want)


def _worker(**overrides):
    """A Worker that is never started: its bookkeeping alone."""
    from streams.settings import load
    from streams.worker.worker import Worker

    return Worker(load(overrides={"topic_prefix": "u.", **overrides}, env={}))


class _Store:
    """Checkpoint store bookkeeping only: which pointers were written and which deleted."""

    topic = "checkpoints"

    def __init__(self) -> None:
        self.written, self.forgotten = 0, []

    async def write(self, name, packed, base=""):
        self.written += 1
        return f"ck{self.written}"

    async def forget(self, name, pointer, keep=()):
        self.forgotten.append(pointer)


_PACKED = Packed([], 7)  # a checkpoint of 7 bytes uncompressed


def _checkpointer(commits, committed=None, store=None):
    """A Checkpointer over `store` (a `_Store` by default) whose commits answer `commits` in
    turn (True: committed, None: refused after a rebalance, False: not tried) and whose group
    reads `committed`."""
    from streams.worker.checkpointing import Checkpointer

    outcomes = iter(commits)

    async def commit(consumer, offsets):
        return next(outcomes)

    async def read_committed(consumer, tps):
        return committed(tps) if committed else {}

    return Checkpointer("g", store or _Store(), commit=commit, read_committed=read_committed)


def test_a_checkpoint_whose_commit_may_have_landed_is_kept_and_recognised_as_ours():
    """A retried commit refused after a rebalance may have landed: deleting that checkpoint
    would leave the group pointing at chunks compaction then drops (takeover fails), and
    not knowing it as ours would throw the live state away for a replay."""
    from aiokafka import TopicPartition

    group = {"pointer": ""}
    ck = _checkpointer([True, None, True], committed=lambda tps: {tps[0]: (1, group["pointer"])})
    tp = TopicPartition("t", 0)

    async def run():
        save = lambda: ck.save(None, "ingest", 0, _PACKED, {tp: 1}, lambda: True)  # noqa: E731
        assert await save() is True  # ck1 committed
        assert await save() is False  # ck2: refused after a rebalance, outcome unknown
        assert ck.store.forgotten == [] and ck.ours("ingest", 0) == ["ck1", "ck2"]

        group["pointer"] = "ck2"  # the refused commit had landed
        assert await ck.load("ingest", None, [tp], live=True) is None  # ours: the live stage goes on

        assert await save() is True  # ck3 supersedes both
        assert sorted(ck.store.forgotten) == ["ck1", "ck2"] and ck.ours("ingest", 0) == ["ck3"]
        assert ck.counters["checkpoints", "ingest"] == 2 and ck.counters["checkpoint_bytes", "ingest"] == 14

    asyncio.run(run())


def test_a_checkpoint_in_doubt_that_the_group_does_not_point_to_is_deleted_after_the_load():
    from aiokafka import TopicPartition

    ck = _checkpointer([None, None])
    tp = TopicPartition("t", 0)

    async def run():
        for _ in range(2):
            await ck.save(None, "ingest", 0, _PACKED, {tp: 1}, lambda: True)
        assert ck.ours("ingest", 0) == ["ck1", "ck2"]
        ck.adopt("ingest", 0, "ck2")  # the group is found at ck2: ck1 never landed
        assert ck.store.forgotten == []  # not during the load
        await ck.forget_stale()
        assert ck.store.forgotten == ["ck1"] and ck.ours("ingest", 0) == ["ck2"]

    asyncio.run(run())


class _FailingStore(_Store):
    """`_Store` whose writes (deletions) raise `error` while `refuse_writes` (`refuse_deletes`)
    is set; a timeout by default, as while the broker is away for longer than the producer's
    request timeout."""

    def __init__(self, error=None) -> None:
        from aiokafka.errors import KafkaTimeoutError

        super().__init__()
        self.refuse_writes = self.refuse_deletes = False
        self.error = error or KafkaTimeoutError("batch expired")

    async def write(self, name, packed, base=""):
        if self.refuse_writes:
            raise self.error
        return await super().write(name, packed, base)

    async def forget(self, name, pointer, keep=()):
        if self.refuse_deletes:
            raise self.error
        await super().forget(name, pointer, keep)


def _always_committing(store):
    return _checkpointer(repeat(True), store=store)


@pytest.mark.parametrize("error", ["OutOfOrderSequenceNumber", "TopicAuthorizationFailedError", "ProducerClosed"])
def test_a_checkpoint_write_that_cannot_succeed_if_tried_again_still_ends_the_worker(error):
    """Only a timeout or an error Kafka marks retriable is waited out: a producer whose
    idempotent sequence broke, or that is not allowed to write, fails every write after, and
    a worker that went on without checkpoints would never commit its offsets again."""
    import aiokafka.errors
    from aiokafka import TopicPartition

    store = _FailingStore(getattr(aiokafka.errors, error)())
    ck = _always_committing(store)
    store.refuse_writes = True
    with pytest.raises(getattr(aiokafka.errors, error)):
        asyncio.run(ck.save(None, "ingest", 0, _PACKED, {TopicPartition("t", 0): 1}, lambda: True))
    store.refuse_writes, store.refuse_deletes = False, True
    ck.adopt("ingest", 0, "ck-in-force")
    ck.adopt("ingest", 0, "")  # ck-in-force is now stale
    with pytest.raises(getattr(aiokafka.errors, error)):
        asyncio.run(ck.forget_stale())
    assert ck.counters["checkpoint_write_errors"] == 0


@pytest.mark.parametrize("error", ["KafkaTimeoutError", "NotLeaderForPartitionError", "ProducerClosed"])
def test_a_checkpoint_written_as_it_is_taken_fails_as_a_packed_one_does(error):
    """A write of a checkpoint as it is taken that times out or fails retriably, at its close or
    at the deletion of what a write given up sent, is counted and leaves nothing in force;
    any other error ends the worker. A close that lands is committed and counted."""
    import aiokafka.errors
    from aiokafka import TopicPartition

    exc = getattr(aiokafka.errors, error)()
    ck = _always_committing(_Store())

    class Writer:
        def __init__(self, fails=True):
            self.fails = fails

        async def close(self, size, base=""):
            if self.fails:
                raise exc
            return "ck-streamed"

        async def abandon(self):
            raise exc

    tp = TopicPartition("t", 0)
    finish = lambda w: ck.finish(None, "ingest", 0, w, 11, {tp: 1}, lambda: True)  # noqa: E731
    if exc.retriable or isinstance(exc, aiokafka.errors.KafkaTimeoutError):
        assert asyncio.run(finish(Writer())) is False
        asyncio.run(ck.abandon("ingest", 0, Writer()))
        assert ck.counters["checkpoint_write_errors"] == 2 and ck.pointer("ingest", 0) == ""
    else:
        with pytest.raises(type(exc)):
            asyncio.run(finish(Writer()))
        with pytest.raises(type(exc)):
            asyncio.run(ck.abandon("ingest", 0, Writer()))
        assert ck.counters["checkpoint_write_errors"] == 0
    assert asyncio.run(finish(Writer(fails=False))) is True
    assert ck.pointer("ingest", 0) == "ck-streamed" and ck.counters["checkpoint_bytes", "ingest"] == 11


def test_deletions_still_to_do_are_kept_when_the_task_doing_them_is_cancelled():
    store = _FailingStore(asyncio.CancelledError())
    ck = _always_committing(store)
    for pointer in ("ck-a", "ck-b", ""):
        ck.adopt("ingest", 0, pointer)  # ck-a, then ck-b, found out of force
    store.refuse_deletes = True
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(ck.forget_stale())
    store.refuse_deletes = False
    asyncio.run(ck.forget_stale())
    assert sorted(store.forgotten) == ["ck-a", "ck-b"]


def test_a_checkpoint_write_or_deletion_the_broker_refuses_leaves_the_worker_running_and_is_tried_again():
    """A checkpoint write that times out puts nothing in force and is counted; a superseded
    checkpoint whose deletion fails is deleted after the next commit that lands."""
    from aiokafka import TopicPartition

    store = _FailingStore()
    ck = _always_committing(store)
    tp = TopicPartition("t", 0)

    async def run():
        save = lambda: ck.save(None, "ingest", 0, _PACKED, {tp: 1}, lambda: True)  # noqa: E731
        assert await save() is True  # ck1 in force
        store.refuse_writes = True
        assert await save() is False  # not written: nothing committed, ck1 stays in force
        assert ck.counters["checkpoints", "ingest"] == 1 and ck.pointer("ingest", 0) == "ck1"
        assert ck.counters["checkpoint_write_errors"] == 1

        store.refuse_writes, store.refuse_deletes = False, True
        assert await save() is True  # ck2 in force; deleting ck1 fails
        await ck.forget_stale()  # still refused: kept, not lost
        assert store.forgotten == [] and ck.counters["checkpoint_write_errors"] == 3
        store.refuse_deletes = False
        assert await save() is True  # ck3: the failed deletion of ck1 goes first, then ck2's
        assert store.forgotten == ["ck1", "ck2"] and ck.pointer("ingest", 0) == "ck3"
        assert ck.counters["checkpoints", "ingest"] == 3 and ck.counters["checkpoint_write_errors"] == 3
        await ck.forget_stale()
        assert store.forgotten == ["ck1", "ck2"]  # each deleted once

    asyncio.run(run())


def test_a_worker_whose_partition_another_owner_committed_does_not_commit_over_it():
    """A member that has not noticed it lost the partition (a commit not fenced by the
    group's generation) must not put its stale state, or a delta on a chain the new owner
    deletes, back in force; what it wrote is deleted."""
    from aiokafka import TopicPartition

    group = {"pointer": ""}
    ck = _checkpointer([True, True], committed=lambda tps: {tps[0]: (1, group["pointer"])})
    tp = TopicPartition("t", 0)

    async def run():
        save = lambda base="": ck.save(None, "ingest", 0, _PACKED, {tp: 1}, lambda: True, base)  # noqa: E731
        assert await save() is True
        group["pointer"] = "other-owner"  # committed by the partition's new owner
        assert await save(base="ck1") is False
        assert ck.store.forgotten == ["ck2"] and ck.ours("ingest", 0) == ["ck1"]
        assert ck.counters["checkpoints", "ingest"] == 1

    asyncio.run(run())


def test_an_owner_commits_over_another_worker_s_checkpoint_once_it_has_stayed_in_force_past_the_grace(
        monkeypatch):
    """A member that had not noticed it lost the partition commits after the new owner loaded
    (the bookkeeping groups do not fence it). The owner does not know yet which of them is
    the zombie: it commits nothing, and takes whole checkpoints only (the other may delete
    the chain a delta would extend). Once the other's checkpoint has stayed in force past
    the grace, the owner commits a whole one over it and deletes the other's own pieces."""
    import json

    from aiokafka import TopicPartition

    from streams.worker import checkpointing
    from streams.worker.checkpointing import Checkpointer

    now = [0.0]
    monkeypatch.setattr(checkpointing.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(checkpointing, "extendable", bool)  # these pointers are lists of piece ids
    group, live, written = {"pointer": ""}, set(), [0]
    tp = TopicPartition("t", 0)

    class Store:  # a pointer is the JSON list of its pieces' ids
        topic = "checkpoints"

        async def write(self, name, packed, base=""):
            written[0] += 1
            live.add(f"p{written[0]}")
            return json.dumps([*(json.loads(base) if base else []), f"p{written[0]}"])

        async def forget(self, name, pointer, keep=()):
            live.difference_update(set(json.loads(pointer)) - {i for k in keep if k for i in json.loads(k)})

    def worker():
        async def commit(consumer, offsets):
            group["pointer"] = next(iter(offsets.values()))[1]
            return True

        async def read(consumer, tps):
            return {tp: (1, group["pointer"])} if group["pointer"] else {}

        return Checkpointer("g", Store(), commit=commit, read_committed=read)

    zombie, owner = worker(), worker()

    async def run():
        assert await zombie.save(None, "ingest", 0, _PACKED, {tp: 1}, lambda: True)
        p1 = zombie.pointer("ingest", 0)
        owner.adopt("ingest", 0, p1)  # the owner loads p1
        assert await zombie.save(None, "ingest", 0, _PACKED, {tp: 2}, lambda: True, base=p1)  # lands after
        foreign = group["pointer"]
        assert owner.delta_base("ingest", 0) == p1
        assert not await owner.save(None, "ingest", 0, _PACKED, {tp: 9}, lambda: True, base=p1)
        assert owner.delta_base("ingest", 0) == ""  # whole checkpoints only while contested
        now[0] = checkpointing.CONTEST_GRACE_S - 1
        assert not await owner.save(None, "ingest", 0, _PACKED, {tp: 9}, lambda: True)
        assert not await owner.refresh(None, "ingest", 0, 0.0, lambda: True)  # never over another's
        now[0] = checkpointing.CONTEST_GRACE_S
        assert not await owner.save(None, "ingest", 0, _PACKED, {tp: 9}, lambda: True, base=p1)  # not a delta
        assert await owner.save(None, "ingest", 0, _PACKED, {tp: 9}, lambda: True)
        assert group["pointer"] == owner.pointer("ingest", 0) and json.loads(group["pointer"])[0] in live
        assert not live & set(json.loads(foreign))  # the other's pieces are deleted
        assert owner.delta_base("ingest", 0) == group["pointer"]  # deltas again

    asyncio.run(run())


def test_the_worker_s_grace_before_committing_over_another_checkpoint_follows_its_max_poll_interval(tmp_path):
    """A member may go `max.poll.interval.ms` between polls before its group takes its
    partitions away: the grace is twice that (at least 600 s), as the client properties set it."""
    from streams.settings import Settings
    from streams.worker.worker import Worker

    grace = lambda **kw: Worker(Settings(state_dir=str(tmp_path), **kw)).checkpointer.grace_s  # noqa: E731
    assert grace() == 600.0  # aiokafka's 300 s
    assert grace(kafka_extra={"max.poll.interval.ms": "900000"}) == 1800.0
    assert grace(kafka_extra={"max.poll.interval.ms": "900000"}, aiokafka_extra={"max_poll_interval_ms": 1_200_000}) \
        == 2400.0


def test_the_worker_s_guard_waits_longer_than_its_clients_requests(tmp_path):
    """The client closes a connection whose request got no answer in `request.timeout.ms`, and
    finds the group's coordinator again: the guard waits longer than that, as the client
    properties set it, so it never cancels a read before the client does that."""
    from streams.settings import Settings
    from streams.worker.worker import Worker

    guard = lambda **kw: Worker(Settings(state_dir=str(tmp_path), **kw)).checkpointer.guard_timeout_s  # noqa: E731
    assert guard() == 45.0  # aiokafka's 40 s
    assert guard(kafka_extra={"request.timeout.ms": "60000"}) == 65.0
    assert guard(kafka_extra={"request.timeout.ms": "60000"}, aiokafka_extra={"request_timeout_ms": 20_000}) == 25.0


def _contest(monkeypatch):
    """(owner Checkpointer, the group's pointer by topic partition, live piece ids, commit
    answers, clock) for a contested partition: a pointer is the JSON list of its pieces' ids;
    a commit lands, and answers what `answers` holds next (True by default)."""
    import json

    from streams.worker import checkpoint_schedule, checkpointing
    from streams.worker.checkpointing import Checkpointer

    now = [0.0]
    for module in (checkpointing, checkpoint_schedule):
        monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(checkpointing, "extendable", bool)
    group, live, answers, written = {}, set(), [], [0]

    class Store:
        topic = "checkpoints"

        async def write(self, name, packed, base=""):
            written[0] += 1
            live.add(f"p{written[0]}")
            return json.dumps([f"p{written[0]}"])

        async def forget(self, name, pointer, keep=()):
            live.difference_update(set(json.loads(pointer)) - {i for k in keep if k for i in json.loads(k)})

    async def commit(consumer, offsets):
        group.update({tp: pointer for tp, (_, pointer) in offsets.items()})
        return answers.pop(0) if answers else True

    async def read(consumer, tps):
        return {tp: (1, group[tp]) for tp in tps if group.get(tp)}

    return Checkpointer("g", Store(), commit=commit, read_committed=read), group, live, answers, now


def test_the_other_worker_s_pieces_are_deleted_also_when_the_commit_over_them_may_have_landed(monkeypatch):
    """The commit that goes over another worker's checkpoint is answered "refused after a
    rebalance" but landed: once a later commit of this worker is in force (or a load finds
    the group pointing elsewhere), the other's pieces are deleted all the same."""
    import json

    from aiokafka import TopicPartition

    from streams.worker.checkpointing import CONTEST_GRACE_S

    owner, group, live, answers, now = _contest(monkeypatch)
    tp = TopicPartition("t", 0)

    async def run():
        assert await owner.save(None, "ingest", 0, _PACKED, {tp: 1}, lambda: True)
        live.add("zombie")
        group[tp] = json.dumps(["zombie"])
        assert not await owner.save(None, "ingest", 0, _PACKED, {tp: 2}, lambda: True)  # contested
        now[0] = CONTEST_GRACE_S
        answers.append(None)  # the commit over it lands, but is answered as refused
        assert not await owner.save(None, "ingest", 0, _PACKED, {tp: 3}, lambda: True)
        assert "zombie" in live  # which of the two is in force is not known yet
        assert await owner.save(None, "ingest", 0, _PACKED, {tp: 4}, lambda: True)
        assert live == {json.loads(group[tp])[0]}
        live.add("zombie2")  # and by a load: the group points elsewhere
        group[tp] = json.dumps(["zombie2"])
        now[0] = 3 * CONTEST_GRACE_S
        assert not await owner.save(None, "ingest", 0, _PACKED, {tp: 5}, lambda: True)
        now[0] = 4 * CONTEST_GRACE_S
        answers.append(None)
        assert not await owner.save(None, "ingest", 0, _PACKED, {tp: 6}, lambda: True)
        owner.adopt("ingest", 0, "[]")  # a load finds a third pointer in force
        await owner.forget_stale()
        assert "zombie2" not in live

    asyncio.run(run())


def test_an_idle_partition_with_another_worker_s_checkpoint_in_force_is_checkpointed_whole_again(monkeypatch):
    """A refresh never commits over another worker's checkpoint; a partition that receives
    nothing would then never be checkpointed again, and the other's offsets would expire with
    the group's. The refresh marks it as moved, so a whole checkpoint goes over it after the
    grace."""
    import json
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    from streams.worker.checkpoint_schedule import CheckpointSchedule

    owner, group, live, answers, now = _contest(monkeypatch)
    tp = TopicPartition("t", 0)
    stages = SimpleNamespace(stages={0: object()}, dirty=set(), captures={})
    monitors = SimpleNamespace(monitors={3: object()}, dirty=set())
    schedule = CheckpointSchedule(owner, stages, monitors, "partials", 1.0)
    schedule.consumers = {"ingest": None, "aggregate": None}

    async def run():
        assert await owner.save(None, "ingest", 0, _PACKED, {tp: 5}, lambda: True)
        assert await owner.save(None, "aggregate", 3, _PACKED, {TopicPartition("partials", 3): 7}, lambda: True)
        now[0] = 86_400.0
        await schedule.refresh(0.0)
        assert stages.dirty == set() and monitors.dirty == set()  # in force: refreshed, nothing more
        group[tp] = json.dumps(["zombie"])  # the others' commits landed after the owner's last
        group[TopicPartition("partials", 3)] = json.dumps(["zombie3"])
        now[0] = 2 * 86_400.0
        await schedule.refresh(0.0)
        assert group[tp] == json.dumps(["zombie"])  # a refresh never goes over it
        assert stages.dirty == {0} and monitors.dirty == {3}

    asyncio.run(run())


@pytest.mark.parametrize("failure", ["error", "no answer"])
def test_a_checkpoint_whose_guard_cannot_read_the_group_is_not_committed_and_the_worker_goes_on(failure, monkeypatch):
    """The read before a commit fails with an error the client does not retry (an unknown broker
    error, say), or gets no answer (the client retries it as long as the group's coordinator is
    unreachable, and the round waits on it) within the guard's timeout: the checkpoint is not
    committed (without the read a stale commit could not be told apart), it is deleted, a
    counter moves, and the next checkpoint commits as usual. After no answer, the group is not
    read again for as long as the timeout (a round waits once, however many partitions it
    commits)."""
    from types import SimpleNamespace

    from aiokafka import TopicPartition
    from aiokafka.errors import KafkaError

    from streams.worker import checkpointing
    from streams.worker.checkpointing import Checkpointer

    # the checkpointer's clock, not the event loop's: the pause after no answer lasts until the
    # test moves it on, however long the host stalls between saves
    now = [0.0]
    monkeypatch.setattr(checkpointing, "time", SimpleNamespace(monotonic=lambda: now[0]))

    commits, reads, failing = [], [], [True]

    async def commit(consumer, offsets):
        commits.append(offsets)
        return True

    async def read_committed(consumer, tps):
        reads.append(tps)
        if failing[0] and failure == "error":
            raise KafkaError("UnknownError")
        if failing[0]:
            await asyncio.Event().wait()  # never set
        return {}

    timeout = 0.2
    ck = Checkpointer("g", _Store(), commit=commit, read_committed=read_committed, guard_timeout_s=timeout)
    tp = TopicPartition("t", 0)

    async def run():
        assert await ck.save(None, "ingest", 0, _PACKED, {tp: 1}, lambda: True) is False
        assert commits == [] and ck.store.forgotten == ["ck1"] and ck.pointer("ingest", 0) == ""
        assert ck.counters["checkpoint_guard_errors", "ingest"] == 1 and len(reads) == 1
        failing[0] = False
        for q in (1, 2, 3):  # other partitions in the same round
            saved = await ck.save(None, "aggregate", q, _PACKED, {TopicPartition("partials", q): 1}, lambda: True)
            assert saved is (failure == "error")
        if failure == "no answer":  # not read during the pause (so none waited): not committed, counted
            assert len(reads) == 1 and commits == [] and ck.counters["checkpoint_guard_errors", "aggregate"] == 3
            now[0] += timeout
        assert await ck.save(None, "ingest", 0, _PACKED, {tp: 2}, lambda: True) is True
        assert commits[-1] == {tp: (2, "ck5")} and ck.pointer("ingest", 0) == "ck5"
        failing[0] = True
        assert not await ck.refresh(None, "ingest", 0, 0.0, lambda: True)  # nor a refresh
        assert commits[-1] == {tp: (2, "ck5")} and ck.counters["checkpoint_guard_errors", "ingest"] == 2

    asyncio.run(asyncio.wait_for(run(), 10))


def test_a_commit_that_gets_no_answer_may_have_landed_and_its_checkpoint_is_kept():
    """The commit itself gets no answer within the guard's timeout: the client goes on with it,
    so it may land, and its checkpoint is kept (not deleted) until a later commit supersedes it."""
    from aiokafka import TopicPartition

    from streams.worker.checkpointing import Checkpointer

    answering = [False]

    async def commit(consumer, offsets):
        if not answering[0]:
            await asyncio.Event().wait()  # never set
        return True

    async def read_committed(consumer, tps):
        return {}

    ck = Checkpointer("g", _Store(), commit=commit, read_committed=read_committed, guard_timeout_s=0.05)
    tp = TopicPartition("t", 0)

    async def run():
        assert await ck.save(None, "ingest", 0, _PACKED, {tp: 1}, lambda: True) is False
        assert ck.store.forgotten == [] and ck.ours("ingest", 0) == ["ck1"]
        answering[0] = True
        await asyncio.sleep(0.05)
        assert await ck.save(None, "ingest", 0, _PACKED, {tp: 2}, lambda: True) is True
        assert ck.store.forgotten == ["ck1"] and ck.ours("ingest", 0) == ["ck2"]

    asyncio.run(asyncio.wait_for(run(), 10))


def test_adopting_another_pointer_deletes_this_workers_older_checkpoint_but_what_it_shares():
    from aiokafka import TopicPartition

    ck = _checkpointer([True])
    tp = TopicPartition("t", 0)
    kept = []

    async def forget(name, pointer, keep=()):
        ck.store.forgotten.append(pointer)
        kept.append(list(keep))

    ck.store.forget = forget

    async def run():
        assert await ck.save(None, "ingest", 0, _PACKED, {tp: 1}, lambda: True) is True
        ck.adopt("ingest", 0, "ck1")  # found in force again: nothing to delete
        await ck.forget_stale()
        assert ck.store.forgotten == []
        ck.adopt("ingest", 0, "theirs")  # another owner's chain (which may start with ck1)
        await ck.forget_stale()
        assert ck.store.forgotten == ["ck1"] and kept == [["theirs"]]

    asyncio.run(run())


def test_a_live_state_is_replaced_when_the_group_points_elsewhere_and_nothing_is_read_without_a_pointer():
    from aiokafka import TopicPartition

    class Store(_Store):
        async def read(self, name, pointer):
            from streams.state import snapshot

            return [snapshot.encode("ingest", {"offsets": {"t": 7}, "from": pointer})]

    group = {"pointer": ""}
    ck = _checkpointer([True], committed=lambda tps: {tps[0]: (7, group["pointer"])})
    ck.store = Store()
    tp = TopicPartition("t", 0)

    async def run():
        assert await ck.load("ingest", None, [tp], live=False) == ("", {}, {})
        assert await ck.save(None, "ingest", 0, _PACKED, {tp: 7}, lambda: True)
        group["pointer"] = "someone-else"  # another worker committed since
        loaded = await ck.load("ingest", None, [tp], live=True)
        assert loaded.pointer == "someone-else" and loaded.offsets == {"t": 7}
        assert loaded.state["from"] == "someone-else" and ck.ours("ingest", 0) == ["someone-else"]

    asyncio.run(run())


def test_a_live_state_with_no_checkpoint_yet_goes_on_when_the_group_has_none_either():
    """A partition kept across a rebalance before its first checkpoint: the group still has
    no pointer, which is where the live state started, so it goes on (not replayed)."""
    from aiokafka import TopicPartition

    ck = _checkpointer([], committed=lambda tps: {})
    tp = TopicPartition("t", 0)

    async def run():
        assert await ck.load("ingest", None, [tp], live=False) == ("", {}, {})
        assert ck.ours("ingest", 0) == [""]
        assert await ck.load("ingest", None, [tp], live=True) is None
        assert await ck.load("ingest", None, [TopicPartition("t", 1)], live=True) == ("", {}, {})  # never adopted

    asyncio.run(run())


def test_a_commit_never_tried_deletes_its_checkpoint():
    from aiokafka import TopicPartition

    ck = _checkpointer([False, False])
    tp = {TopicPartition("t", 0): 1}
    assert asyncio.run(ck.save(None, "ingest", 0, _PACKED, tp, lambda: True)) is False
    assert asyncio.run(ck.save(None, "ingest", 0, _PACKED, tp, lambda: False)) is False  # revoked
    assert ck.store.forgotten == ["ck1", "ck2"] and ck.ours("ingest", 0) == []


def test_commit_offsets_tries_only_what_is_still_assigned_and_reports_a_refusal_or_an_error_as_unknown():
    from aiokafka import TopicPartition
    from aiokafka.errors import CommitFailedError, KafkaError, OffsetMetadataTooLargeError

    from streams.worker.checkpointing import commit_offsets

    tp, other = TopicPartition("t", 0), TopicPartition("t", 1)

    class Consumer:
        def __init__(self, refuse):
            self.refuse, self.commits = refuse, []

        def assignment(self):
            return {tp}

        async def commit(self, offsets):
            if self.refuse:
                raise self.refuse
            self.commits.append(offsets)

    ok = Consumer(refuse=False)
    assert asyncio.run(commit_offsets(ok, {tp: (5, "ck")})) is True and ok.commits == [{tp: (5, "ck")}]
    assert asyncio.run(commit_offsets(ok, {tp: (5, "ck"), other: (1, "ck")})) is False
    assert asyncio.run(commit_offsets(ok, {})) is False and len(ok.commits) == 1
    assert asyncio.run(commit_offsets(Consumer(refuse=CommitFailedError("rebalanced")), {tp: (5, "ck")})) is None
    for error in (KafkaError("UnknownError"), OffsetMetadataTooLargeError()):  # not retried by the client
        assert asyncio.run(commit_offsets(Consumer(refuse=error), {tp: (5, "ck")})) is None


def test_a_partition_revoked_while_its_position_is_asked_for_is_skipped_not_fatal():
    """Another worker joining can take a partition between two awaits of a round; aiokafka
    then refuses `highwater`/`position` for it, which must not end the worker."""
    from aiokafka import TopicPartition
    from aiokafka.errors import IllegalStateError

    w = _worker()
    scores, feedback = (TopicPartition(t, 0) for t in w.merge.topics)

    class Consumer:
        assigned = {scores, feedback}

        def assignment(self):
            return set(self.assigned)

        def highwater(self, tp):
            assert tp in self.assigned, "Partition is not assigned"
            return 10

        async def position(self, tp):
            self.assigned = set()  # the rebalance lands during this await
            raise IllegalStateError(f"Partition {tp} is not assigned")

    w.ingest = Consumer()
    assert asyncio.run(w.at_end(0)) is None
    w.ingest.assigned = {scores, feedback}

    async def settled(tp):
        return 10

    w.ingest.position = settled
    assert asyncio.run(w.at_end(0)) == {scores.topic: True, feedback.topic: True}
    w.ingest.assigned = {scores}  # already gone before the round asks
    assert asyncio.run(w.at_end(0)) is None


def test_a_step_trims_the_heap_every_few_seconds(monkeypatch):
    """Freed memory (flushed RocksDB memtables, finished batches) goes back to the OS while the
    worker runs, not only after checkpoints."""
    import streams.worker.worker as worker_module
    from streams.worker.memory import TRIM_EVERY_S

    trims, now = [], [1000.0]
    monkeypatch.setattr(worker_module, "trim_heap", lambda: trims.append(1))
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: now[0])
    w = _worker()

    async def nothing(*written):
        return []

    async def loaded():
        return None

    monkeypatch.setattr(w, "ingest_round", nothing)
    monkeypatch.setattr(w, "aggregate_round", nothing)
    monkeypatch.setattr(w.assignments, "load", loaded)
    w.delivery.send = None  # nothing to send: never called
    asyncio.run(w.step())
    now[0] = 1000.0 + TRIM_EVERY_S
    asyncio.run(w.step())
    asyncio.run(w.step())
    assert trims == [1]  # once per period


def test_every_partition_s_join_store_shares_the_worker_s_memtable_budget(tmp_path):
    w = _worker(state_dir=str(tmp_path), join_memtable_mb=32, join_block_cache_mb=8)
    try:
        stages = [w.stages.open(p, {}, {}) for p in range(3)]
        assert all(s.join.write_buffers is w.stages.write_buffers for s in stages)
        assert w.stages.write_buffers.get_buffer_size() == 32 << 20
        assert all(s.join.block_cache is w.stages.block_cache for s in stages)  # and its block cache
        assert {s.join.db.property_int_value("rocksdb.block-cache-capacity") for s in stages} == {8 << 20}
    finally:
        w.stages.close_all()
    assert not list(tmp_path.iterdir())  # each join store's directory goes with its stage
    from streams.settings import load

    with pytest.raises(ValueError, match="join_memtable_mb"):
        load(overrides={"join_memtable_mb": 4}, env={})
    assert load(env={"NPO_JOIN_MEMTABLE_MB": "256"}).join_memtable_mb == 256
    with pytest.raises(ValueError, match="join_block_cache_mb"):
        load(overrides={"join_block_cache_mb": 0}, env={})
    assert load(env={"NPO_JOIN_BLOCK_CACHE_MB": "64"}).join_block_cache_mb == 64


def test_a_checkpoint_in_force_is_committed_again_once_its_commit_is_old():
    """Kafka lets a memberless group's offsets expire after their last commit; a partition that
    receives nothing is never checkpointed again, so its commit is made again."""
    from aiokafka import TopicPartition

    from streams.state import snapshot
    from streams.worker.checkpointing import Checkpointer

    class Store(_Store):
        async def read(self, name, pointer):
            return [snapshot.encode("ingest", {"offsets": {"t": 5}})]

    commits = []

    async def commit(consumer, offsets):
        commits.append(offsets)
        found["pointer"] = next(iter(offsets.values()))
        return True

    found = {"pointer": (5, "ck-found")}

    async def read_committed(consumer, tps):
        return {tps[0]: found["pointer"]} if found else {}

    ck = Checkpointer("g", Store(), commit=commit, read_committed=read_committed)
    tp = TopicPartition("t", 0)

    async def run():
        assert await ck.load("ingest", None, [tp], live=False)
        assert await ck.refresh(None, "ingest", 0, 3600.0, lambda: True)  # found committed: age unknown
        assert commits == [{tp: (5, "ck-found")}]
        assert not await ck.refresh(None, "ingest", 0, 3600.0, lambda: True)  # just made
        assert await ck.save(None, "ingest", 0, _PACKED, {tp: 9}, lambda: True)
        assert not await ck.refresh(None, "ingest", 0, 0.0, lambda: False)  # no longer ours
        assert await ck.refresh(None, "ingest", 0, 0.0, lambda: True)
        assert commits[-1] == {tp: (9, "ck1")} and len(commits) == 3  # the save's commit, then its refresh
        assert not await ck.refresh(None, "ingest", 1, 0.0, lambda: True)  # nothing in force there
        assert ck.counters["checkpoint_refreshes", "ingest"] == 2
        found.clear()  # the group's offsets were deleted: what this worker committed is not in force
        assert await ck.load("ingest", None, [tp], live=False) == ("", {}, {})
        assert not await ck.refresh(None, "ingest", 0, 0.0, lambda: True) and len(commits) == 3

    asyncio.run(run())


def test_the_schedule_refreshes_every_held_partition_s_checkpoint_and_skips_those_between_owners(tmp_path):
    from aiokafka import TopicPartition

    from streams.settings import Settings
    from streams.worker.checkpoint_schedule import CheckpointSchedule
    from streams.worker.checkpointing import Checkpointer
    from streams.worker.worker import Worker

    commits = []

    async def commit(consumer, offsets):
        commits.append((consumer, offsets))
        return True

    host = Worker(Settings(state_dir=str(tmp_path)))
    async def nothing_committed(consumer, tps):
        return {}

    ck = Checkpointer("g", _Store(), commit=commit, read_committed=nothing_committed)
    between = {("ingest", 1)}
    schedule = CheckpointSchedule(ck, host.stages, host.monitors, "partials", 30.0,
                                  loading=lambda role, p: (role, p) in between)
    schedule.consumers = {"ingest": "ingest-consumer", "aggregate": "aggregate-consumer"}

    async def run():
        for p in (0, 1):
            host.stages.open(p, {}, {})
            assert await ck.save(None, "ingest", p, _PACKED, {TopicPartition("scores", p): 3 + p}, lambda: True)
        host.monitors.open(2, {}, None)
        assert await ck.save(None, "aggregate", 2, _PACKED, {TopicPartition("partials", 2): 7}, lambda: True)
        commits.clear()
        await schedule.refresh(3600.0)
        assert commits == []  # committed just now
        await schedule.refresh(0.0)
        assert sorted(commits, key=str) == [("aggregate-consumer", {TopicPartition("partials", 2): (7, "ck3")}),
                                            ("ingest-consumer", {TopicPartition("scores", 0): (3, "ck1")})]

    try:
        asyncio.run(run())
    finally:
        host.stages.close_all()


def test_records_deleted_before_a_checkpoint_resumes_are_counted_and_logged_by_topic(caplog):
    from collections import Counter

    from aiokafka import TopicPartition

    from streams.worker.retention import count_lost

    counters = Counter()
    resume_at = {TopicPartition("s", 0): 100, TopicPartition("s", 1): 50, TopicPartition("f", 0): 7,
                 TopicPartition("f", 1): 9}
    # s/0 and f/0 lost records; s/1's log starts where it resumes; f/1's start is unknown
    log_start = {TopicPartition("s", 0): 130, TopicPartition("s", 1): 50, TopicPartition("f", 0): 8}
    with caplog.at_level("ERROR", logger="npo.worker"):
        assert count_lost(counters, resume_at, log_start) == {TopicPartition("s", 0): 130, TopicPartition("f", 0): 8}
    assert counters == Counter({("lost_to_retention", "s"): 30, ("lost_to_retention", "f"): 1})
    assert [r.getMessage() for r in caplog.records] == [
        "f[0]: 1 records (offsets 7 to 7) were deleted before they were read, by retention or delete-records; "
        "going on from 8",
        "s[0]: 30 records (offsets 100 to 129) were deleted before they were read, by retention or "
        "delete-records; going on from 130"]
    assert count_lost(counters, {TopicPartition("s", 0): 130}, log_start) == {}  # resumes at the log's start
