"""The aggregate side of a worker: one `Monitor` per partials partition it holds.

Each applies its partition's partials messages in order and once (`PartialsSequencer`),
merges them into final windows, evaluates the rules, and turns what comes out into
window statistics and triggers to publish. Early results of open windows are published
every `early_every_s`.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType

from streams.config import MonitorConfig
from streams.kafka.checkpoints import Packed, pack
from streams.pipeline import Monitor
from streams.state import snapshot
from streams.worker import partials as partials_codec
from streams.worker.outputs import Publisher
from streams.worker.sequencer import PartialsSequencer

log = logging.getLogger("npo.worker")


class Monitors:
    """Partials partition -> its monitor, sequencer, next offset, and whether it moved since
    its checkpoint."""

    def __init__(self, config: MonitorConfig, publisher: Publisher, counters: Counter, metrics,
                 early_every_s: float = 5.0) -> None:
        self.config, self.publisher, self.counters, self.metrics = config, publisher, counters, metrics
        self.early_every_s = early_every_s
        self.input_count = 1  # input partitions: set once the topics are known
        self.monitors: dict[int, Monitor] = {}
        self.sequencers: dict[int, PartialsSequencer] = {}
        self.offsets: dict[int, int] = {}  # partials partition -> next offset
        self.dirty: set[int] = set()
        self._thresholds: dict = {}
        self._last_early = 0.0

    def get(self, q: int) -> Monitor | None:
        return self.monitors.get(q)

    def open(self, q: int, state: dict, offset: int | None) -> Monitor:
        """A new monitor for `q`, from a checkpoint's `state` ({}: empty) and the offset it covers."""
        monitor = self.monitors[q] = Monitor(self.config, partitions=self.input_count, counters=self.counters)
        monitor.set_thresholds(self._thresholds)
        if state:
            monitor.load(state["monitor"])
        self.sequencers[q] = PartialsSequencer({int(i): int(n) for i, n in state.get("applied", [])},
                                               state.get("resync"))
        self.offsets.pop(q, None)
        if offset is not None:
            self.offsets[q] = offset
        return monitor

    def drop(self, q: int) -> None:
        self.monitors.pop(q, None)
        self.sequencers.pop(q, None)
        self.dirty.discard(q)

    def set_thresholds(self, thresholds: dict) -> None:
        """Thresholds in force per key, for every monitor's next windows."""
        self._thresholds = dict(thresholds)
        for monitor in self.monitors.values():
            monitor.set_thresholds(self._thresholds)

    @property
    def thresholds(self) -> Mapping:
        return MappingProxyType(self._thresholds)

    def add(self, q: int, records: list) -> list[tuple]:
        """Kafka records of partials partition `q`, in offset order: the messages they produce."""
        sequencer, sends = self.sequencers[q], []
        for r in records:
            self.offsets[q] = r.offset + 1
            self.dirty.add(q)
            try:
                inp, first, parts = partials_codec.decode(r.value, self.config.layout.width)
            except ValueError:
                log.exception("skipping a malformed partials message", extra={"offset": r.offset})
                continue
            ready = sequencer.accept(inp, first, r.offset, parts)
            if ready:
                sends += self._apply(q, inp, ready)
        self.metrics.partials_held.labels(str(q)).set(sequencer.held)
        return sends

    def add_across_gap(self, q: int, records: list, at: int, end: int) -> list[tuple]:
        """:meth:`add` of records of `q` fetched across partials deleted before they were applied
        (from offset `at`; `end`: the log's end offset when that was found): the records
        before, then what the deleted ones held back, then the rest; the messages they produce."""
        sends = self.add(q, [r for r in records if r.offset < at])
        for inp, parts in self.sequencers[q].give_up(end):
            sends += self._apply(q, inp, parts)
        self.dirty.add(q)
        return sends + self.add(q, [r for r in records if r.offset >= at])

    def _apply(self, q: int, inp: int, parts: list) -> list[tuple]:
        out = self.monitors[q].add(inp, parts)
        return self.publisher.windows(out.windows) + self.publisher.triggers(out.triggers)

    def early(self) -> list[tuple]:
        """Early results of every monitor's open windows, when `early_every_s` has passed."""
        now = time.monotonic()
        if now - self._last_early < self.early_every_s:
            return []
        self._last_early = now
        return [m for monitor in self.monitors.values() for m in self.publisher.windows(monitor.early_windows(),
                                                                                       final=False)]

    def capture(self, q: int) -> tuple[Packed, int] | None:
        """`q`'s checkpoint as of now, and the offset it resumes from (None if `q` is not held)."""
        monitor = self.monitors.get(q)
        if monitor is None:
            return None
        sequencer = self.sequencers[q]
        offset = sequencer.resume_offset(self.offsets[q])
        self.dirty.discard(q)
        topic = self.publisher.topics["partials"]
        state = {"monitor": monitor.dump(), "offsets": {topic: offset},
                 "applied": [[i, s] for i, s in sequencer.applied.items()]}
        if sequencer.resync is not None:  # partials were given up on (deleted unread)
            state["resync"] = sequencer.resync
        return pack(snapshot.encode("aggregate", state)), offset
