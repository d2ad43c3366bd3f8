"""The Kafka clients every host of the pipeline makes the same way."""
from __future__ import annotations

import inspect

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.settings import Settings


def output_producer(settings: Settings) -> AIOKafkaProducer:
    """The producer of everything the pipeline writes: idempotent, acknowledged by all
    replicas. Uncompressed: what it writes (partials read back by the pipeline itself,
    statistics, triggers) is small next to its input, and lz4 in the loop cost a tenth of
    the single-event path (py-spy, `npo bench pipeline --profile`). No linger: whoever sends
    hands over all it has before the producer's sender next runs (a round its outputs,
    :class:`streams.worker.outputs.Delivery`; a checkpoint a window of chunks), so they go out
    in as few requests anyway, and then waits for their acknowledgements. A linger only added
    its 5 ms to each of those waits: the envelope path measured 0.30 of the raw consumer's
    rate with it, 0.35 to 0.42 without (`npo bench pipeline`). The settings' client keywords
    come first; these, which pass-through cannot change, after them."""
    return AIOKafkaProducer(**{**settings.aiokafka("producer"), "acks": "all", "enable_idempotence": True,
                               "linger_ms": 0, "compression_type": None})


def max_poll_interval_s(settings: Settings) -> float:
    """How long the worker's consumers may go between polls before their group takes their
    partitions away (`max.poll.interval.ms`)."""
    return _consumer_ms(settings, "max_poll_interval_ms", "max.poll.interval.ms") / 1000


def request_timeout_s(settings: Settings) -> float:
    """How long the consumers the settings make wait for a broker's answer to a request before
    they close its connection (`request.timeout.ms`)."""
    return _consumer_ms(settings, "request_timeout_ms", "request.timeout.ms") / 1000


def _consumer_ms(settings: Settings, keyword: str, name: str) -> int:
    """A consumer setting in ms as the settings' client properties give it (aiokafka's keyword
    first, then Kafka's property name), else aiokafka's default."""
    default = inspect.signature(AIOKafkaConsumer).parameters[keyword].default
    return int(settings.aiokafka_extra.get(keyword, settings.kafka_extra.get(name, default)))


async def partition_counts(producer: AIOKafkaProducer, topics: dict[str, str]) -> dict[str, int]:
    """Partitions of the input, partials and checkpoints topics; RuntimeError if one is missing."""
    meta = await producer.client.fetch_all_metadata()
    counts = {name: len(meta.partitions_for_topic(topics[name]) or ()) for name in ("scores", "partials", "checkpoints")}
    if not all(counts.values()):
        raise RuntimeError(f"topics missing: run `npo topics create` first ({topics})")
    return counts
