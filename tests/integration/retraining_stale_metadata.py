"""The retraining agent (`streams.faust.retraining`) on a consumer whose metadata does not show
the table's changelog topic for its first table writes, as a busy broker leaves it right after
Faust creates the topic: `faust -A tests.integration.retraining_stale_metadata worker`."""
from __future__ import annotations

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from streams.faust.retraining import app, started  # noqa: F401  (the app `faust -A` runs)

STALE_LOOKUPS = 6  # two a refused table write (Faust's check, the agent's): the first three are refused
_real = AIOKafkaConsumerThread.topic_partitions
_lookups = 0


def _stale_at_first(self, topic: str):
    global _lookups
    if topic == started.changelog_topic_name and _lookups < STALE_LOOKUPS:
        _lookups += 1
        return 0
    return _real(self, topic)


AIOKafkaConsumerThread.topic_partitions = _stale_at_first
