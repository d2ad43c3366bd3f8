"""Smoke test of the real test infrastructure (tests/infra + tests/services.py):
Kafka round trip (confluent_kafka producer -> aiokafka consumer) and Redis incl. a restart."""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = pytest.mark.integration

N_MESSAGES = 1000


def _produce(bootstrap: str, topic: str, n: int) -> None:
    from confluent_kafka import Producer

    errors: list = []
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    for i in range(n):
        producer.produce(
            topic,
            key=f"k{i % 17}".encode(),
            value=f"m{i}".encode(),
            on_delivery=lambda err, _msg: err and errors.append(err),
        )
        producer.poll(0)
    assert producer.flush(30) == 0, "messages left undelivered"
    assert not errors, errors[:5]


async def _consume(bootstrap: str, topic: str, n: int, timeout: float = 30.0) -> dict[int, list[bytes]]:
    from aiokafka import AIOKafkaConsumer

    by_partition: dict[int, list[bytes]] = {}
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while sum(map(len, by_partition.values())) < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            for tp, records in batches.items():
                by_partition.setdefault(tp.partition, []).extend(r.value for r in records)
    finally:
        await consumer.stop()
    return by_partition


def test_kafka_roundtrip_1000_messages(kafka_bootstrap, topic_factory):
    topic = topic_factory("roundtrip", partitions=2)
    _produce(kafka_bootstrap, topic, N_MESSAGES)
    by_partition = asyncio.run(_consume(kafka_bootstrap, topic, N_MESSAGES))

    received = [v for values in by_partition.values() for v in values]
    assert len(received) == N_MESSAGES
    assert set(received) == {f"m{i}".encode() for i in range(N_MESSAGES)}
    assert set(by_partition) == {0, 1}, "keys should spread over both partitions"


def test_redis_set_get_and_restart(redis_url, redis_service):
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    assert client.set("npo:test:key", "value")
    assert client.get("npo:test:key") == b"value"

    redis_service.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()

    assert redis_service.start() == redis_url  # same port after restart
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    assert client.ping()
    assert client.set("npo:test:key", "again") and client.get("npo:test:key") == b"again"
    client.close()
