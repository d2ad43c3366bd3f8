"""When each held partition is checkpointed, shared by every host of the pipeline.

Every `interval_s` the monitors that moved are checkpointed at once (they are small: open
windows and rule memory), and the input partitions that moved are queued; then each
round takes one step of one input partition's checkpoint: capture its state, or take one
slice of its join store, or write and commit it. The state is that of the capture; the
stage goes on processing meanwhile, so a large join store never stalls the stream.
A host calls `step` once a round, after the round's output has been acknowledged.
Every hour, the checkpoints in force whose commit is a day old are committed again
(`Checkpointer.refresh`), so a partition that receives nothing keeps its offsets in a group
Kafka would otherwise let them expire from.
"""
from __future__ import annotations

import time

from aiokafka import TopicPartition

from streams.worker.checkpointing import Checkpointer
from streams.worker.memory import trim_heap
from streams.worker.monitors import Monitors
from streams.worker.stages import Stages

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
        self._queue: list[int] = []  # input partitions waiting for their checkpoint
        self._last = self._last_refresh = time.monotonic()

    async def step(self) -> None:
        """This round's share of checkpointing."""
        if time.monotonic() - self._last_refresh >= REFRESH_EVERY_S:  # first: a busy schedule must not starve it
            await self.refresh(REFRESH_AGE_S)
        elif self.stages.capturing is not None or self._queue:
            await self._stage_step()
        elif time.monotonic() - self._last >= self.interval_s:
            await self._monitors()
            self._queue = sorted(self.stages.dirty)

    async def refresh(self, max_age_s: float) -> None:
        """Commit again each held partition's checkpoint whose commit is older than `max_age_s`."""
        self._last_refresh = time.monotonic()
        for role, held in (("aggregate", self.monitors.monitors), ("ingest", self.stages.stages)):
            for partition, state in sorted(held.items()):
                if not self.loading(role, partition):
                    await self.checkpointer.refresh(
                        self.consumers[role], role, partition, max_age_s,
                        still=lambda r=role, h=held, p=partition, s=state: self._still(r, p, h.get(p) is s))

    async def all(self) -> None:
        """Checkpoint every partition that moved since its last checkpoint, now (a clean stop)."""
        await self._monitors()
        self._queue = sorted(set(self._queue) | self.stages.dirty)
        while self.stages.capturing is not None or self._queue:
            await self._stage_step()

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

    async def _stage_step(self) -> None:
        c = self.stages.capturing
        if c is None:
            p = self._queue.pop(0)
            if not self.loading("ingest", p):
                self.stages.capture(p, self.checkpointer.delta_base("ingest", p))
            return
        if c.step():
            return
        self.stages.capturing = None
        packed = c.packed()
        commits = {TopicPartition(t, c.partition): o for t, o in c.offsets.items()}
        done = await self.checkpointer.save(self.consumers["ingest"], "ingest", c.partition, packed, commits,
                                            still=lambda: self._still("ingest", c.partition, self.stages.get(c.partition) is c.stage),
                                            base=c.base)
        del packed
        trim_heap()
        self.stages.settle(c, self.checkpointer.pointer("ingest", c.partition) if done else "")
