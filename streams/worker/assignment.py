"""Which partitions the consumer groups gave this worker, and bringing their state in.

A rebalance revokes every partition, then assigns. The listener pauses what was assigned
and notes it; `load`, at the start of the next round, loads it and resumes it. A partition
this worker kept, whose committed checkpoint is still its own, keeps its state and goes on
from where it stood; any other is loaded from the committed checkpoint (or starts empty)
and replays from its offsets. Nothing is fetched past a position before its state is there.
"""
from __future__ import annotations

from collections import Counter

from aiokafka import ConsumerRebalanceListener, TopicPartition

from streams.worker.checkpointing import Checkpointer
from streams.worker.merge import CoPartitionMerge
from streams.worker.monitors import Monitors
from streams.worker.retention import FetchGaps, check_retention
from streams.worker.stages import Stages

ROLES = ("ingest", "aggregate")


class _Listener(ConsumerRebalanceListener):
    def __init__(self, on_revoked, on_assigned) -> None:
        self._revoked, self._assigned = on_revoked, on_assigned

    async def on_partitions_revoked(self, revoked) -> None:
        self._revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned) -> None:
        self._assigned({tp.partition for tp in assigned})


class Assignments:
    """The ingest group's input partitions (held by `stages`) and the aggregate group's
    partials partitions (held by `monitors`)."""

    def __init__(self, stages: Stages, monitors: Monitors, checkpointer: Checkpointer, merge: CoPartitionMerge,
                 partials_topic: str, counters: Counter, fetch_gaps: FetchGaps) -> None:
        self.stages, self.monitors, self.checkpointer, self.merge = stages, monitors, checkpointer, merge
        self.partials_topic, self.counters, self.fetch_gaps = partials_topic, counters, fetch_gaps
        self.consumers: dict[str, object] = {}
        self._joined: set[str] = set()  # groups whose assignment (possibly empty) has arrived
        self._pending: dict[str, set[int]] = {role: set() for role in ROLES}  # assigned, not yet loaded

    def subscribe(self, role: str, consumer, topics: list[str]) -> None:
        self.consumers[role] = consumer
        revoked, assigned = {"ingest": (self._ingest_revoked, self._ingest_assigned),
                             "aggregate": (self._aggregate_revoked, self._aggregate_assigned)}[role]
        consumer.subscribe(topics, listener=_Listener(revoked, assigned))

    def not_ready(self) -> str | None:
        """Why /readyz fails: a group not joined yet, or assigned partitions not yet loaded
        from their checkpoints (None: ready)."""
        waiting = [role for role in ROLES if role not in self._joined]
        if waiting:
            return f"waiting for a partition assignment ({', '.join(waiting)})"
        loading = sorted(role for role in ROLES if self._pending[role])
        return f"loading checkpoints ({', '.join(loading)})" if loading else None

    def loading(self, role: str, partition: int) -> bool:
        """Whether `partition` is assigned but its state not loaded yet."""
        return partition in self._pending[role]

    def _tps(self, role: str, partition: int) -> list[TopicPartition]:
        topics = self.merge.topics if role == "ingest" else (self.partials_topic,)
        return [TopicPartition(t, partition) for t in topics]

    def _ingest_revoked(self, partitions: set[int]) -> None:
        self._joined.discard("ingest")
        for p in partitions:
            self.merge.drop(p)  # fetched but unprocessed: fetched again
            for tp in self._tps("ingest", p):
                self.fetch_gaps.moved(tp, None)

    def _ingest_assigned(self, partitions: set[int]) -> None:
        self._joined.add("ingest")
        for p in set(self.stages.stages) - partitions:
            self.stages.close(p)
        self.consumers["ingest"].pause(*[tp for p in partitions for tp in self._tps("ingest", p)])
        self._pending["ingest"] |= partitions

    def _aggregate_revoked(self, partitions: set[int]) -> None:
        self._joined.discard("aggregate")  # monitors stay until the assignment that follows says whether they come back
        for q in partitions:
            self.fetch_gaps.moved(self._tps("aggregate", q)[0], None)

    def _aggregate_assigned(self, partitions: set[int]) -> None:
        self._joined.add("aggregate")
        for q in set(self.monitors.monitors) - partitions:
            self.monitors.drop(q)
        self.consumers["aggregate"].pause(*[tp for q in partitions for tp in self._tps("aggregate", q)])
        self._pending["aggregate"] |= partitions

    async def load(self) -> None:
        """Load what the last assignments gave this worker, and seek each partition to where its
        state stands. A partition revoked while it loads is skipped (if it comes back, the
        assignment that brings it asks for another load)."""
        for role in ROLES:
            consumer = self.consumers[role]
            todo, self._pending[role] = self._pending[role], set()
            resumed: dict[TopicPartition, int] = {}  # where loaded input checkpoints resume (see retention.py)
            for p in sorted(todo):
                tps = self._tps(role, p)
                if not all(tp in consumer.assignment() for tp in tps):
                    continue
                held = self.stages.stages if role == "ingest" else self.monitors.monitors
                loaded = await self.checkpointer.load(role, consumer, tps, live=p in held)
                if not all(tp in consumer.assignment() for tp in tps):
                    continue
                if role == "ingest":
                    self._seek_ingest(consumer, p, tps, loaded, resumed)
                else:
                    self._seek_aggregate(consumer, p, tps[0], loaded)
                consumer.resume(*tps)
            await check_retention(consumer, self.stages, self.counters, resumed, self.fetch_gaps)
        await self.checkpointer.forget_stale()  # after the loads: no await between checking and seeking

    def _seek_ingest(self, consumer, p: int, tps: list, loaded, resumed: dict) -> None:
        if loaded is not None:
            self.stages.open(p, loaded.state, loaded.offsets, loaded.pointer)
        offsets = self.stages.offsets[p]
        for tp in tps:  # where the state stands; a topic it has not read yet stays where it is
            self.fetch_gaps.moved(tp, offsets.get(tp.topic))
            if tp.topic in offsets:
                self.merge.drop(p, (tp.topic,))
                consumer.seek(tp, offsets[tp.topic])
                if loaded is not None:
                    resumed[tp] = offsets[tp.topic]

    def _seek_aggregate(self, consumer, q: int, tp, loaded) -> None:
        if loaded is not None:
            self.monitors.open(q, loaded.state, loaded.offsets.get(tp.topic))
        self.fetch_gaps.moved(tp, self.monitors.offsets.get(q))
        if q in self.monitors.offsets:
            consumer.seek(tp, self.monitors.offsets[q])
