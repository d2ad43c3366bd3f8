"""`npo worker`: the pipeline on Kafka, in two stages, with Redis beside it.

Ingest (consumer group `<group>-ingest`): co-partitioned `scores` and `feedback`
partitions, merged by timestamp, go through one `PartitionStage` each (`stages.py`).
Bad records go to the dead-letter topic. Closed panes go to the internal `partials`
topic, keyed by (policy_id, segment); every partials partition also hears each input
partition's progress, so it knows when a pane is final everywhere.

Aggregate (consumer group `<group>-aggregate`): each `partials` partition feeds one
`Monitor` (`monitors.py`), which merges the input partitions' partials into final
tumbling, hopping and cumulative windows, evaluates the rules, and publishes window
statistics and triggers. A round applies the partials its own ingest has just written to
the partials partitions it aggregates (`own_partials.py`), not a round later. The latest
statistics and cool-downs go to Redis through a sink that never blocks this loop;
thresholds set in Redis are polled every few seconds and used from the next evaluation on.

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

from aiokafka import AIOKafkaConsumer, TopicPartition
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
from streams.worker.clients import max_poll_interval_s, output_producer, partition_counts
from streams.worker.faults import crash_point
from streams.worker.host import PipelineHost
from streams.worker.memory import TRIM_EVERY_S, trim_heap
from streams.worker.own_partials import fetch_through, written_ends
from streams.worker.retention import RETRY_LOG_START_S, check_gaps

log = logging.getLogger("npo.worker")


class Worker(PipelineHost):
    """One worker process; run several (same group) to share the partitions."""

    def __init__(self, settings: Settings, config: MonitorConfig | None = None, sink=None,
                 metrics: Metrics | None = None, early_every_s: float = 5.0) -> None:
        super().__init__(settings, config, sink, metrics, early_every_s, settings.group_id,
                         loading=lambda role, partition: self.assignments.loading(role, partition),
                         max_poll_interval_s=max_poll_interval_s(settings))
        self.assignments = Assignments(self.stages, self.monitors, self.checkpointer, self.merge,
                                       self.topics["partials"], self.counters, self.fetch_gaps)
        self.ingest = self.aggregate = self.reader = None
        self._last_trim = time.monotonic()

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
        self.producer = output_producer(self.settings)
        self.reader = AIOKafkaConsumer(**reader)
        for client in (self.producer, self.ingest, self.aggregate, self.reader):
            await client.start()
        counts = await partition_counts(self.producer, self.topics)
        self.router.partitions, self.monitors.input_count = counts["partials"], counts["scores"]
        self.checkpointer.store = CheckpointStore(self.producer, self.reader, self.topics["checkpoints"],
                                                  counts["checkpoints"])
        self.schedule.consumers = {"ingest": self.ingest, "aggregate": self.aggregate}
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
            await self.schedule.all()  # a clean stop leaves nothing to replay
        finally:
            await self.stop()

    async def step(self) -> None:
        """One round: ingest what arrived, aggregate what the ingest stage produced (the partials
        it has just written among them)."""
        await self.assignments.load()
        written = await self.delivery.deliver(await self.ingest_round())
        await self.delivery.deliver(await self.aggregate_round(written_ends(written, self.topics["partials"])))
        await self.schedule.step()
        self.poll_thresholds()
        self.metrics.sync(self.counters)
        self.metrics.health.beat(self.assignments.not_ready())
        if time.monotonic() - self._last_trim >= TRIM_EVERY_S:
            self._last_trim = time.monotonic()
            trim_heap()

    # -- rounds ------------------------------------------------------------------------------

    async def ingest_round(self) -> list[tuple]:
        """Fetch input, process what is ready in each held partition: the messages to write."""
        fetched = await self.ingest.getmany(timeout_ms=100, max_records=20_000)
        if fetched:
            crash_point("round")  # the last batch done, this one not begun
        gaps = self.fetch_gaps.gaps(fetched)
        for tp, records in fetched.items():
            self.merge.add(tp.topic, tp.partition, records)
        await check_gaps(self.ingest, self.counters, gaps, self.fetch_gaps)
        sends = []
        for p, stage in list(self.stages.stages.items()):
            at_end = await self.at_end(p)
            if at_end is None or self.stages.get(p) is not stage or self.assignments.loading("ingest", p):
                continue  # reassigned during this round: loaded at the next
            sends += self.ready(p, at_end)
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

    async def aggregate_round(self, written: dict[TopicPartition, int] | None = None) -> list[tuple]:
        """Fetch partials, apply them in each held partition: the messages to write. `written`:
        up to where this round's ingest wrote to each partials partition; those this worker
        aggregates are read through there (`own_partials`)."""
        own = {tp: end for tp, end in (written or {}).items()
               if self.monitors.get(q := tp.partition) is not None and not self.assignments.loading("aggregate", q)}
        fetched = await fetch_through(self.aggregate, own, timeout_ms=10, max_records=5_000)
        gaps = self.fetch_gaps.gaps(fetched)
        ends = {tp: max(self.aggregate.highwater(tp) or 0, fetched[tp][-1].offset + 1) for tp in gaps}
        lost = await check_gaps(self.aggregate, self.counters, gaps, self.fetch_gaps, retry_s=RETRY_LOG_START_S)
        sends = []
        for tp, records in fetched.items():
            q = tp.partition
            if self.monitors.get(q) is None or self.assignments.loading("aggregate", q):
                continue
            sends += (self.monitors.add_across_gap(q, records, lost[tp], ends[tp]) if tp in lost
                      else self.monitors.add(q, records))
        sends += self.monitors.early()
        if any(m[0] == self.topics["stats"] for m in sends):
            crash_point("window")
        return sends
