"""Checkpointed state: a stage and a monitor written to bytes and taken back mid-run carry on
exactly as if nothing had happened (what makes a restarted worker's results identical)."""
from __future__ import annotations

import itertools
import random

import numpy as np
import orjson
import pytest

from streams.config import MonitorConfig
from streams.demo.runner import run_partitioned
from streams.kafka.producer import partition_for
from streams.operators.dedup import Deduplicator
from streams.operators.windows import Partials
from streams.pipeline import Monitor, PartitionStage
from streams.simulate import SimConfig, simulate
from streams.state import snapshot

CONFIG = MonitorConfig()


@pytest.fixture(scope="module")
def by_partition():
    sim = simulate(SimConfig(seed=21, n_windows=30, decisions_per_window=80))
    events = list(sim.events)
    rng = random.Random(4)
    events += [dict(e) for e in rng.sample(events, 200)]  # duplicates, late in the stream
    out = [[], []]
    for e in events:
        out[partition_for(e["scenario_id"].encode(), 2)].append(orjson.dumps(e))
    return out


def _restored(obj, kind: str, make):
    fresh = make()
    fresh.load(snapshot.decode(kind, snapshot.encode(kind, obj.dump())))
    return fresh


def _run_with_restarts(by_partition, restart_every: int, batch: int = 37):
    """The in-process run, but every `restart_every` batches each stage and the monitor are
    replaced by new ones loaded from their checkpoint bytes."""
    stages = [PartitionStage(CONFIG, partition=p) for p in range(len(by_partition))]
    monitor = Monitor(CONFIG, partitions=len(by_partition))
    windows, triggers = [], []

    def collect(p, partials):
        out = monitor.add(p, partials)
        windows.extend((r.kind, r.start, r.end, tuple(r.keys), r.rows.tobytes()) for r in out.windows)
        triggers.extend(t["trigger_id"] for t in out.triggers)

    longest = max(map(len, by_partition))
    for n, i in enumerate(range(0, longest, batch)):
        for p, messages in enumerate(by_partition):
            collect(p, stages[p].process(messages[i:i + batch], now=0.0).partials)
        if n % restart_every == restart_every - 1:
            for p, stage in enumerate(stages):
                stages[p] = _restored(stage, "stage", lambda p=p: PartitionStage(CONFIG, partition=p))
                stage.close()
            monitor = _restored(monitor, "monitor", lambda: Monitor(CONFIG, partitions=len(by_partition)))
    for p, stage in enumerate(stages):
        collect(p, stage.drain().partials)
        stage.close()
    return windows, triggers


@pytest.mark.parametrize("restart_every", [1, 7])
def test_a_run_restarted_from_checkpoints_equals_the_uninterrupted_run(by_partition, restart_every):
    straight = _run_with_restarts(by_partition, restart_every=10**9)
    restarted = _run_with_restarts(by_partition, restart_every=restart_every)
    assert len(straight[0]) > 100 and straight[1]
    assert restarted == straight
    reference = run_partitioned(by_partition, CONFIG)  # the independent path gives the same triggers
    assert sorted(straight[1]) == sorted(t["trigger_id"] for t in reference.triggers)


