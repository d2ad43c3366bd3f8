"""The ingest side of a worker: one `PartitionStage` per input partition it holds.

Each takes its partition's records (scores and feedback merged by timestamp), sends bad
ones to the dead-letter topic and its closed panes to the partials topic, and remembers
the next offset of each input topic, which its checkpoint covers. A partition with
nothing to read for `partition_idle_ms` says so once to every partials partition, so
windows close on the other partitions' event time.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from rocksdict import Cache, WriteBufferManager

from streams import codec
from streams.config import MonitorConfig
from streams.kafka.checkpoints import Framer, PieceWriter
from streams.pipeline import PartitionStage, StageCapture
from streams.state import snapshot
from streams.worker.outputs import PartialsRouter

log = logging.getLogger("npo.worker")

_PARTS = ("stage", "join", "parts")
"""Where an ingest checkpoint's state holds the join's compressed slices (a list)."""


@dataclass
class Capture:
    """An input partition's checkpoint being taken: its stage as of one moment, with the
    partials numbers and offsets of that moment, given as zstd frames (`next_frame`) that the
    schedule writes (`writer`) as they come. `base`: the checkpoint in force it is a delta
    against ("" when whole)."""

    partition: int
    stage: PartitionStage
    body: StageCapture
    numbers: list
    offsets: dict[str, int]
    base: str = ""
    writer: PieceWriter | None = None
    _framer: Framer | None = field(default=None, repr=False)
    _frames: Iterator[memoryview] | None = field(default=None, repr=False)
    _released: bool = field(default=False, repr=False)

    def next_frame(self) -> memoryview | None:
        """The checkpoint's next zstd frame, None once all are given: a streamed piece
        (`snapshot.stream_pieces`) of the stage's state, partials numbers and offsets first,
        then the join's entries (most of a large state), a slice taken and compressed as
        frames are asked for. Neither the join nor the checkpoint is ever held whole; the
        stage's state is handed over at the first call."""
        if self._released:
            raise RuntimeError(f"the checkpoint of input partition {self.partition} was released")
        if self._frames is None:
            kind = "ingest.delta" if self.body.delta else "ingest"
            state = {"stage": self.body.take_state(), "seq": self.numbers, "offsets": self.offsets}
            self._framer = Framer(snapshot.stream_pieces(kind, state, _PARTS, self.body.packed_parts()))
            del state
            self._frames = iter(self._framer)
        return next(self._frames, None)

    @property
    def size(self) -> int:
        """The uncompressed bytes of the frames given so far (of all, once they are)."""
        return self._framer.size if self._framer is not None else 0

    def release(self) -> None:
        """Let go of the join store's view and of the frames not yet given (before the store
        closes): asking for a frame after is an error (its checkpoint would lack the join)."""
        self.body.release()
        if self._frames is not None:
            self._frames.close()
        self._framer, self._frames, self._released = None, None, True


