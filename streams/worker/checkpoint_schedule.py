"""When each held partition is checkpointed, shared by every host of the pipeline.

Every `interval_s` the monitors that moved are checkpointed at once (they are small: open
windows and rule memory). Input partitions are checkpointed one at a time, each at most once
every `interval_s` and only if it moved: each round takes one step of one partition's
checkpoint (capture its state, or take one slice of its join store, or write and commit it).
The state is that of the capture; the stage goes on processing meanwhile, so a large join
store never stalls the stream. A host calls `step` once a round, after the round's output
has been acknowledged.

A partition whose checkpoint can be a delta goes before one that must be whole, oldest
first, but at most as many deltas in a row as partitions are held while a whole one waits.
A delta holds the keys changed since its partition's last capture, so it must come before
half the join has changed: a partition that has just been checkpointed whole is then
checkpointed again, as a small delta, while the other partitions' whole checkpoints
(which may take a minute each on a large join) are still to come, instead of after all of
them, by which time its join may have turned over and its next one would be whole too.
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
        self._begun: dict[int, float] = {}  # input partition -> when its last checkpoint was begun
        self._deltas_in_a_row = 0  # deltas begun since a whole checkpoint was, while one was due
        self._last = self._last_refresh = time.monotonic()

    async def step(self) -> None:
        """This round's share of checkpointing."""
        now = time.monotonic()
        if now - self._last_refresh >= REFRESH_EVERY_S:  # first: a busy schedule must not starve it
            await self.refresh(REFRESH_AGE_S)
        elif self.stages.capturing is not None:
            await self._stage_step()
        else:  # both in one round: rounds longer than the interval must not starve either
            if now - self._last >= self.interval_s:
                await self._monitors()
            if (p := self.next_partition(now)) is not None:
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
        while self.stages.capturing is not None:
            await self._stage_step()
        for p in sorted(self.stages.dirty):
            if p in self.stages.dirty and not self.loading("ingest", p):
                self.begin(p)
                while self.stages.capturing is not None:
                    await self._stage_step()

    def next_partition(self, now: float) -> int | None:
        """The input partition to checkpoint next (see the module's docstring), or None: those
        that moved, are not between owners, and were last begun `interval_s` ago or more."""
        due = [p for p in sorted(self.stages.dirty) if not self.loading("ingest", p)
               and now - self._begun.get(p, float("-inf")) >= self.interval_s]
        deltas = [p for p in due if self.stages.delta_ready(p, self.checkpointer.delta_base("ingest", p))]
        wholes = [p for p in due if p not in deltas]
        oldest = lambda p: self._begun.get(p, float("-inf"))  # noqa: E731
        if deltas and (not wholes or self._deltas_in_a_row < len(self.stages.stages)):
            self._deltas_in_a_row += bool(wholes)
            return min(deltas, key=oldest)
        self._deltas_in_a_row = 0
        return min(wholes, key=oldest) if wholes else None

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

    async def _stage_step(self) -> None:
        c = self.stages.capturing
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
