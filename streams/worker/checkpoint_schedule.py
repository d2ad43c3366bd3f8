"""When each held partition is checkpointed, shared by every host of the pipeline.

Every `interval_s` the monitors that moved are checkpointed at once (they are small: open
windows and rule memory). Input partitions are checkpointed each at most once every
`interval_s` and only if it moved, a step at a time: each round takes one step of each
checkpoint under way (capture its state; or write its frames to Kafka for up to
`STEP_BUDGET_S`, slices of its join store taken as they are needed; or commit it). The state
is that of the capture; the stage goes on processing meanwhile, so a large join store never
stalls the stream, and no checkpoint is held whole in memory. A host calls `step` once a
round, after the round's output has been acknowledged.

Two checkpoints may be under way at once, in two lanes: one delta and one whole, each of a
different partition, oldest first within its lane. A whole checkpoint of a large join takes
fifty rounds or more, tens of seconds; in one lane, every other partition's delta would wait
behind it and hold the changes of that time, the sum of a chain's deltas would reach its
whole state sooner, and the next checkpoint would be whole too, so that checkpoints grew
with the join. In their own lane, deltas keep to the interval and hold what it changed.

Every hour, the checkpoints in force whose commit is a day old are committed again
(`Checkpointer.refresh`), so a partition that receives nothing keeps its offsets in a group
Kafka would otherwise let them expire from.
"""
from __future__ import annotations

import time

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from streams.worker.checkpointing import Checkpointer
from streams.worker.memory import trim_heap
from streams.worker.monitors import Monitors
from streams.worker.stages import Capture, Stages

STEP_BUDGET_S = 0.04
"""How long a round goes on writing one checkpoint's frames (one at least). A slice of the
join takes some 25 ms to take and compress: at one a round, at the five rounds a second of a
worker at half its rate, a partition's delta of 10 s of input would take a second or two, and
the lane of deltas, going round the partitions one at a time, would fall behind the interval."""
REFRESH_EVERY_S = 3_600.0
"""How often the schedule looks for checkpoints whose commit is old."""
REFRESH_AGE_S = 86_400.0
"""A commit this old is made again: well inside Kafka's default offset retention (7 days)."""