class Stages:
    """Input partition -> its stage, its offsets, and whether it moved since its checkpoint."""

    def __init__(self, config: MonitorConfig, state_dir: str, topics: dict[str, str], router: PartialsRouter,
                 counters: Counter, metrics, memtable_mb: int = 64, idle_ms: float = 60_000,
                 block_cache_mb: int = 32) -> None:
        self.config, self.state_dir, self.topics, self.router = config, state_dir, topics, router
        self.counters, self.metrics, self.idle_s = counters, metrics, idle_ms / 1000
        # one memtable budget and one block cache for every partition's join store: RAM does not
        # grow with partitions
        self.write_buffers = WriteBufferManager(memtable_mb << 20, False)
        self.block_cache = Cache(block_cache_mb << 20)
        self.stages: dict[int, PartitionStage] = {}
        self.offsets: dict[int, dict[str, int]] = {}  # input partition -> next offset of each input topic
        self.dirty: set[int] = set()  # moved since their last checkpoint
        self.bases: dict[int, str] = {}  # partition -> pointer of the checkpoint its changes count from
        self.captures: dict[int, Capture] = {}  # partition -> its checkpoint being taken
        self.dropped: list[tuple[int, PieceWriter]] = []  # writes begun by captures closed with their partition
        self._dirs: dict[int, str] = {}
        self._last_read: dict[int, float] = {}  # when each last had records (monotonic)
        self._idle: set[int] = set()  # partitions whose idleness has been sent

    def get(self, p: int) -> PartitionStage | None:
        return self.stages.get(p)

    def open(self, p: int, state: dict, offsets: dict[str, int], pointer: str = "") -> PartitionStage:
        """A new stage for `p`, from a checkpoint's `state` ({}: empty; a chain's deltas are
        taken in order), the `offsets` it covers, and its `pointer`."""
        self.close(p)
        # the join's pending scores live on disk under state_dir, not in RAM
        os.makedirs(self.state_dir, exist_ok=True)
        path = self._dirs[p] = tempfile.mkdtemp(prefix=f"join-p{p}-", dir=self.state_dir)
        stage = self.stages[p] = PartitionStage(self.config, topic=self.topics["scores"], partition=p,
                                                join_path=path, counters=self.counters,
                                                write_buffers=self.write_buffers, block_cache=self.block_cache)
        if state:
            stage.load(state["stage"])
            for delta in state.get("deltas", ()):
                stage.apply(delta)
        self.bases[p] = pointer
        self.router.restore(p, state.get("seq", []))  # deterministic: a replay repeats the numbers
        self.offsets[p] = dict(offsets)
        self._last_read[p] = time.monotonic()  # idle from now on, if nothing comes
        self._idle.discard(p)
        return stage

    def skip_to(self, p: int, topic: str, offset: int) -> None:
        """The records of `topic` before `offset` are gone from its log: the state of input
        partition `p` goes on from there, and its next checkpoint says so (else every load of
        the old one would find the same records missing)."""
        if p in self.offsets and self.offsets[p].get(topic, offset) < offset:
            self.offsets[p][topic] = offset
            self.dirty.add(p)

    def close(self, p: int) -> None:
        stage = self.stages.pop(p, None)
        capture = self.captures.pop(p, None)
        if capture is not None:
            capture.release()  # its store view goes before the store does
            if capture.writer is not None:  # what it wrote is deleted at the schedule's next step
                self.dropped.append((p, capture.writer))
        if stage is not None:
            stage.close()
        path = self._dirs.pop(p, None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        self.dirty.discard(p)
        self.bases.pop(p, None)

    def close_all(self) -> None:
        for p in list(self.stages):
            self.close(p)

    def process(self, p: int, records: list) -> list[tuple]:
        """Records of partition `p` (Kafka records of either input topic, in merged order): the
        messages they produce."""
        self._last_read[p] = time.monotonic()
        self._idle.discard(p)
        started = time.perf_counter()
        values = [r.value for r in records]
        if None in values:  # a tombstone is an empty message: dead-lettered as not JSON
            values = [v or b"" for v in values]
        out = self.stages[p].process(values, sources=lambda i: (records[i].topic, records[i].offset))
        self.metrics.kernel_seconds.observe(time.perf_counter() - started)
        sends = [(self.topics["deadletters"], codec.encode(dl), None, None) for dl in out.dead_letters]
        sends += self.router.messages(p, out.partials)
        for topic in (self.topics["scores"], self.topics["feedback"]):
            # records of a topic come in offset order: its last is its highest
            last = next((r for r in reversed(records) if r.topic == topic), None)
            if last is not None:
                self.offsets[p][topic] = last.offset + 1
        self.dirty.add(p)
        return sends

    def idleness(self, p: int, drained: bool) -> list[tuple]:
        """The idleness note of `p`, once, when it has had nothing to read (`drained`) for the
        idle time: its next rows for panes already final count as late. The note is in the
        partials log, so a monitor that replays the log decides the same."""
        now = time.monotonic()
        last = self._last_read.setdefault(p, now)
        if p in self._idle or not drained or now - last < self.idle_s:
            return []
        self._idle.add(p)
        log.info("input partition idle", extra={"partition": p})
        return self.router.idleness_note(p)

    def capture(self, p: int, base: str = "") -> Capture | None:
        """Begin `p`'s checkpoint as of now, listed in `captures` until `taken` (None if `p` is
        not held): a delta against `base` (the checkpoint in force, if one may be followed) when
        the stage's changes count from it and are much smaller than its state, else whole."""
        stage = self.stages.get(p)
        if stage is None:
            return None
        if p in self.captures:  # a second would take the changes the first holds, on the same base
            raise RuntimeError(f"a checkpoint of input partition {p} is already under way")
        self.dirty.discard(p)
        body = stage.capture(delta=self.delta_ready(p, base))
        capture = self.captures[p] = Capture(p, stage, body, self.router.numbers(p), dict(self.offsets[p]),
                                             base if body.delta else "")
        return capture

    def taken(self, c: Capture) -> None:
        """`c`'s state is all taken (it gave its last frame), or its write failed: it is no longer
        listed."""
        if self.captures.get(c.partition) is c:
            del self.captures[c.partition]

    def delta_ready(self, p: int, base: str) -> bool:
        """Whether `p`'s checkpoint would now be a delta against `base` (the checkpoint in force,
        if one may be followed): its changes count from it and are much smaller than its state."""
        stage = self.stages.get(p)
        return stage is not None and bool(base) and base == self.bases.get(p) and stage.delta_pays()

    def settle(self, c: Capture, pointer: str) -> None:
        """`c`'s checkpoint came into force as `pointer` (""): it did not, and `c`'s partition
        is checkpointed again at the next chance. Nothing if the stage was replaced since."""
        if self.stages.get(c.partition) is not c.stage:
            return
        if pointer:
            c.stage.committed(c.body)
            self.bases[c.partition] = pointer
        else:
            c.stage.abandoned(c.body)
            self.dirty.add(c.partition)