def test_checkpoint_bytes_that_do_not_fit_are_refused():
    stage = PartitionStage(CONFIG)
    blob = snapshot.encode("stage", stage.dump())
    with pytest.raises(snapshot.SnapshotError):
        snapshot.decode("monitor", blob)
    with pytest.raises(snapshot.SnapshotError):
        snapshot.decode("stage", blob[: len(blob) // 2])
    with pytest.raises(snapshot.SnapshotError):
        snapshot.decode("stage", b"\xc1garbage")
    msgpack = snapshot.msgspec.msgpack
    bad = msgpack.encode({"format": snapshot.FORMAT, "kind": "stage",
                          "state": {"a": msgpack.Ext(1, msgpack.encode(["<f8", [1000], b"\x00" * 8]))}})
    with pytest.raises(snapshot.SnapshotError):
        snapshot.decode("stage", bad)
    windows = stage.windows.dump()
    windows["state"] = np.zeros((3, 2))
    with pytest.raises(ValueError):
        PartitionStage(CONFIG).windows.load({**windows, "keys": [["p", "s"]]})


def test_pieces_are_written_in_formats_code_that_misreads_them_refuses_and_older_ones_are_still_read():
    """Scores kept in pages are format 4 (whole) and 5 (delta), as score keys numbered in
    arrival order were format 3 and 4: code that read the formats before would not find those
    scores, so it refuses them. A delta's join entries are write batches, whose expired scores
    only their expiry entry's deletion names (format 3 on): code that reads format 2 deltas
    would keep them. Every older format is still read."""
    msgpack = snapshot.msgspec.msgpack
    assert msgpack.decode(snapshot.encode("ingest.delta", {}))["format"] == snapshot.DELTA_FORMAT == 5
    assert msgpack.decode(snapshot.encode("ingest", {}))["format"] == snapshot.FORMAT == 4
    for kind, fmt in [("ingest", 2), ("ingest", 3), ("ingest.delta", 2), ("ingest.delta", 3), ("ingest.delta", 4)]:
        assert snapshot.decode(kind, msgpack.encode({"format": fmt, "kind": kind, "state": {"a": 1}})) == {"a": 1}
    with pytest.raises(snapshot.SnapshotError, match="format-2/3/4 ingest"):
        snapshot.decode("ingest", msgpack.encode({"format": 5, "kind": "ingest", "state": {"a": 1}}))
    with pytest.raises(snapshot.SnapshotError, match="format-2/3/4/5 ingest.delta"):
        snapshot.decode("ingest.delta", msgpack.encode({"format": 6, "kind": "ingest.delta", "state": {}}))


@pytest.mark.parametrize("items", [0, 1, 300])
def test_a_streamed_piece_decodes_to_its_state_and_bad_ones_are_refused(items):
    """A streamed piece (the document in a bin, then its tail's items in bins of their own)
    decodes to the state it was given, its tail back in place; code that reads single
    documents only refuses it. One cut anywhere, a bin running past the end, a document with
    no tail or a tail that is not an empty list of its state is refused."""
    msgpack = snapshot.msgspec.msgpack
    tail = [[i, b"p" * (i % 300)] for i in range(items)]
    state = {"stage": {"join": {"seq": 3, "parts": []}, "dedup": {"ids": np.arange(70_000)}}, "offsets": {"t": 1}}
    blob = b"".join(filter(None, snapshot.stream_pieces("ingest", state, ("stage", "join", "parts"), iter(tail))))
    expected = {**state, "stage": {**state["stage"], "join": {"seq": 3, "parts": tail}}}
    assert snapshot.encode("ingest", snapshot.decode("ingest", blob)) == snapshot.encode("ingest", expected)
    with pytest.raises((snapshot.msgspec.DecodeError, AttributeError)):  # what code before streamed pieces did
        msgpack.decode(blob).get("format")
    for cut in {1, 2, len(blob) // 2, len(blob) - 1}:
        with pytest.raises(snapshot.SnapshotError):
            snapshot.decode("ingest", blob[:cut])
    with pytest.raises(snapshot.SnapshotError, match="undecodable"):
        snapshot.decode("ingest", blob + b"\xc1")
    with pytest.raises(snapshot.SnapshotError, match="runs past"):
        snapshot.decode("ingest", blob + b"\xc4\x05ab")

    def streamed(doc: dict) -> bytes:
        head = snapshot._encoder.encode({"format": snapshot.FORMAT, "kind": "ingest", **doc})
        return b"\xc6" + len(head).to_bytes(4, "big") + head

    for doc in [{"state": {"a": []}}, {"state": {"a": []}, "tail": []}, {"state": {"a": [1]}, "tail": ["a"]},
                {"state": {"a": {}}, "tail": ["a"]}, {"state": {"a": []}, "tail": ["b"]},
                {"state": {"a": []}, "tail": [1]}, {"state": [], "tail": ["a"]}, {"state": {"a": []}, "tail": "a"},
                {"state": {"a": np.arange(3)}, "tail": ["a"]}, {"state": {"a": np.arange(0)}, "tail": ["a"]}]:
        with pytest.raises(snapshot.SnapshotError, match="tail"):
            snapshot.decode("ingest", streamed(doc))
    assert snapshot.decode("ingest", streamed({"state": {"a": []}, "tail": ["a"]})) == {"a": []}
    with pytest.raises(snapshot.SnapshotError, match="format-2/3/4 ingest"):
        snapshot.decode("ingest", b"".join(filter(None, snapshot.stream_pieces("ingest.delta", {"a": []}, ("a",),
                                                                                iter([])))))


def test_an_empty_partials_list_round_trips():
    monitor = Monitor(CONFIG, partitions=2)
    monitor.add(0, [Partials.empty(CONFIG.layout.width, 5)])
    again = _restored(monitor, "monitor", lambda: Monitor(CONFIG, partitions=2))
    assert again.aggregator.closed_through == {0: 5}


def test_a_lazily_dumped_join_holds_the_entries_of_the_moment_it_was_asked_for():
    from streams.operators.join import Context, FeedbackJoin

    def ctx(ts):
        return Context("p", "s", 0.5, 0.5, "act", ts)

    join = FeedbackJoin(None)
    join.add_scores([f"s{i}" for i in range(25)], [ctx(float(i)) for i in range(25)])
    counters, parts = join.dump_lazily(slice_size=10)
    join.add_scores(["early"], [ctx(99.0)])  # written before the first part is taken
    first = next(parts)
    join.add_scores(["late-1", "late-2"], [ctx(100.0), ctx(101.0)])  # written while the dump goes on
    again = FeedbackJoin(None)
    again.load({**counters, "parts": [first, *parts]})
    assert again.lookup(["s0", "s24", "early", "late-1"]) == [ctx(0.0), ctx(24.0), None, None]
    assert join.lookup(["late-1"]) == [ctx(100.0)]
    join.close()
    again.close()


@pytest.mark.parametrize("goes_on", [False, True])
def test_a_checkpoint_is_written_as_its_join_is_taken_and_loads_as_the_capture(by_partition, goes_on, monkeypatch):
    """A large join's whole checkpoint is a few hundred megabytes: it is given as zstd frames
    of about `FRAME_BYTES`, the join's slices taken only as frames are asked for and the
    de-duplication ids read from their table as they are encoded, so none of them is ever
    held whole, and the capture keeps none of its state; the frames together decompress to
    a streamed piece that decodes to exactly the captured state, and a stage loaded from it
    is the captured one. When the stage `goes_on` taking messages between frames (with a
    cap of 400 ids in a ring of 512, so unread ids are overwritten), what is written is still
    the moment of the capture."""
    import cramjam

    from kernels.held_ids import HeldIds
    from streams.kafka import checkpoints
    from streams.worker.stages import Capture

    monkeypatch.setattr(checkpoints, "FRAME_BYTES", 500)
    monkeypatch.setattr(snapshot, "BIG_ARRAY_BYTES", 100)  # ids read in slices of 100 bytes, a few a frame
    copied, guard = [], HeldIds.guard
    monkeypatch.setattr(HeldIds, "guard", lambda self, *a: guard(self, *a) and not copied.append(self.copied))
    config = MonitorConfig(dedup_max_ids=400)
    messages = by_partition[0]
    stage = PartitionStage(config)
    stage.process(messages[:800], now=0.0)
    twin = stage.capture(slice_size=50)  # the same moment, taken whole the plain way
    while twin.step():
        pass
    state = twin.state()
    stage.abandoned(twin)
    at_capture = _encoded(stage.dump())
    body = stage.capture(slice_size=50)
    taken = []
    parts = body.packed_parts
    monkeypatch.setattr(body, "packed_parts", lambda: (taken.append(p) or p for p in parts()))
    capture = Capture(0, stage, body, [[1, 2]], {"t": 9})
    frames = [capture.next_frame()]
    with pytest.raises(RuntimeError, match="handed over"):
        body.state()
    assert len(taken) < len(state["join"]["parts"]) // 2  # slices are taken as frames are asked for
    later = iter(messages[800:5000])
    while (frame := capture.next_frame()) is not None:
        frames.append(frame)
        if goes_on:
            stage.process(list(itertools.islice(later, 60)), now=0.0)
    assert (max(copied, default=0) > 0) == goes_on  # unread ids were about to be overwritten
    aside = stage.counters["checkpoint_bytes_copied_aside"]  # a digest 16 bytes, a time 8
    assert 8 * max(copied, default=0) <= aside <= 16 * max(copied, default=0)
    data = bytes(cramjam.zstd.decompress(b"".join(frames)))
    assert len(taken) == len(state["join"]["parts"]) > 1 and len(frames) > len(taken) // 4
    assert capture.size == len(data) and data[:1] in (b"\xc5", b"\xc6")  # a bin: the streamed form
    expected = {"stage": state, "seq": [[1, 2]], "offsets": {"t": 9}}
    assert snapshot.encode("ingest", snapshot.decode("ingest", data)) == snapshot.encode("ingest", expected)
    loaded = PartitionStage(config)
    loaded.load(snapshot.decode("ingest", data)["stage"])
    assert _encoded(loaded.dump()) == at_capture
    assert (_encoded(stage.dump()) != at_capture) == goes_on
    stage.close()
    loaded.close()


def test_a_checkpoint_released_half_way_leaves_nothing_of_its_ids_guarded(by_partition, monkeypatch):
    """A partition revoked while its checkpoint is written releases the capture: the ids it
    had not read yet are no longer guarded (nothing keeps copying them aside), and one not
    yet begun lets go of them too."""
    from streams.kafka import checkpoints
    from streams.worker.stages import Capture

    monkeypatch.setattr(checkpoints, "FRAME_BYTES", 500)
    monkeypatch.setattr(snapshot, "BIG_ARRAY_BYTES", 100)
    stage = PartitionStage(MonitorConfig(dedup_max_ids=400))
    stage.process(by_partition[0][:800], now=0.0)
    begun = Capture(0, stage, stage.capture(slice_size=50), [], {"t": 1})
    assert begun.next_frame() is not None
    assert stage.dedup.held == 1  # the ids are read a frame at a time
    begun.release()
    stage.abandoned(begun.body)
    waiting = Capture(0, stage, stage.capture(slice_size=50), [], {"t": 1})
    assert stage.dedup.held == 1
    waiting.release()
    stage.process(by_partition[0][800:900], now=0.0)
    assert stage.dedup.held == 0
    with pytest.raises(RuntimeError, match="released"):
        begun.next_frame()
    stage.close()


def _encoded(state: dict) -> bytes:
    return snapshot.encode("ingest", state)


@pytest.mark.parametrize("every_array", [False, True])
@pytest.mark.parametrize("n", [0, 1, 15, 16, 65_535, 65_536])
def test_a_streamed_piece_s_document_is_byte_for_byte_its_encoding(n, every_array, monkeypatch):
    """`stream_pieces` writes some msgpack headers itself (maps, arrays from their own bytes,
    the bins around the document and each item): with each of the three sizes of a map's
    header, and arrays of every dtype checkpointed (one big-endian, one not contiguous, and,
    when every array is taken from its bytes, small and empty ones, whose ext and bin
    headers are the short forms), and de-duplication ids held in their table (50,000, or
    one), the document's bin holds exactly the bytes `encode` gives it, and each item's bin
    its encoding."""
    big = snapshot.BIG_ARRAY_BYTES // 8
    if every_array:
        monkeypatch.setattr(snapshot, "BIG_ARRAY_BYTES", 0)
    arrays = {"f": np.linspace(0, 1, big), "i": np.arange(-big, big, dtype=">i8"),
              "u": np.arange(2 * big, dtype=np.uint64)[::2], "small": np.arange(3), "empty": np.zeros((0, 2)),
              "one": np.array(7.5), "mid": np.arange(5_000)}
    tail = [[i, b"x" * (i % 7)] for i in range(n)]
    dedup = Deduplicator(max_ids=50_000)
    dedup.fresh([str(i) for i in range(60_000 if every_array else 1)], list(range(60_000 if every_array else 1)))
    state = {"a": 1, "stage": {"dedup": arrays, "join": {"seq": 3, "parts": []}, "windows": [1, 2]},
             "wide": {f"k{i}": i for i in range(n)}}
    expected = snapshot.msgspec.msgpack.Encoder(enc_hook=snapshot._enc_hook).encode(
        {"format": snapshot.FORMAT, "kind": "ingest", "state": {**state, "ids": dedup.dump()},
         "tail": ["stage", "join", "parts"]})
    state["ids"] = dedup.dump(held=True)  # read from their table as they are given
    pieces = list(snapshot.stream_pieces("ingest", state, ("stage", "join", "parts"), iter(tail)))
    assert pieces.count(None) == n  # each item ends where a frame may
    bins = snapshot._bins(b"".join(p for p in pieces if p is not None))
    assert bytes(bins[0]) == expected and len(bins) == n + 1
    assert [bytes(b) for b in bins[1:]] == [snapshot.msgspec.msgpack.encode(t) for t in tail]


def test_a_stage_checkpoint_holds_its_state_as_of_the_capture_while_processing_goes_on(by_partition):
    """The worker captures a stage, goes on processing while the join is written out, and
    encodes the checkpoint afterwards: what it encodes must be the captured moment, or a
    restart from it would apply the later messages twice."""
    messages = by_partition[0]
    stage = PartitionStage(CONFIG)
    stage.process(messages[:400], now=0.0)
    capture = stage.capture(slice_size=50)
    frozen = snapshot.encode("stage", {**capture.state(), "join": {}})
    assert capture.step()  # one slice taken, more to come
    stage.process(messages[400:800], now=0.0)  # the stream goes on while the join's parts are taken
    while capture.step():
        pass
    head = capture.state()
    assert len(head["join"]["parts"]) > 1 and snapshot.encode("stage", {**head, "join": {}}) == frozen

    straight = PartitionStage(CONFIG)
    straight.process(messages[:400], now=0.0)
    restored = PartitionStage(CONFIG)
    restored.load(snapshot.decode("stage", snapshot.encode("stage", head)))
    a = straight.process(messages[400:1200], now=0.0)
    b = restored.process(messages[400:1200], now=0.0)
    assert [p.rows.tobytes() for p in a.partials] == [p.rows.tobytes() for p in b.partials]
    assert a.partials and any(p.rows.any() for p in a.partials)
    for s in (stage, straight, restored):
        s.close()


@pytest.mark.parametrize("turnover", [6, 40])
@pytest.mark.parametrize("seed", range(3))
def test_a_chain_of_deltas_restores_exactly_the_state_of_its_last_piece(by_partition, seed, turnover):
    """A worker checkpoints a partition whole, then only what changed, while the stream goes
    on and some checkpoints never come into force (their changes then go into the next):
    a load of the whole piece and the deltas in order must give the state of the last
    capture exactly, and carry on exactly as a stage that never stopped. Horizons and the
    id cap are short here, so scores expire, feedback waits and is released or given up,
    and ids are forgotten and evicted between pieces; with a `turnover` of 40 horizons in the
    stream, scores written before a checkpoint that is abandoned expire before the next."""
    rng = random.Random(seed)
    messages = by_partition[seed % 2]
    times = [orjson.loads(m)["ts"] for m in messages]
    span = max(times) - min(times)
    config = MonitorConfig(join_horizon_s=span / turnover, dedup_horizon_s=span / 5, dedup_max_ids=150)
    stage, chain, taken = PartitionStage(config), [], 0
    deltas = abandoned = 0
    i = 0
    while i < len(messages):
        n = rng.randint(0, 250)
        stage.process(messages[i:i + n], now=0.0)
        i += n
        delta = bool(chain) and rng.random() < 0.75
        capture = stage.capture(slice_size=rng.choice([3, 100, 50_000]), delta=delta)
        expected, at = snapshot.encode("ingest", stage.dump()), i
        for _ in range(rng.randint(0, 3)):  # the stream goes on, before the first slice too
            n = rng.randint(1, 60)
            stage.process(messages[i:i + n], now=0.0)
            i += n
            capture.step()
        while capture.step():
            pass
        if rng.random() < 0.25:  # this checkpoint never comes into force
            stage.abandoned(capture)
            abandoned += 1
            continue
        stage.committed(capture)
        deltas += delta
        piece = snapshot.encode("ingest.delta" if delta else "ingest", {"stage": capture.state(), "offsets": {"t": at}})
        chain = [*chain, piece] if delta else [piece]
        state = snapshot.decode_chain("ingest", chain)
        restored = PartitionStage(config)
        restored.load(state["stage"])
        for d in state.get("deltas", ()):
            restored.apply(d)
        assert state["offsets"] == {"t": at}
        assert snapshot.encode("ingest", restored.dump()) == expected
        if taken == 3:  # once in a while, carry on from the chain: the same output as never stopping
            straight = PartitionStage(config)
            straight.process(messages[:at], now=0.0)
            a, b = straight.process(messages[at:], now=0.0), restored.process(messages[at:], now=0.0)
            assert [p.rows.tobytes() for p in a.partials] == [p.rows.tobytes() for p in b.partials]
            assert [d.raw for d in a.dead_letters] == [d.raw for d in b.dead_letters]
            straight.close()
        restored.close()
        taken += 1
    assert deltas >= 5 and abandoned >= 1 and stage.join.expired_scores > 0 and stage.dedup.evicted > 0
    stage.close()
