"""A round's aggregate reads the partials its ingest just wrote, on the real broker: its
consumer's buffer already holds older partials, which a plain fetch returns at once, leaving
the new ones for the next round."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka.admin import create_topics
from streams.settings import TOPICS, load
from streams.worker.clients import output_producer
from streams.worker.own_partials import fetch_through, written_ends
from tests.services import delete_topics, unique_prefix

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(kafka_bootstrap):
    s = load(overrides={"kafka_bootstrap_servers": kafka_bootstrap, "topic_prefix": unique_prefix("own")}, env={})
    create_topics(s, partitions=2)
    yield s
    delete_topics(kafka_bootstrap, [s.topic(role) for role in TOPICS])


@asynccontextmanager
async def _clients(settings, *tps: TopicPartition):
    """The worker's output producer, and a consumer as its aggregate's, assigned `tps`."""
    producer = output_producer(settings)
    consumer = AIOKafkaConsumer(**settings.aiokafka(), enable_auto_commit=False, auto_offset_reset="earliest")
    await producer.start()
    await consumer.start()
    try:
        consumer.assign(list(tps))
        yield producer, consumer
    finally:
        await consumer.stop()
        await producer.stop()


def test_a_round_reads_through_the_partials_it_wrote_past_what_its_consumer_had_buffered(settings):
    topic = settings.topic("partials")
    held, other = TopicPartition(topic, 0), TopicPartition(topic, 1)

    async def write(producer, values: list[bytes], partition: int) -> list:
        return await asyncio.gather(*[await producer.send(topic, v, partition=partition) for v in values])

    async def go() -> tuple[list, dict, dict]:
        async with _clients(settings, held) as (producer, consumer):  # partition 1 is aggregated elsewhere
            older = await write(producer, [b"older-%d" % i for i in range(50)], 0)
            while consumer.highwater(held) is None or consumer.highwater(held) < older[-1].offset + 1:
                await asyncio.sleep(0.05)  # the fetcher has the older records buffered
            newer = await write(producer, [b"newer-%d" % i for i in range(50)], 0)
            elsewhere = await write(producer, [b"elsewhere"], 1)
            ends = written_ends([*newer, *elsewhere], topic)
            fetched = await fetch_through(consumer, ends, timeout_ms=10, max_records=5_000, wait_s=30.0)
            return older + newer, ends, fetched

    written, ends, fetched = asyncio.run(go())
    assert ends == {held: written[-1].offset + 1, other: 1}
    assert list(fetched) == [held]  # the partition not held is neither waited for nor read
    assert [r.value for r in fetched[held]] == [b"%s-%d" % (age, i) for age in (b"older", b"newer") for i in range(50)]
    assert [r.offset for r in fetched[held]] == [w.offset for w in written]


def test_a_round_stops_reading_at_its_record_budget(settings):
    topic = settings.topic("partials")
    tp = TopicPartition(topic, 0)

    async def go() -> list:
        async with _clients(settings, tp) as (producer, consumer):
            acks = await asyncio.gather(*[await producer.send(topic, b"%d" % i, partition=0) for i in range(30)])
            fetched = await fetch_through(consumer, written_ends(acks, topic), timeout_ms=1_000, max_records=10,
                                          wait_s=30.0)
            return fetched.get(tp, [])

    assert [r.value for r in asyncio.run(go())] == [b"%d" % i for i in range(10)]
