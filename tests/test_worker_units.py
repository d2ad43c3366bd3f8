"""Pure pieces of the Kafka worker: the partials wire format, the co-partition merge, output events."""
from __future__ import annotations

import asyncio
from collections import namedtuple

import msgspec
import numpy as np
import pytest

import schemas
from kernels.layout import PAIR_B, PAIR_N, StateLayout
from streams.config import MonitorConfig
from streams.events import WindowStatsEvent
from streams.operators.aggregate import WindowResult
from streams.operators.windows import Partials
from streams.worker import partials as codec
from streams.worker.merge import CoPartitionMerge
from streams.worker.outputs import window_stats_events

Rec = namedtuple("Rec", "topic timestamp offset")


def test_partials_round_trip_and_row_selection():
    width = StateLayout().width
    rows = np.arange(3 * width, dtype=float).reshape(3, width)
    p = Partials([("a", "x"), ("b", "y"), ("c", "z")], np.array([5, 5, -1]), rows, closed_through=6)
    inp, seq, back = codec.decode(codec.encode(p, 2, 99, np.array([0, 2])), width)
    assert (inp, seq, back.closed_through, back.early) == (2, 99, 6, False)
    assert back.keys == [("a", "x"), ("c", "z")]
    assert back.panes.tolist() == [5, -1]
    assert np.array_equal(back.rows, rows[[0, 2]])
    _, _, empty = codec.decode(codec.encode(p, 2, 100, np.array([], dtype=np.int64)), width)
    assert empty.keys == [] and empty.rows.shape == (0, width) and empty.closed_through == 6


@pytest.mark.parametrize("data", [b"", b"\x93\x01", b"not msgpack at all"])
def test_malformed_partials_are_rejected(data):
    with pytest.raises(ValueError):
        codec.decode(data, StateLayout().width)


def test_partials_with_wrong_width_are_rejected():
    p = Partials([("a", "x")], np.array([1]), np.zeros((1, 10)), closed_through=2)
    with pytest.raises(ValueError, match="shape"):
        codec.decode(codec.encode(p, 0, 1), StateLayout().width)


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


def test_partials_split_into_bounded_messages_give_the_same_windows(monkeypatch):
    """A pane closing with more keys than a message holds goes out in several messages; only
    the last reports progress, so another partition's progress cannot finalise the pane
    before all its rows have arrived."""
    from streams.pipeline import Monitor

    config = MonitorConfig()
    monkeypatch.setattr(codec, "ROWS_PER_MESSAGE", 7)
    parts = {p: _many_keys_stage_partials(config, p, range(p, 60, 2)) for p in (0, 1)}
    assert max(len(x.keys) for x in parts[0]) > 3 * 7

    whole = Monitor(config, partitions=2)
    want = [r for p in (1, 0) for r in whole.add(p, parts[p]).windows]
    split = Monitor(config, partitions=2)
    got, seq = [], 0
    for p in (1, 0):  # partition 1 far ahead: a chunk reporting progress too early would cut panes short
        for part in parts[p]:
            for rows, closed_through in codec.chunks(part, np.arange(len(part.keys))):
                seq += 1
                _, _, back = codec.decode(codec.encode(part, p, seq, rows, closed_through), config.layout.width)
                assert len(back.keys) <= 7
                got += split.add(p, [back]).windows

    def table(results):
        return sorted((r.kind, r.start, key, tuple(r.rows[i])) for r in results for i, key in enumerate(r.keys))

    assert len(table(want)) > 500 and table(got) == table(want)


def _worker():
    """A Worker that is never started: its bookkeeping alone."""
    from streams.settings import load
    from streams.worker.worker import Worker

    return Worker(load(overrides={"topic_prefix": "u."}, env={}))


class _Store:
    """Checkpoint store bookkeeping only: which pointers were written and which deleted."""

    def __init__(self) -> None:
        self.written, self.forgotten = 0, []

    async def write(self, name, packed):
        self.written += 1
        return f"ck{self.written}"

    async def forget(self, name, pointer):
        self.forgotten.append(pointer)