class CheckpointSchedule:
    """`consumers[role]` is what the checkpointer commits through; `loading(role, partition)`
    says whether a partition is between owners (its state still to be loaded, or revoked and
    not yet assigned again): it is then neither captured nor committed."""

    def __init__(self, checkpointer: Checkpointer, stages: Stages, monitors: Monitors, partials_topic: str,
                 interval_s: float, loading=lambda role, partition: False) -> None:
        self.checkpointer, self.stages, self.monitors = checkpointer, stages, monitors
        self.partials_topic, self.interval_s, self.loading = partials_topic, interval_s, loading
        self.consumers: dict[str, object] = {}
        self._begun: dict[int, float] = {}  # input partition -> when its last checkpoint was begun
        self._last = self._last_refresh = time.monotonic()

    async def step(self) -> None:
        """This round's share of checkpointing."""
        now = time.monotonic()
        if now - self._last_refresh >= REFRESH_EVERY_S:  # first: a busy schedule must not starve it
            await self.refresh(REFRESH_AGE_S)
            return
        await self._step_captures()
        # all in one round: rounds longer than the interval must not starve any
        if now - self._last >= self.interval_s:
            await self._monitors()
        for p in self.next_partitions(now):
            self.begin(p)

    async def refresh(self, max_age_s: float) -> None:
        """Commit again each held partition's checkpoint whose commit is older than `max_age_s`.
        One found with another worker's checkpoint in force is marked as moved: a refresh never
        commits over the other's, a whole checkpoint does once the grace has passed, and an
        idle partition would otherwise never get one."""
        self._last_refresh = time.monotonic()
        for role, held, dirty in (("aggregate", self.monitors.monitors, self.monitors.dirty),
                                  ("ingest", self.stages.stages, self.stages.dirty)):
            for partition, state in sorted(held.items()):
                if not self.loading(role, partition):
                    await self.checkpointer.refresh(
                        self.consumers[role], role, partition, max_age_s,
                        still=lambda r=role, h=held, p=partition, s=state: self._still(r, p, h.get(p) is s))
                    if self.checkpointer.contested(role, partition):
                        dirty.add(partition)

    async def all(self) -> None:
        """Checkpoint every partition that moved since its last checkpoint, now (a clean stop)."""
        await self._monitors()
        await self._finish()
        for p in sorted(self.stages.dirty):
            if p in self.stages.dirty and not self.loading("ingest", p):
                self.begin(p)
                await self._finish()

    async def _finish(self) -> None:
        """Take every checkpoint under way to its end."""
        while self.stages.captures:
            await self._step_captures()
        await self._abandon_dropped()

    async def _abandon_dropped(self) -> None:
        """Delete what the checkpoints dropped with their partitions sent."""
        while self.stages.dropped:
            partition, writer = self.stages.dropped.pop()
            await self.checkpointer.abandon("ingest", partition, writer)

    async def _step_captures(self) -> None:
        """One step of each checkpoint under way; one whose partition was revoked during another's
        write is no longer listed, and its store is closed: it is not stepped, and what it
        wrote is deleted."""
        await self._abandon_dropped()
        for p in list(self.stages.captures):  # numbers: a dropped capture is not kept alive meanwhile
            if (c := self.stages.captures.get(p)) is not None:
                await self._stage_step(c)

    def next_partitions(self, now: float) -> list[int]:
        """The input partitions to checkpoint next, one for each free lane (see the module's
        docstring), of those that moved, have no checkpoint under way, are not between owners,
        and were last begun `interval_s` ago or more."""
        under_way = self.stages.captures
        due = [p for p in sorted(self.stages.dirty) if p not in under_way and not self.loading("ingest", p)
               and now - self._begun.get(p, float("-inf")) >= self.interval_s]
        deltas = [p for p in due if self.stages.delta_ready(p, self.checkpointer.delta_base("ingest", p))]
        wholes = [p for p in due if p not in deltas]
        busy = {bool(c.base) for c in under_way.values()}  # True: the delta lane, False: the whole one
        oldest = lambda p: self._begun.get(p, float("-inf"))  # noqa: E731
        return [min(lane, key=oldest) for lane, is_delta in ((deltas, True), (wholes, False))
                if lane and is_delta not in busy]

    def begin(self, p: int) -> None:
        """Begin input partition `p`'s checkpoint now: a delta if it can be one."""
        self._begun[p] = time.monotonic()
        self.stages.capture(p, self.checkpointer.delta_base("ingest", p))

    def _still(self, role: str, partition: int, same_state: bool) -> bool:
        return same_state and not self.loading(role, partition)

    async def _monitors(self) -> None:
        self._last = time.monotonic()
        for q in sorted(self.monitors.dirty):
            if self.loading("aggregate", q) or (captured := self.monitors.capture(q)) is None:
                continue
            packed, offset = captured
            monitor = self.monitors.get(q)
            tp = TopicPartition(self.partials_topic, q)
            if not await self.checkpointer.save(self.consumers["aggregate"], "aggregate", q, packed, {tp: offset},
                                                still=lambda q=q, m=monitor: self._still("aggregate", q, self.monitors.get(q) is m)):
                self.monitors.dirty.add(q)

    async def _stage_step(self, c: Capture) -> None:
        """Write `c`'s frames for up to `STEP_BUDGET_S` (one at least); once all are written,
        commit it."""
        if c.writer is None:
            c.writer = self.checkpointer.writer("ingest", c.partition)
        started = time.perf_counter()
        try:
            while (frame := c.next_frame()) is not None:
                await c.writer.write(frame)
                del frame
                if self.stages.captures.get(c.partition) is not c:  # revoked meanwhile: dropped
                    return
                if time.perf_counter() - started >= STEP_BUDGET_S:
                    return
        except KafkaError as exc:
            self.checkpointer.write_failed(exc, "ingest", c.partition, c.writer)
            self.stages.taken(c)
            c.release()
            self.stages.settle(c, "")
            return
        self.stages.taken(c)
        commits = {TopicPartition(t, c.partition): o for t, o in c.offsets.items()}
        still = lambda: self._still("ingest", c.partition, self.stages.get(c.partition) is c.stage)  # noqa: E731
        done = await self.checkpointer.finish(self.consumers["ingest"], "ingest", c.partition, c.writer, c.size,
                                              commits, still, base=c.base)
        trim_heap()
        self.stages.settle(c, self.checkpointer.pointer("ingest", c.partition) if done else "")
