"""Running the real worker inside a test, and reading topics back."""
from __future__ import annotations

import asyncio
import threading
import time
import uuid

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams.worker.worker import Worker


class WorkerThread:
    """A `Worker` on its own event loop in a background thread; `stop()` ends it cleanly."""

    def __init__(self, settings, config, sink=None, metrics=None) -> None:
        self.worker = Worker(settings, config, sink=sink, metrics=metrics, early_every_s=1.0)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.rounds = 0
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            await self.worker.start()
            try:
                while not self._stop.is_set():
                    await self.worker.step()
                    self.rounds += 1
            finally:
                await self.worker.stop()

        try:
            asyncio.run(run())
        except BaseException as e:  # noqa: BLE001 - surfaced to the test
            self.error = e

    def start(self) -> "WorkerThread":
        self.thread.start()
        return self

    def alive(self) -> bool:
        return self.thread.is_alive() and self.error is None

    def wait_idle(self, quiet_s: float = 4.0, timeout: float = 180.0) -> None:
        """Until the worker's counters stop moving for `quiet_s` (all input processed), counted
        from when it has its partitions and their state: joining the groups takes longer than
        the quiet on a busy host, and a worker that has not started reading is quiet too."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            if self.error is not None:
                raise AssertionError(f"worker died: {self.error!r}") from self.error
            # Redis errors keep counting while Redis is down; only the data counters tell progress
            now = {k: v for k, v in self.worker.counters.items() if k != "redis_errors"}, self.rounds > 0
            # output still being retried, a group not joined yet, or partitions still loading: not
            # idle, however quiet
            if self.worker.delivery.undelivered or self.worker.assignments.not_ready() is not None:
                last = None
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s and self.rounds > 0:
                return
            time.sleep(0.25)
        raise AssertionError("worker did not go idle in time")

    def wait_for(self, counter, at_least: int, timeout: float = 240.0) -> None:
        """Until `counters[counter]` reaches `at_least` (every input event accepted): quiet
        alone is not the end of a run that a broker restart paused for longer than the quiet."""
        deadline = time.monotonic() + timeout
        while self.worker.counters[counter] < at_least:
            if self.error is not None:
                raise AssertionError(f"worker died: {self.error!r}") from self.error
            if time.monotonic() > deadline:
                raise AssertionError(f"{counter} reached {self.worker.counters[counter]} of {at_least} in "
                                     f"{timeout:.0f} s; counters {dict(self.worker.counters)}")
            time.sleep(0.25)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=60)
        if self.error is not None:
            raise AssertionError(f"worker failed: {self.error!r}") from self.error
        assert not self.thread.is_alive(), "the worker did not stop within 60 s"


def ordered_producer(settings, **config) -> Producer:
    """A producer whose retries cannot reorder a partition: idempotent, as the project's own
    producers are. Without it a batch that fails on a just-created topic (leader not known yet)
    is retried behind later batches, and the log no longer holds the order the test sent."""
    return Producer({**settings.confluent(), "enable.idempotence": True, **config})


def read_topic(settings, role: str, idle_s: float = 2.0, timeout: float = 60.0) -> list:
    """Every message of a topic, from the beginning, as confluent Message objects."""
    topic = settings.topic(role)
    consumer = Consumer({**settings.confluent(), "group.id": f"read-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    meta = consumer.list_topics(topic, timeout=10)
    # explicit start offsets: no committed offsets to ask for, so no wait on the group
    # coordinator (which a freshly started broker may still be loading)
    parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.topics[topic].partitions]
    ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
    consumer.assign(parts)
    out, deadline = [], time.monotonic() + timeout
    done = {p: ends[p] == 0 for p in ends}
    while not all(done.values()) and time.monotonic() < deadline:
        msg = consumer.poll(idle_s)
        if msg is None or msg.error():
            continue
        out.append(msg)
        if msg.offset() + 1 >= ends[msg.partition()]:
            done[msg.partition()] = True
    consumer.close()
    return out


def merged_by_partition(settings, partitions: int) -> list[list[bytes]]:
    """The input topics read back, per partition in the order the worker's merge takes them
    (message timestamp, scores before feedback on a tie, then offset): the in-process reference."""
    rank = {settings.topic("scores"): 0, settings.topic("feedback"): 1}
    out = [[] for _ in range(partitions)]
    messages = read_topic(settings, "scores") + read_topic(settings, "feedback")
    for m in sorted(messages, key=lambda m: (m.partition(), m.timestamp()[1], rank[m.topic()], m.offset())):
        out[m.partition()].append(m.value())
    return out


def json_values(messages) -> list[dict]:
    return [orjson.loads(m.value()) for m in messages]


def redis_cluster_settings(kafka_bootstrap: str, redis_url: str, state_dir: str, prefix: str):
    """Settings on fresh topics (two partitions, created here) and a fresh Redis namespace: a
    worker with its Redis sink, or an actuator beside it. Delete the topics with
    `tests.services.delete_topics(kafka_bootstrap, [s.topic(r) for r in streams.settings.TOPICS])`."""
    from streams.kafka.admin import create_topics
    from streams.settings import load
    from tests.services import unique_prefix

    s = load(overrides={"kafka_bootstrap_servers": kafka_bootstrap, "topic_prefix": unique_prefix(prefix),
                        "topic_partitions": 2, "group_id": unique_prefix("g").rstrip("."),
                        "redis_url": redis_url, "redis_namespace": f"test:{uuid.uuid4().hex[:10]}:",
                        "state_dir": state_dir, "metrics_port": 0}, env={})
    create_topics(s)
    return s


def redis_store(settings):
    """A store on the settings' Redis and namespace."""
    from streams.state.redis_store import RedisStore

    return RedisStore.from_url(settings.redis_url, namespace=settings.redis_namespace)
