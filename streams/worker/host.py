"""What every host of the pipeline holds and does the same way (`npo worker`, the Faust agents).

A host feeds Kafka records in and says where its partitions stand; this holds the input
partitions' stages, the partials partitions' monitors, the checkpoint protocol and its
schedule, the co-partition merge, the input fetches' offset gaps and the output's delivery,
and turns what is ready into messages to write.
"""
from __future__ import annotations

import logging
from collections import Counter

from streams.config import MonitorConfig
from streams.metrics import Metrics
from streams.settings import Settings
from streams.worker.checkpoint_schedule import CheckpointSchedule
from streams.worker.checkpointing import Checkpointer, contest_grace_s, guard_timeout_for
from streams.worker.clients import request_timeout_s
from streams.worker.merge import CoPartitionMerge
from streams.worker.monitors import Monitors
from streams.worker.outputs import Delivery, PartialsRouter, Publisher
from streams.worker.retention import FetchGaps
from streams.worker.stages import Stages

log = logging.getLogger("npo.worker")

TOPICS = ("scores", "feedback", "partials", "triggers", "stats", "deadletters", "checkpoints")


class PipelineHost:
    """`checkpoint_group`: the prefix of the checkpoints' names; `loading(role, partition)`:
    whether a partition is between owners (see `CheckpointSchedule`); `max_poll_interval_s`:
    how long a member of the group that owns the partitions may go between polls."""

    def __init__(self, settings: Settings, config: MonitorConfig | None, sink, metrics: Metrics | None,
                 early_every_s: float, checkpoint_group: str, loading, max_poll_interval_s: float) -> None:
        self.settings, self.config, self.sink = settings, config or MonitorConfig(), sink
        self.metrics = metrics or Metrics()
        self.counters: Counter = Counter()
        self.topics = {name: settings.topic(name) for name in TOPICS}
        self.router = PartialsRouter(self.topics["partials"], self.config.layout.width,
                                     version=settings.partials_format)
        self.stages = Stages(self.config, settings.state_dir, self.topics, self.router, self.counters, self.metrics,
                             settings.join_memtable_mb, settings.partition_idle_ms, settings.join_block_cache_mb)
        self.monitors = Monitors(self.config, Publisher(self.topics, self.config.version, sink), self.counters,
                                 self.metrics, early_every_s)
        self.checkpointer = Checkpointer(checkpoint_group, counters=self.counters,
                                         grace_s=contest_grace_s(max_poll_interval_s),
                                         guard_timeout_s=guard_timeout_for(request_timeout_s(settings)))
        self.schedule = CheckpointSchedule(self.checkpointer, self.stages, self.monitors, self.topics["partials"],
                                           settings.checkpoint_interval_s, loading=loading)
        self.merge = CoPartitionMerge(self.topics["scores"], self.topics["feedback"],
                                      idle_s=settings.merge_idle_ms / 1000)
        self.fetch_gaps = FetchGaps()  # input offsets a fetch skipped (retention while running)
        self.delivery = Delivery(self._send, self.metrics, self.counters)
        self.producer = None

    def ready(self, p: int, at_end: dict[str, bool]) -> list[tuple]:
        """Process what the merge has ready for input partition `p` (`at_end`: whether each input
        topic looked drained); with nothing ready, its idleness note when due."""
        records = self.merge.pop_ready(p, at_end)
        return self.stages.process(p, records) if records else self.stages.idleness(p, all(at_end.values()))

    def poll_thresholds(self) -> None:
        """Thresholds set in Redis, for the monitors' next windows."""
        if self.sink is None:
            return
        latest = self.sink.latest_thresholds()
        if latest is not None and latest != self.monitors.thresholds:
            self.monitors.set_thresholds(latest)
            log.info("thresholds changed", extra={"count": len(latest)})
        self.counters["redis_errors"] = self.sink.errors

    def _send(self, topic: str, value: bytes, key: bytes | None, partition: int | None):
        return self.producer.send(topic, value, key=key, partition=partition)
