"""Incremental checkpoints: a partition's checkpoint is whole, then a chain of deltas on it.

The store, the checkpointer and the schedule run for real here; only Kafka is replaced by a
log in memory (the produced messages, and a reader over them), so each commit's outcome
can be chosen. Against a real broker, the worker's fault tests cover the same chains.
"""
from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import msgspec
import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.config import MonitorConfig
from streams.kafka.checkpoints import (CHUNK_BYTES, MAX_PIECES, CheckpointError, CheckpointStore, Packed, extendable,
                                      pack_pieces, pieces)
from streams.simulate import SimConfig, simulate
from streams.state import snapshot
from streams.worker.checkpoint_schedule import CheckpointSchedule
from streams.worker.checkpointing import Checkpointer


class _Log:
    """A topic partition in memory: what was produced, and a reader of it."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes | None]] = []
        self._at = 0

    async def send(self, topic, value, key=None, partition=None):
        self.messages.append((key, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(SimpleNamespace(offset=len(self.messages) - 1))
        return done

    def assign(self, tps) -> None:
        pass

    def seek(self, tp, offset) -> None:
        self._at = offset

    async def getmany(self, tp, timeout_ms=0):
        got = [SimpleNamespace(offset=o, key=k, value=v) for o, (k, v) in enumerate(self.messages)][self._at:self._at + 3]
        self._at += len(got)
        return {tp: got}

    def tombstoned(self) -> set[str]:
        """Checkpoint ids some of whose chunks were deleted."""
        return {k.decode().split("/")[-2] for k, v in self.messages if v is None}


def _store() -> tuple[CheckpointStore, _Log]:
    log = _Log()
    return CheckpointStore(log, log, "checkpoints", 1), log


def _ids(pointer: str) -> list[str]:
    return [p["id"] for p in pieces(pointer)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8), st.integers(1, 16), st.booleans())
def test_a_piece_writer_cuts_the_frames_concatenation_into_equal_chunks_wherever_the_frames_end(frames, size,
                                                                                                 abandoned):
    """Compressed bytes written in frames of any sizes (empty ones too) go out as chunks of
    exactly the chunk size as they fill, but the last, sent at the close, whose concatenation
    is the frames' (one empty chunk for an empty piece, so it still has a record to point
    at); a write given up half-way deletes every chunk it sent, and only those."""
    from streams.kafka import checkpoints

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoints, "CHUNK_BYTES", size)
        mp.setattr(checkpoints, "IN_FLIGHT_CHUNKS", 2)
        store, log = _store()
        whole = b"".join(frames)

        async def run():
            writer = store.writer("g-ingest/0")
            for i, frame in enumerate(frames):
                await writer.write(memoryview(frame))
                assert len(log.messages) == (len(b"".join(frames[:i + 1]))) // size  # sent as they fill
            if abandoned:
                await writer.abandon()
                return None
            return await writer.close(len(whole))

        pointer = asyncio.run(run())
    sent = [v for _, v in log.messages if v is not None]
    if abandoned:
        assert len(sent) == len(whole) // size
        assert sorted(k for k, v in log.messages if v is None) == sorted(k for k, v in log.messages if v is not None)
        return
    assert b"".join(sent) == whole
    assert all(len(c) == size for c in sent[:-1]) and 0 < len(sent[-1]) <= size if whole else sent == [b""]
    assert len(sent) == max(1, -(-len(whole) // size)) == pieces(pointer)[0]["chunks"]
    assert [k.decode() for k, _ in log.messages] == [f"g-ingest/0/{pieces(pointer)[0]['id']}/{i}"
                                                       for i in range(len(sent))]


def test_pieces_are_framed_small_ones_gathered_to_about_the_frame_size_large_ones_in_slices_of_it(monkeypatch):
    """A frame is a step's work: small pieces gathered to about `FRAME_BYTES` or up to a None
    (where a checkpoint's join slice ends), a large one cut in slices of `FRAME_BYTES`;
    frames come only as they are asked for."""
    import cramjam

    from streams.kafka import checkpoints

    monkeypatch.setattr(checkpoints, "FRAME_BYTES", 20)
    taken = []

    def given():
        for piece in [b"a" * 10] * 5 + [memoryview(b"b" * 50), b"c" * 3]:
            taken.append(len(piece))
            yield piece

    framer = checkpoints.Framer(given())
    frames = iter(framer)
    assert bytes(cramjam.zstd.decompress(next(frames))) == b"a" * 20 and taken == [10, 10]
    assert [bytes(cramjam.zstd.decompress(f)) for f in frames] == [b"a" * 20, b"a" * 10, b"b" * 20, b"b" * 20,
                                                                   b"b" * 10, b"c" * 3]
    assert framer.size == 103
    marked = checkpoints.Framer([None, b"a" * 3, None, None, b"b" * 4, b"c" * 30, b"d", None, b"e"])
    assert [bytes(cramjam.zstd.decompress(f)) for f in marked] == [b"a" * 3, b"b" * 4, b"c" * 20, b"c" * 10, b"d",
                                                                   b"e"]  # a None ends a frame, if one is begun
    assert marked.size == 39
    packed = pack_pieces([b"x" * 5])
    assert [bytes(cramjam.zstd.decompress(f)) for f in packed.frames] == [b"x" * 5] and packed.size == 5
    assert [bytes(cramjam.zstd.decompress(f)) for f in pack_pieces([]).frames] == [b""]


def test_a_checkpoint_packed_in_pieces_reads_back_as_their_concatenation(monkeypatch):
    """Frames cut into chunks across the frames' ends: read back, they decompress to the whole
    encoding, checked against its digest; one that decompresses to less than its pointer
    declares is refused."""
    from streams.kafka import checkpoints

    monkeypatch.setattr(checkpoints, "FRAME_BYTES", 4096)
    store, _ = _store()
    rng = random.Random(0)  # incompressible: the frames are about as large as the pieces
    pieces_ = [b"head" * 50, b"", rng.randbytes(CHUNK_BYTES - 100), rng.randbytes(CHUNK_BYTES + 200)]

    async def run():
        packed = pack_pieces(list(pieces_))
        assert len(packed.frames) == 1 + 128 + 129  # the head and the empty piece gathered, the large ones sliced
        pointer = await store.write("g-ingest/0", packed)
        assert pieces(pointer)[0]["chunks"] == 3
        assert await store.read("g-ingest/0", pointer) == [b"".join(pieces_)]
        short = await store.write("g-ingest/0", Packed(pack_pieces([b"abc"]).frames, 4))
        with pytest.raises(CheckpointError, match="3 bytes, not the 4"):
            await store.read("g-ingest/0", short)

    asyncio.run(run())


def test_a_delta_s_pointer_names_its_base_s_pieces_and_a_read_returns_them_all_in_order():
    store, log = _store()

    async def run():
        whole = await store.write("g-ingest/0", _packed(b"whole"))
        delta = await store.write("g-ingest/0", _packed(b"delta"), base=whole)
        assert _ids(delta)[:1] == _ids(whole) and len(_ids(delta)) == 2
        assert await store.read("g-ingest/0", delta) == [b"whole", b"delta"]
        await store.forget("g-ingest/0", whole, keep=[delta])  # the newer chain still uses it
        assert log.tombstoned() == set()
        await store.forget("g-ingest/0", delta, keep=[whole])
        assert log.tombstoned() == {_ids(delta)[1]}

    asyncio.run(run())


def test_a_deletion_returns_once_its_tombstones_are_acknowledged_and_raises_when_one_is_refused():
    """A tombstone is refused at its acknowledgement (a batch that expired in an outage), not
    when it is handed to the producer: a deletion that did not wait for them would never learn
    that it failed, and the checkpoint's chunks would stay in the topic for good."""
    from aiokafka.errors import KafkaTimeoutError

    store, log = _store()

    async def refused(topic, value, key=None, partition=None):
        done = asyncio.get_running_loop().create_future()
        done.set_exception(KafkaTimeoutError("batch expired"))
        return done

    async def run():
        whole = await store.write("g-ingest/0", _packed(b"whole"))
        log.send = refused
        with pytest.raises(KafkaTimeoutError):
            await store.forget("g-ingest/0", whole)

    asyncio.run(run())


def test_the_longest_chain_s_pointer_fits_the_commit_metadata_brokers_accept_by_default():
    store, _ = _store()
    huge = 10**18  # offsets and sizes as long as they get

    async def run():
        pointer = ""
        for _ in range(MAX_PIECES):
            pointer = await store.write("g-ingest/0", _packed(b"x"), base=pointer)
        return pointer

    pointer = asyncio.run(run())
    assert len(pieces(pointer)) == MAX_PIECES
    doc = orjson.loads(pointer)
    doc["chain"] = [[p[0], 999, huge, huge, 99, 4 << 30, p[6]] for p in doc["chain"]]
    assert len(orjson.dumps(doc)) <= 4096
    with pytest.raises(ValueError, match="at most"):
        asyncio.run(store.write("g-ingest/0", _packed(b"x"), base=pointer))


def _packed(blob: bytes):
    from streams.kafka.checkpoints import pack

    return pack(blob)


def test_pointers_are_parsed_strictly_and_a_chain_is_extended_only_while_its_deltas_are_smaller():
    piece = {"id": "a1", "partition": 0, "first": 0, "last": 0, "chunks": 1, "bytes": 100, "sha256": "x"}
    v1 = orjson.dumps({"v": 1, **piece}).decode()
    assert pieces(v1) == [{"v": 1, **piece}] and extendable(v1)  # a checkpoint from before chains
    fields = ("id", "partition", "first", "last", "chunks", "bytes", "sha256")
    chain = lambda *sizes: orjson.dumps({"v": 2, "chain": [[{**piece, "bytes": b}[f] for f in fields]  # noqa: E731
                                                           for b in sizes]}).decode()
    assert extendable(chain(100, 40, 59)) and not extendable(chain(100, 40, 60))  # deltas as large as the whole
    assert not extendable(chain(*[100] + [1] * (MAX_PIECES - 1))) and extendable(chain(*[100] + [1] * (MAX_PIECES - 2)))
    assert not extendable("")
    assert pieces(chain(100, 5))[1] == {**piece, "bytes": 5}
    for bad in ["", "{}", '{"v": 3, "chain": []}', '{"v": 2, "chain": []}', '{"v": 2, "chain": [{}]}',
                '{"v": 2, "chain": [[1, 2]]}', chain(*[100] * (MAX_PIECES + 1)), '{"v": 2, "chain": "x"}',
                chain(100).replace('"a1"', '"../x"'), chain(100).replace("100", "-1"), "[1]", "null"]:
        with pytest.raises(CheckpointError):
            pieces(bad)


@pytest.fixture(scope="module")
def messages():
    sim = simulate(SimConfig(seed=5, n_windows=12, decisions_per_window=60))
    return [orjson.dumps(e) for e in sim.events]


def test_the_schedule_writes_a_whole_checkpoint_then_deltas_and_a_load_of_the_chain_is_the_state(tmp_path, messages):
    """Whole, then deltas; a delta whose commit may have landed is kept until superseded,
    and then deleted without the pieces the newer chain shares with it; a live state kept
    across a rebalance whose group turned out to point at such a delta goes on with a delta
    on the checkpoint before it, where its changes count from; a stage whose changes do
    not count from the checkpoint in force is checkpointed whole."""
    from streams.settings import load
    from streams.worker.worker import Worker

    outcomes, group = [], {}  # outcomes: (what the commit answers, whether it landed)

    async def commit(consumer, offsets):
        answer, landed = outcomes.pop(0)
        if landed:
            group["pointer"] = next(iter(offsets.values()))[1]
        return answer

    async def read_committed(consumer, tps):
        return {tp: (1, group["pointer"]) for tp in tps} if group.get("pointer") else {}

    host = Worker(load(overrides={"topic_prefix": "u.", "state_dir": str(tmp_path)}, env={}))
    store, log = _store()
    ck = Checkpointer("g", store, commit=commit, read_committed=read_committed)
    schedule = CheckpointSchedule(ck, host.stages, host.monitors, "partials", 0.0)
    schedule.consumers = {"ingest": None, "aggregate": None}
    host.router.partitions = 2  # what the worker learns from the broker at start
    stage = host.stages.open(0, {}, {})
    tp = TopicPartition(host.stages.topics["scores"], 0)
    feed = iter([0, *range(4000, len(messages), 100)])  # a large state first, then small changes

    async def checkpoint(answer, landed=None) -> str:
        i = next(feed)
        n = 4000 if i == 0 else 100
        host.stages.process(0, [SimpleNamespace(value=m, topic=tp.topic, offset=i + j)
                                for j, m in enumerate(messages[i:i + n])])
        outcomes.append((answer, bool(answer) if landed is None else landed))
        await schedule.all()
        return ck.pointer("ingest", 0)

    async def run():
        p1 = await checkpoint(True)
        whole = ck.counters["checkpoint_bytes", "ingest"]
        assert whole > 0 and ck.counters["checkpoint_delta_bytes", "ingest"] == 0
        p2 = await checkpoint(True)
        assert len(pieces(p1)) == 1 and _ids(p2)[0] == _ids(p1)[0] and len(pieces(p2)) == 2
        assert log.tombstoned() == set()  # p1's only piece is p2's first
        assert await checkpoint(None) == p2  # p3: may have landed; p2 stays in force
        p4 = await checkpoint(True)  # a delta on p2 holding p3's changes too
        assert _ids(p4)[:2] == _ids(p2) and len(pieces(p4)) == 3
        assert len(log.tombstoned()) == 1 and not log.tombstoned() & set(_ids(p4))  # p3's own piece only
        assert ck.counters["checkpoint_deltas", "ingest"] == 2 and ck.counters["checkpoints", "ingest"] == 3
        # the deltas' bytes are what the committed checkpoints hold beyond the whole one
        assert 0 < ck.counters["checkpoint_delta_bytes", "ingest"] == ck.counters["checkpoint_bytes", "ingest"] - whole

        loaded = await ck.load("ingest", None, [tp], live=False)
        assert loaded.pointer == p4 and len(loaded.state["deltas"]) == 2
        again = host.stages.open(1, loaded.state, loaded.offsets, loaded.pointer)
        assert snapshot.encode("ingest", again.dump()) == snapshot.encode("ingest", stage.dump())
        assert loaded.offsets == {tp.topic: 4300}
        host.stages.close(1)

        assert await checkpoint(None, landed=True) == p4  # p5: answered as refused, but landed
        p5 = group["pointer"]
        assert await ck.load("ingest", None, [tp], live=True) is None  # ours: the live stage goes on
        p6 = await checkpoint(True)  # a delta on p4, where the stage's changes count from
        assert _ids(p6)[:3] == _ids(p4) and len(pieces(p6)) == 4 and _ids(p5)[3] in log.tombstoned()
        assert not log.tombstoned() & set(_ids(p6))

        host.stages.open(1, {}, {}, "")  # a stage whose changes count from nothing
        c = host.stages.capture(1, base=p6)
        assert c.body.delta is False and host.stages.captures == {1: c}
        with pytest.raises(RuntimeError, match="already under way"):  # it would take c's changes
            host.stages.capture(1, base=p6)
        host.stages.taken(c)
        assert host.stages.captures == {}

    try:
        asyncio.run(run())
    finally:
        host.stages.close_all()


def test_a_checkpoint_is_sent_as_it_is_taken_and_one_given_up_half_way_is_deleted(tmp_path, messages, monkeypatch):
    """A whole checkpoint's chunks go out round by round as its join is taken, so it is never
    held whole. Its partition revoked half-way, the capture lets go of the join store's view
    before the store closes, gives no more frames, and the next round deletes every chunk it
    sent and nothing else; nothing is committed. The next owner's checkpoint is whole and
    loads as its state."""
    from streams.kafka import checkpoints
    from streams.pipeline import PartitionStage
    from streams.settings import load
    from streams.worker import checkpoint_schedule
    from streams.worker.worker import Worker

    monkeypatch.setattr(checkpoints, "CHUNK_BYTES", 50)
    monkeypatch.setattr(checkpoints, "FRAME_BYTES", 200)
    monkeypatch.setattr(PartitionStage.capture, "__defaults__", (40, False))  # slices of 40 entries
    monkeypatch.setattr(checkpoint_schedule, "STEP_BUDGET_S", 0.0)  # a frame a round
    commits = []

    async def commit(consumer, offsets):
        commits.append(offsets)
        return True

    async def read_committed(consumer, tps):
        return {tp: (1, next(iter(commits[-1].values()))[1]) for tp in tps} if commits else {}

    host = Worker(load(overrides={"topic_prefix": "u.", "state_dir": str(tmp_path)}, env={}))
    store, log = _store()
    ck = Checkpointer("g", store, commit=commit, read_committed=read_committed)
    schedule = CheckpointSchedule(ck, host.stages, host.monitors, "partials", 1e9)
    schedule.consumers = {"ingest": None, "aggregate": None}
    host.router.partitions = 2
    tp = TopicPartition(host.stages.topics["scores"], 0)

    def fed(p):
        host.stages.open(p, {}, {})
        host.stages.process(p, [SimpleNamespace(value=m, topic=tp.topic, offset=j) for j, m in enumerate(messages)])
        return host.stages.capture(p)

    async def run():
        c = fed(0)
        for _ in range(3):
            await schedule.step()
        sent = len(log.messages)
        assert sent > 0 and c.writer.chunks == sent and host.stages.captures == {0: c}
        await schedule.step()
        assert len(log.messages) > sent  # more with each round, as the join is taken
        host.stages.close(0)  # revoked half-way
        assert host.stages.dropped == [(0, c.writer)] and not list(tmp_path.glob("join-p0-*"))
        with pytest.raises(RuntimeError, match="released"):  # its checkpoint would lack the join
            c.next_frame()
        with pytest.raises(RuntimeError, match="released"):
            c.body.step()
        written = {k for k, v in log.messages}
        await schedule.all()  # a clean stop deletes them too
        assert host.stages.dropped == [] and commits == []
        assert {k for k, v in log.messages if v is None} == written and len(log.tombstoned()) == 1

        c = fed(0)  # its write fails half-way: counted, nothing in force, deleted after the next commit
        await schedule.step()
        sent, send = len(log.messages), log.send

        async def refused(*args, **kwargs):
            raise KafkaTimeoutError("broker away")

        log.send = refused
        await schedule.step()
        assert ck.counters["checkpoint_write_errors"] == 1 and commits == [] and len(log.messages) == sent
        assert host.stages.captures[0] is not c  # its partition is checkpointed again, whole
        with pytest.raises(RuntimeError, match="released"):
            c.next_frame()
        log.send = send
        host.stages.close(0)
        assert host.stages.dropped == []  # the new one had written nothing

        c = fed(0)
        assert not c.body.delta
        await schedule.all()
        assert len(commits) == 1 and ck.counters["checkpoint_bytes", "ingest"] == c.size > 1_000 * 50
        assert len(log.tombstoned()) == 2  # the failed write's chunks, once a commit landed
        assert {k for k, v in log.messages if v is None} == {k for k, v in log.messages[:sent] if v is not None}
        loaded = await ck.load("ingest", None, [tp], live=False)
        again = host.stages.open(1, loaded.state, loaded.offsets, loaded.pointer)
        assert snapshot.encode("ingest", again.dump()) == snapshot.encode("ingest", host.stages.get(0).dump())

    try:
        asyncio.run(run())
    finally:
        host.stages.close_all()


def test_the_log_of_changes_holds_a_batch_in_half_its_msgpack_bytes_and_gives_it_back_whole():
    """The log grows between a partition's checkpoints, and is most of what a worker's RSS swings
    by: each batch is kept LZ4-compressed (ids and names repeat within a batch), and a delta made
    from it holds exactly the entries written, in order: a batch's score pages hold its scores."""
    import random

    import numpy as np

    from streams.operators.join import FeedbackJoin
    from streams.operators.score_pages import rows_at

    rng = random.Random(3)
    join = FeedbackJoin(None, horizon_s=86_400.0)
    join.take_changes()
    written = []
    for b in range(4):
        sids = [f"drift-{i % 5}-{b}-{i:06d}" for i in range(5000)]
        contexts = [(f"policy-{i % 5}-triage", f"region-{i % 3}", rng.random(), 0.5, "act", 1.7e9 + b + i / 1e4)
                    for i in range(5000)]
        join.add_scores(sids, contexts)
        written += contexts
    taken = join.take_changes()
    entries = [e for part in join.changes_lazily(taken)[1] for e in msgspec.msgpack.decode(part)]
    assert len(entries) == 4 * (20 + 2)  # 20 pages of 256, a serial and an expiry entry a batch
    assert taken.rows == 20_000 + 4 * 2  # a page counts as its scores
    pages = {k: v for k, v in entries if k.startswith(b"p:")}
    serials = np.concatenate([np.arange(256 * (b * 20 + 1), 256 * (b * 20 + 1) + 5000) for b in range(4)])
    assert rows_at(serials, lambda keys: [pages.get(k) for k in keys]) == written
    plain = len(msgspec.msgpack.encode(entries))
    assert sum(map(len, taken.log)) < plain / 2
    join.close()


def test_a_delta_names_no_score_deletions_but_a_load_of_it_deletes_the_expired_scores_of_the_base():
    """Scores expire a batch at a time with their expiry entry: a delta names that entry's
    deletion, and applying it deletes the scores it lists that the base holds (a join that
    turns over between checkpoints would otherwise name every expired score). A score
    written and expired between two captures is put by the delta, with its entry, and
    deleted again by the entry's deletion."""

    from streams.operators.join import FeedbackJoin
    from streams.operators.score_pages import rows_at

    ctx = lambda ts: ("p", "default", 0.5, 0.5, "act", ts)  # noqa: E731
    join = FeedbackJoin(None, horizon_s=10.0, expire_every_s=0.0)
    join.add_scores(["old"], [ctx(0.0)])
    join.take_changes()
    base = join.dump()  # the first capture holds "old"
    join.add_scores(["young"], [ctx(1.0)])
    join.add_scores(["now"], [ctx(30.0)])
    join.expire()
    taken = join.take_changes()
    counters, parts = join.changes_lazily(taken)
    parts = list(parts)
    entries = [(k, v) for part in parts for k, v in msgspec.msgpack.decode(part)]
    assert len(entries) == taken.rows  # a page of one score is one row
    # young's and now's score pages, numbered after old's (a batch starts a page)
    pages = [(k, v) for k, v in entries if k.startswith(b"p:")]
    assert [k for k, _ in pages] == [b"p:" + (2).to_bytes(8, "big"), b"p:" + (3).to_bytes(8, "big")]
    assert [row[5] for row in rows_at([512, 768], lambda keys: [dict(pages)[k] for k in keys])] == [1.0, 30.0]
    assert all(v is not None for _, v in pages)  # no score deletion is named
    assert join.expired_scores == 2
    expired = [k for k, v in entries if k.startswith(b"x:") and v is None]
    assert len(expired) == 2  # old's entry, and young's (written and expired in between)
    again = FeedbackJoin(None, horizon_s=10.0, expire_every_s=0.0)
    again.load(base)
    again.apply({**counters, "parts": parts})
    assert again.dump() == join.dump() and set(again.scores_of(["old", "young", "now"])) == {"now"}
    join.release("never-parked")
    join.expire()  # nothing left to expire: a batch that changes nothing is not logged
    assert join.take_changes().log == []
    assert join.changed_share() == 0.0
    join.add_scores([f"s{i}" for i in range(10)], [ctx(31.0)] * 10)
    assert 0.5 < join.changed_share() <= 12 / 3  # most of the store is new: a whole checkpoint pays
    for j in (join, again):
        j.close()


@pytest.mark.parametrize("expires", ["after the capture is given up", "while it is taken"])
def test_scores_of_a_capture_that_never_came_into_force_that_expire_before_the_next_are_in_no_delta(expires):
    """A capture given up (its commit failed) hands its changes back; the scores among them
    are not in the checkpoint in force, so when they expire before the next capture, the
    next delta must not put them back: a load of it would hold scores the live join forgot.
    Also when a second capture (a dump) is taken and given up while the first is taken."""
    from streams.operators.join import FeedbackJoin

    ctx = lambda ts: ("p", "default", 0.5, 0.5, "act", ts)  # noqa: E731
    join = FeedbackJoin(None, horizon_s=10.0, expire_every_s=0.0)
    join.add_scores(["old"], [ctx(0.0)])
    join.take_changes()
    base = join.dump()  # the checkpoint in force holds "old"
    join.add_scores(["between"], [ctx(1.0)])
    taken = join.take_changes()  # a capture begins; "between" is in it
    join.keep_changes(join.take_changes())  # a dump, taken and given up meanwhile
    join.add_scores(["now"], [ctx(30.0)])
    if expires == "while it is taken":
        join.expire()
    join.keep_changes(taken)  # the capture is given up
    join.expire()
    assert join.expired_scores == 2
    counters, parts = join.changes_lazily(join.take_changes())
    again = FeedbackJoin(None, horizon_s=10.0, expire_every_s=0.0)
    again.load(base)
    again.apply({**counters, "parts": list(parts)})
    assert set(again.scores_of(["old", "between", "now"])) == set(join.scores_of(["old", "between", "now"])) == {"now"}
    assert again.dump() == join.dump()
    for j in (join, again):
        j.close()


def test_a_join_that_changed_in_more_keys_than_it_tracks_drops_the_set_and_is_checkpointed_whole(monkeypatch):
    """The set of changed keys is bounded (half the store, at least `_TRACK_MIN`): past it
    a delta would not pay, so the set is let go and the next capture is whole, also after
    a capture that took such changes was abandoned."""
    from streams.operators import join as join_module
    from streams.pipeline import PartitionStage

    monkeypatch.setattr(join_module, "_TRACK_MIN", 5)
    ctx = lambda ts: ("p", "default", 0.5, 0.5, "act", ts)  # noqa: E731
    stage = PartitionStage(MonitorConfig())
    join = stage.join
    join.add_scores([f"a{i}" for i in range(20)], [ctx(0.0)] * 20)
    stage.committed(stage.capture())  # tracking starts; the limit is half of ~23 rows (a score each)
    join.add_scores(["b0", "b1"], [ctx(1.0)] * 2)
    assert join.changed_share() < 0.5 and stage.delta_pays()
    join.add_scores([f"c{i}" for i in range(20)], [ctx(2.0)] * 20)
    assert join.changed_share() == float("inf") and not stage.delta_pays()
    capture = stage.capture(delta=True)
    assert capture.delta is False and capture.changed.log is None
    stage.abandoned(capture)  # what it took is unknown: the next one is whole too
    assert not stage.delta_pays() and stage.capture(delta=True).delta is False
    join.add_scores(["d0"], [ctx(3.0)])
    assert stage.delta_pays() and stage.capture(delta=True).delta is True  # counted afresh
    stage.close()


def test_the_schedule_takes_deltas_and_whole_checkpoints_in_two_lanes_each_oldest_first(monkeypatch):
    """One delta and one whole checkpoint may be under way at once, of different partitions: a
    whole checkpoint of a large join, which takes many rounds, never holds the other
    partitions' deltas back (they would then hold more than the interval's changes, and their
    chains reach their whole state sooner). Within a lane, the partition begun longest ago goes
    first; each partition at most once an interval; none between owners; none twice at once."""
    from streams.worker import checkpoint_schedule

    now, begun = [100.0], []
    monkeypatch.setattr(checkpoint_schedule.time, "monotonic", lambda: now[0])

    class Stages:  # partitions 0 and 1 would be deltas against their bases, 2, 3 and 4 whole
        stages = dict.fromkeys(range(5))
        dirty = {0, 1, 2, 3, 4}  # every partition keeps moving
        captures = {}

        @staticmethod
        def delta_ready(p, base):
            return base == f"base{p}" and p in (0, 1)

        @staticmethod
        def capture(p, base):
            base = base if Stages.delta_ready(p, base) else ""
            begun.append((p, base))
            Stages.captures[p] = SimpleNamespace(partition=p, base=base)

    checkpointer = SimpleNamespace(delta_base=lambda role, p: f"base{p}")

    def run(schedule, times, done=()):
        """The partitions begun at each time, after the captures of `done[i]` finished."""
        picks = []
        for i, t in enumerate(times):
            now[0] = t
            for p in (done[i] if i < len(done) else ()):
                del Stages.captures[p]
            picks.append(ps := schedule.next_partitions(t))
            for p in ps:
                schedule.begin(p)
        return picks

    schedule = CheckpointSchedule(checkpointer, Stages, None, "partials", 10.0, loading=lambda role, p: p == 4)
    # a delta and a whole at once; 4 is between owners; a lane waits while its checkpoint is
    # under way, and a partition is not due again until 10 s after it was begun
    picks = run(schedule, [100.0, 101.0, 102.0, 103.0, 104.0, 111.0, 112.0],
                done=[(), (), (0,), (1,), (2,), (), (0, 3)])
    assert picks == [[0, 2], [], [1], [], [3], [0], [1, 2]]
    assert begun[:3] == [(0, "base0"), (2, ""), (1, "base1")]
    assert Stages.captures.keys() == {1, 2}  # one of each lane


def test_rounds_longer_than_the_interval_still_begin_input_checkpoints(monkeypatch):
    """The monitors are due at every round when a round takes longer than the interval; the
    input partitions' checkpoints must not wait behind them."""
    from streams.worker import checkpoint_schedule

    now, begun = [0.0], []
    monkeypatch.setattr(checkpoint_schedule.time, "monotonic", lambda: now[0])
    stages = SimpleNamespace(stages={0: None}, dirty={0}, captures={}, dropped=[], delta_ready=lambda p, base: False,
                             capture=lambda p, base: begun.append(p))
    monitors = SimpleNamespace(dirty=set())
    schedule = CheckpointSchedule(SimpleNamespace(delta_base=lambda role, p: ""), stages, monitors, "partials", 0.5)

    async def rounds():
        for _ in range(3):
            now[0] += 1.0
            await schedule.step()

    asyncio.run(rounds())
    assert begun == [0, 0, 0]


def test_a_round_steps_each_checkpoint_under_way_but_not_one_whose_partition_was_revoked_meanwhile(monkeypatch):
    """Each round takes a step of both lanes' checkpoints: frames written for up to the step's
    budget. A partition revoked while a checkpoint is written (the round awaits the broker,
    and a rebalance may run then) has its store closed: its checkpoint is dropped, never
    stepped again, and what it wrote is deleted at the next round."""
    from streams.worker import checkpoint_schedule

    steps, written, saved, abandoned, clock = [], [], [], [], [0.0]
    monkeypatch.setattr(checkpoint_schedule.time, "perf_counter", lambda: clock[0])

    class Capture(SimpleNamespace):
        writer, size = None, 7

        def next_frame(self):  # a frame takes 0.6 of the budget
            if not self.left:
                return None
            steps.append(self.partition)
            clock[0] += 0.6 * checkpoint_schedule.STEP_BUDGET_S
            self.left -= 1
            return b"frame"

        def release(self):
            self.left = 0

    def revoke(p):  # as `Stages.close` does
        if (c := captures.pop(p)).writer is not None:
            stages.dropped.append((p, c.writer))

    class Writer(SimpleNamespace):
        async def write(self, frame):
            written.append(self.p)
            if self.p in revoked_in_write:
                revoke(self.p)

    revoked_in_write = set()
    captures = {0: Capture(partition=0, base="", left=1, offsets={}, stage=None),
                1: Capture(partition=1, base="b", left=5, offsets={}, stage=None)}

    async def finish(consumer, role, p, writer, size, commits, still, base=""):
        assert writer.p == p and size == 7
        saved.append(p)
        if saved == [0]:
            revoke(1)  # revoked during the commit of 0's first checkpoint
        return True

    async def abandon(role, p, writer):
        abandoned.append((p, writer.p))

    stages = SimpleNamespace(stages={}, dirty=set(), captures=captures, dropped=[], get=lambda p: None,
                             taken=lambda c: captures.pop(c.partition), settle=lambda c, pointer: None)
    checkpointer = SimpleNamespace(writer=lambda role, p: Writer(p=p), finish=finish, abandon=abandon,
                                   pointer=lambda role, p: "x", delta_base=lambda role, p: "")
    schedule = CheckpointSchedule(checkpointer, stages, SimpleNamespace(dirty=set()), "partials", 1e9)
    schedule.consumers = {"ingest": None}
    asyncio.run(schedule.step())
    assert steps == written == [0] and saved == [0] and captures == {}
    assert stages.dropped == [] and abandoned == []  # 1 had written nothing: nothing to delete

    captures.update({0: Capture(partition=0, base="", left=4, offsets={}, stage=None),
                     1: Capture(partition=1, base="b", left=4, offsets={}, stage=None)})
    asyncio.run(schedule.step())
    assert steps[1:] == written[1:] == [0, 0, 1, 1]  # two frames of each in one round: the second passes the budget
    assert captures[0].left == captures[1].left == 2

    revoked_in_write.add(0)  # revoked during the write of one of its own frames: not asked for another
    asyncio.run(schedule.step())
    assert steps[5:] == [0, 1, 1] and 0 not in captures and captures[1].left == 0 and saved == [0]
    assert [p for p, _ in stages.dropped] == [0] and abandoned == []
    asyncio.run(schedule.step())
    assert abandoned == [(0, 0)] and stages.dropped == [] and saved == [0, 1]  # what 0 wrote is deleted
