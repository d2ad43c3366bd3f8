"""`npo worker`: the pipeline on Kafka, in two stages, with Redis beside it.

Ingest (consumer group `<group>-ingest`): co-partitioned `scores` and `feedback`
partitions, merged by timestamp, go through one `PartitionStage` each (`stages.py`).
Bad records go to the dead-letter topic. Closed panes go to the internal `partials`
topic, keyed by (policy_id, segment); every partials partition also hears each input
partition's progress, so it knows when a pane is final everywhere.

Aggregate (consumer group `<group>-aggregate`): each `partials` partition feeds one
`Monitor` (`monitors.py`), which merges the input partitions' partials into final
tumbling, hopping and cumulative windows, evaluates the rules, and publishes window
statistics and triggers. The latest statistics and cool-downs go to Redis through a sink
that never blocks this loop; thresholds set in Redis are polled every few seconds and
used from the next evaluation on.

State and offsets are recovered together (`checkpointing.py`): every
`checkpoint_interval_s` each partition that moved is checkpointed, after everything its
records produced has been acknowledged; a worker that takes a partition over loads the
committed checkpoint and replays from its offsets (`assignment.py`). Replays are
deterministic: the same records give the same partials with the same numbers, which the
monitor applies once; the same final windows give the same trigger ids.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import IllegalStateError
from confluent_kafka.admin import AdminClient

from streams.config import MonitorConfig
from streams.kafka.checkpoints import CheckpointStore
from streams.kafka.errors import ClientErrors, client_config, metadata
from streams.metrics import Metrics
from streams.pipeline import warm_up
from streams.settings import Settings
from streams.worker.assignment import Assignments
from streams.worker.checkpointing import Checkpointer
from streams.worker.faults import crash_point
from streams.worker.memory import TRIM_EVERY_S, trim_heap
from streams.worker.merge import CoPartitionMerge
from streams.worker.monitors import Monitors
from streams.worker.outputs import Delivery, PartialsRouter, Publisher
from streams.worker.stages import Stages

log = logging.getLogger("npo.worker")

TOPICS = ("scores", "feedback", "partials", "triggers", "stats", "deadletters", "checkpoints")


class Worker:
    """One worker process; run several (same group) to share the partitions."""

    def __init__(self, settings: Settings, config: MonitorConfig | None = None, sink=None,
                 metrics: Metrics | None = None, early_every_s: float = 5.0) -> None:
        self.settings, self.config, self.sink = settings, config or MonitorConfig(), sink
        self.metrics = metrics or Metrics()
        self.counters: Counter = Counter()
        self.topics = {name: settings.topic(name) for name in TOPICS}
        self.router = PartialsRouter(self.topics["partials"], self.config.layout.width)
        self.stages = Stages(self.config, settings.state_dir, self.topics, self.router, self.counters, self.metrics,
                             settings.join_memtable_mb, settings.partition_idle_ms)
        self.monitors = Monitors(self.config, Publisher(self.topics, self.config.version, sink), self.counters,
                                 self.metrics, early_every_s)
        self.checkpointer = Checkpointer(settings.group_id, counters=self.counters)
        self.merge = CoPartitionMerge(self.topics["scores"], self.topics["feedback"],
                                      idle_s=settings.merge_idle_ms / 1000)
        self.assignments = Assignments(self.stages, self.monitors, self.checkpointer, self.merge,
                                       self.topics["partials"])
        self.delivery = Delivery(self._send, self.metrics, self.counters)
        self.ingest = self.aggregate = self.producer = self.reader = None
        self._queue: list[int] = []  # input partitions waiting for their checkpoint
        self._last_checkpoint = self._last_trim = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, check the topics, subscribe. A wrong address, password or CA fails here,
        within seconds, with a message that names what was rejected (not the password)."""
        errors = ClientErrors()
        probe = AdminClient(client_config(self.settings, errors))
        await asyncio.to_thread(metadata, probe, errors, self.settings, 30.0)
        os.makedirs(self.settings.state_dir, exist_ok=True)
        warm_up(self.config, self.settings.state_dir)  # before joining the groups: the first batch runs at full speed
        try:
            await self._start_clients()
        except BaseException:
            await self.stop()
            raise

    async def _start_clients(self) -> None:
        # the settings' client keywords first, then the job's own, which pass-through cannot
        # change: offsets are committed with checkpoints, output is idempotent
        reader = {**self.settings.aiokafka("consumer"), "enable_auto_commit": False, "auto_offset_reset": "earliest"}
        common = {**reader, "partition_assignment_strategy": (RangePartitionAssignor,)}
        self.ingest = AIOKafkaConsumer(**{**common, "group_id": self.settings.group_id + "-ingest"})
        self.aggregate = AIOKafkaConsumer(**{**common, "group_id": self.settings.group_id + "-aggregate"})
        # uncompressed: what the worker writes (partials it reads back itself, statistics,
        # triggers) is small next to its input, and lz4 in this loop cost a tenth of the
        # single-event path (py-spy, `npo bench pipeline --profile`)
        self.producer = AIOKafkaProducer(**{**self.settings.aiokafka("producer"), "acks": "all",
                                            "enable_idempotence": True, "linger_ms": 5, "compression_type": None})
        self.reader = AIOKafkaConsumer(**reader)
        for client in (self.producer, self.ingest, self.aggregate, self.reader):
            await client.start()
        meta = await self.producer.client.fetch_all_metadata()
        counts = {name: len(meta.partitions_for_topic(self.topics[name]) or ())
                  for name in ("partials", "scores", "checkpoints")}
        if not all(counts.values()):
            raise RuntimeError(f"topics missing: run `npo topics create` first ({self.topics})")
        self.router.partitions, self.monitors.input_count = counts["partials"], counts["scores"]
        self.checkpointer.store = CheckpointStore(self.producer, self.reader, self.topics["checkpoints"],
                                                  counts["checkpoints"])
        self.assignments.subscribe("ingest", self.ingest, [self.topics["scores"], self.topics["feedback"]])
        self.assignments.subscribe("aggregate", self.aggregate, [self.topics["partials"]])
        log.info("worker started", extra={"topics": self.topics, "config_version": self.config.version})

    async def stop(self) -> None:
        for client in filter(None, (self.ingest, self.aggregate, self.reader, self.producer)):
            try:
                await client.stop()
            except Exception:  # noqa: BLE001 - stopping must not hide the original error
                log.exception("error while stopping a Kafka client")
        self.stages.close_all()

    async def run(self, stop: asyncio.Event) -> None:
        """Process until `stop` is set."""
        await self.start()
        try:
            while not stop.is_set():
                await self.step()
            await self.checkpoint()  # a clean stop leaves nothing to replay
        finally:
            await self.stop()

    async def step(self) -> None:
        """One round: ingest what arrived, aggregate what the ingest stage produced."""
        await self.assignments.load()
        await self.delivery.deliver(await self.ingest_round())
        await self.delivery.deliver(await self.aggregate_round())
        if self.stages.capturing is not None or self._queue:
            await self._checkpoint_step()
        elif time.monotonic() - self._last_checkpoint >= self.settings.checkpoint_interval_s:
            await self._checkpoint_monitors()
            self._queue = sorted(self.stages.dirty)
        if self.sink is not None:
            self._poll_thresholds()
        self.metrics.sync(self.counters)
        self.metrics.health.beat(self.assignments.not_ready())
        if time.monotonic() - self._last_trim >= TRIM_EVERY_S:
            self._last_trim = time.monotonic()
            trim_heap()

    def _poll_thresholds(self) -> None:
        latest = self.sink.latest_thresholds()
        if latest is not None and latest != self.monitors.thresholds:
            self.monitors.set_thresholds(latest)
            log.info("thresholds changed", extra={"count": len(latest)})
        self.counters["redis_errors"] = self.sink.errors

    def _send(self, topic: str, value: bytes, key: bytes | None, partition: int | None):
        return self.producer.send(topic, value, key=key, partition=partition)

    # -- rounds ------------------------------------------------------------------------------

    async def ingest_round(self) -> list[tuple]:
        """Fetch input, process what is ready in each held partition: the messages to write."""
        fetched = await self.ingest.getmany(timeout_ms=100, max_records=20_000)
        if fetched:
            crash_point("round")  # the last batch done, this one not begun
        for tp, records in fetched.items():
            self.merge.add(tp.topic, tp.partition, records)
        sends = []
        for p, stage in list(self.stages.stages.items()):
            at_end = await self.at_end(p)
            if at_end is None or self.stages.get(p) is not stage or self.assignments.loading("ingest", p):
                continue  # reassigned during this round: loaded at the next
            records = self.merge.pop_ready(p, at_end)
            sends += self.stages.process(p, records) if records else self.stages.idleness(p, all(at_end.values()))
        crash_point("batch")
        return sends

    async def at_end(self, p: int) -> dict[str, bool] | None:
        """Whether each input topic of partition `p` looked drained at the last fetch (and its
        lag, as a metric); None once `p` is no longer this worker's, which a rebalance can
        make it between two awaits of this round."""
        at_end = {}
        for topic in self.merge.topics:
            tp = TopicPartition(topic, p)
            if tp not in self.ingest.assignment():
                return None
            high = self.ingest.highwater(tp)
            try:
                position = await self.ingest.position(tp)
            except IllegalStateError:  # revoked while the position was asked for
                return None
            at_end[topic] = high is not None and position >= high
            if high is not None:
                self.metrics.consumer_lag.labels(topic, str(p)).set(high - position + self.merge.pending_on(topic, p))
        return at_end

    async def aggregate_round(self) -> list[tuple]:
        """Fetch partials, apply them in each held partition: the messages to write."""
        fetched = await self.aggregate.getmany(timeout_ms=10, max_records=5_000)
        sends = []
        for tp, records in fetched.items():
            if self.monitors.get(tp.partition) is not None and not self.assignments.loading("aggregate", tp.partition):
                sends += self.monitors.add(tp.partition, records)
        sends += self.monitors.early()
        if any(m[0] == self.topics["stats"] for m in sends):
            crash_point("window")
        return sends

    # -- checkpoints ---------------------------------------------------------------------------

    async def checkpoint(self) -> None:
        """Checkpoint every partition that moved since its last checkpoint, now (a clean stop)."""
        await self._checkpoint_monitors()
        self._queue = sorted(set(self._queue) | self.stages.dirty)
        while self.stages.capturing is not None or self._queue:
            await self._checkpoint_step()

    async def _checkpoint_monitors(self) -> None:
        """Monitors are small (open windows, rule memory): each is checkpointed at once."""
        self._last_checkpoint = time.monotonic()
        for q in sorted(self.monitors.dirty):
            if self.assignments.loading("aggregate", q) or (captured := self.monitors.capture(q)) is None:
                continue
            packed, offset = captured
            monitor = self.monitors.get(q)
            tp = TopicPartition(self.topics["partials"], q)
            if not await self.checkpointer.save(self.aggregate, "aggregate", q, packed, {tp: offset},
                                                still=lambda q=q, m=monitor: self.monitors.get(q) is m):
                self.monitors.dirty.add(q)

    async def _checkpoint_step(self) -> None:
        """One step of the ingest checkpoints: capture a partition's state, or take one slice
        of its join store, or write and commit it. The state is that of the capture; the
        stage goes on processing meanwhile, so a large join store never stalls the stream."""
        c = self.stages.capturing
        if c is None:
            p = self._queue.pop(0)
            if not self.assignments.loading("ingest", p):
                self.stages.capture(p)
            return
        if c.step():
            return
        self.stages.capturing = None
        packed = c.packed()
        commits = {TopicPartition(t, c.partition): o for t, o in c.offsets.items()}
        done = await self.checkpointer.save(self.ingest, "ingest", c.partition, packed, commits,
                                            still=lambda: self.stages.get(c.partition) is c.stage)
        del packed
        trim_heap()
        if not done and self.stages.get(c.partition) is c.stage:
            self.stages.dirty.add(c.partition)