def test_a_checkpoint_whose_commit_may_have_landed_is_kept_and_recognised_as_ours(monkeypatch):
    """A retried commit refused after a rebalance may have landed: deleting that checkpoint
    would leave the group pointing at chunks compaction then drops (takeover fails), and
    not knowing it as ours would throw the live state away for a replay."""
    import streams.worker.worker as worker_module
    from aiokafka import TopicPartition

    w = _worker()
    w.checkpoints = store = _Store()
    outcomes = iter([True, None, True])

    async def commit(consumer, offsets):
        return next(outcomes)

    monkeypatch.setattr(w, "_commit", commit)
    name = w._name("ingest", 0)

    async def run():
        step = lambda: w._commit_checkpoint(None, "ingest", 0, b"", {TopicPartition("t", 0): 1}, lambda: True)
        assert await step() is True  # ck1 committed
        assert await step() is False  # ck2: refused after a rebalance, outcome unknown
        assert store.forgotten == [] and w._unsure[name] == ["ck2"]

        w.stages[0] = object()  # the live stage

        async def committed(consumer, tps):
            return {tps[0]: (1, "ck2")}  # the refused commit had landed

        monkeypatch.setattr(worker_module, "committed", committed)
        assert await w._load("ingest", None, [TopicPartition("t", 0)]) is None  # ours: the stage goes on

        assert await step() is True  # ck3 supersedes both
        assert sorted(store.forgotten) == ["ck1", "ck2"] and name not in w._unsure

        w._unsure[name] = ["ck4", "ck5"]  # in doubt, then the group is found at ck5
        w._loaded("ingest", 0, "ck5")
        assert w._to_forget == [(name, "ck4")] and w._pointers[name] == "ck5" and name not in w._unsure

    asyncio.run(run())


def test_a_commit_never_tried_deletes_its_checkpoint(monkeypatch):
    from aiokafka import TopicPartition

    w = _worker()
    w.checkpoints = store = _Store()

    async def commit(consumer, offsets):
        return False

    monkeypatch.setattr(w, "_commit", commit)
    tp = {TopicPartition("t", 0): 1}
    assert asyncio.run(w._commit_checkpoint(None, "ingest", 0, b"", tp, lambda: True)) is False
    assert asyncio.run(w._commit_checkpoint(None, "ingest", 0, b"", tp, lambda: False)) is False  # revoked
    assert store.forgotten == ["ck1", "ck2"] and not w._unsure


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
    assert asyncio.run(w._at_end(0)) is None
    w.ingest.assigned = {scores, feedback}

    async def settled(tp):
        return 10

    w.ingest.position = settled
    assert asyncio.run(w._at_end(0)) == {scores.topic: True, feedback.topic: True}
    w.ingest.assigned = {scores}  # already gone before the round asks
    assert asyncio.run(w._at_end(0)) is None


def test_a_step_trims_the_heap_every_few_seconds(monkeypatch):
    """Freed memory (flushed RocksDB memtables, finished batches) goes back to the OS while the
    worker runs, not only after checkpoints."""
    import streams.worker.worker as worker_module
    from streams.worker.memory import TRIM_EVERY_S

    w = _worker()
    trims = []
    monkeypatch.setattr(worker_module, "trim_heap", lambda: trims.append(1))

    async def nothing():
        return None

    monkeypatch.setattr(w, "_ingest_round", nothing)
    monkeypatch.setattr(w, "_aggregate_round", nothing)
    asyncio.run(w.step())
    assert trims == []  # not yet due
    w._last_trim -= TRIM_EVERY_S
    asyncio.run(w.step())
    asyncio.run(w.step())
    assert trims == [1]  # once per period


def test_every_partition_s_join_store_shares_the_worker_s_memtable_budget(tmp_path):
    import pytest

    from streams.settings import load
    from streams.worker.worker import Worker

    w = Worker(load(overrides={"topic_prefix": "u.", "state_dir": str(tmp_path), "join_memtable_mb": 32}, env={}))
    try:
        stages = [w._new_stage(p) for p in range(3)]
        assert all(s.join.write_buffers is w._write_buffers for s in stages)
        assert w._write_buffers.get_buffer_size() == 32 << 20
    finally:
        for p in range(3):
            w._close_stage(p)
    with pytest.raises(ValueError, match="join_memtable_mb"):
        load(overrides={"join_memtable_mb": 4}, env={})
    assert load(env={"NPO_JOIN_MEMTABLE_MB": "256"}).join_memtable_mb == 256
