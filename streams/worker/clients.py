"""The Kafka clients every host of the pipeline makes the same way."""
from __future__ import annotations

import inspect

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.settings import Settings


def output_producer(settings: Settings) -> AIOKafkaProducer:
    """The producer of everything the pipeline writes: idempotent, acknowledged by all
    replicas. Uncompressed: what it writes (partials read back by the pipeline itself,
    statistics, triggers) is small next to its input, and lz4 in the loop cost a tenth of
    the single-event path (py-spy, `npo bench pipeline --profile`). The settings' client
    keywords come first; these, which pass-through cannot change, after them."""
    return AIOKafkaProducer(**{**settings.aiokafka("producer"), "acks": "all", "enable_idempotence": True,
                               "linger_ms": 5, "compression_type": None})


def max_poll_interval_s(settings: Settings) -> float:
    """How long the worker's consumers may go between polls before their group takes their
    partitions away: `max.poll.interval.ms` as the settings' client properties give it, else
    aiokafka's default."""
    default = inspect.signature(AIOKafkaConsumer).parameters["max_poll_interval_ms"].default
    ms = settings.aiokafka_extra.get("max_poll_interval_ms", settings.kafka_extra.get("max.poll.interval.ms", default))
    return int(ms) / 1000


async def partition_counts(producer: AIOKafkaProducer, topics: dict[str, str]) -> dict[str, int]:
    """Partitions of the input, partials and checkpoints topics; RuntimeError if one is missing."""
    meta = await producer.client.fetch_all_metadata()
    counts = {name: len(meta.partitions_for_topic(topics[name]) or ()) for name in ("scores", "partials", "checkpoints")}
    if not all(counts.values()):
        raise RuntimeError(f"topics missing: run `npo topics create` first ({topics})")
    return counts
