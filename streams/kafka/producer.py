"""The client platform teams use to publish score and feedback events: the fast path.

Envelope mode (the default) groups events per (topic, partition) into envelope messages
of up to ``max_events`` events, so broker and worker handle one message where there would
be hundreds: columnar envelopes (:mod:`streams.columnar`), unless the settings'
``envelope_format`` asks for JSON ones. Each event's partition is computed here with
Kafka's own murmur2 partitioner on its ``scenario_id``: exactly where a single keyed
message for it would land. Scores and feedback of one scenario thus meet on the same partition
number in either mode, which the worker's score-feedback join relies on.

Nothing invalid is sent: every event is first checked by the worker's own decoder
(:func:`streams.codec.decode`), so a mistake raises here instead of feeding the
dead-letter topic.
"""
from __future__ import annotations

import math
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
from confluent_kafka import Producer

from streams import codec, columnar
from streams.events import MAX_ENVELOPE_EVENTS, FeedbackEvent, ScoreEvent
from streams.kafka.errors import ClientErrors, KafkaRequestError, KafkaUnavailable, client_config, metadata
from streams.settings import Settings

_SEED, _M, _U32 = 0x9747B28C, 0x5BD1E995, 0xFFFFFFFF
_ROLES = {ScoreEvent: "scores", FeedbackEvent: "feedback"}
MAX_ENVELOPE_BYTES = 900_000
"""Larger envelopes are split: librdkafka refuses a message above ``message.max.bytes``
(1,000,000 by default) before compressing it."""


def murmur2(key: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (signed 32-bit result), which its default partitioner
    and librdkafka's ``murmur2``/``murmur2_random`` partitioners hash keys with."""
    n = len(key)
    h = _SEED ^ n
    tail = n & ~3
    for (k,) in struct.iter_unpack("<I", key[:tail]):
        k = (k * _M) & _U32
        k = ((k ^ (k >> 24)) * _M) & _U32
        h = ((h * _M) & _U32) ^ k
    rest = n & 3
    if rest == 3:
        h ^= key[tail + 2] << 16
    if rest >= 2:
        h ^= key[tail + 1] << 8
    if rest:
        h = ((h ^ key[tail]) * _M) & _U32
    h ^= h >> 13
    h = (h * _M) & _U32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a non-null ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class EventProducer:
    """Validated, partition-aware producer of score and feedback events.

    ``with EventProducer(settings) as p: p.send({...})``. In envelope mode a batch is
    sent when it holds ``max_events`` events or ``linger_ms`` after its first event
    (checked on each ``send`` and by ``poll()``); ``flush``/``close`` send the rest.
    Events are re-encoded from their decoded form, so fields this version does not know
    are dropped. Counters: ``events``, ``messages`` (handed to librdkafka), ``errors``
    (failed deliveries; the last one in ``last_error``). Acks from all in-sync replicas
    and idempotence mean a retried message is written once.
    """

    def __init__(self, settings: Settings, envelope: bool = True, max_events: int | None = None,
                 linger_ms: float | None = None, timeout: float = 30.0) -> None:
        self.settings, self.envelope = settings, envelope
        self._encode_envelope = columnar.encode if settings.envelope_format == "columnar" else codec.encode_envelope
        self.max_events = max_events or settings.envelope_max_events
        if not 1 <= self.max_events <= MAX_ENVELOPE_EVENTS:
            raise ValueError(f"max_events must be in [1, {MAX_ENVELOPE_EVENTS}]")
        self.linger = (settings.linger_ms if linger_ms is None else linger_ms) / 1000
        self.events = self.messages = self.errors = 0
        self.last_error: str | None = None
        self._reported = 0
        self._closed = False
        self._batches: dict[tuple[str, int], list] = {}
        self._started: dict[tuple[str, int], float] = {}
        self._deadline = math.inf
        client_errors = ClientErrors()
        self._producer = Producer(client_config(
            settings, client_errors, **{"linger.ms": 5, "compression.type": "lz4", "enable.idempotence": True,
                                        "acks": "all", "partitioner": "murmur2_random",
                                        "on_delivery": self._delivered, "delivery.report.only.error": True}))
        topics = metadata(self._producer, client_errors, settings, timeout).topics
        self._topics = {cls: settings.topic(role) for cls, role in _ROLES.items()}
        missing = sorted(t for t in self._topics.values() if t not in topics)
        if missing:
            raise KafkaUnavailable(f"topics {missing} do not exist at {settings.kafka_bootstrap_servers}; "
                                   "create them with `npo topics create`")
        self._partitions = {t: len(topics[t].partitions) for t in self._topics.values()}

    def send(self, event: dict | ScoreEvent | FeedbackEvent) -> None:
        """Queue one event (a dict may also be an envelope of events); ``ValueError``
        with the codec's reason and detail if the worker would dead-letter it."""
        if isinstance(event, dict):
            data = orjson.dumps(event)
        elif isinstance(event, (ScoreEvent, FeedbackEvent)):
            data = codec.encode(event)
        else:
            raise TypeError(f"expected a dict, ScoreEvent or FeedbackEvent, not {type(event).__name__}")
        events, errors = codec.decode(data)
        if errors:
            raise ValueError(f"{errors[0].reason}: {errors[0].detail}")
        for ev in events:
            self._enqueue(ev)

    def send_raw(self, topic_role: str, value: bytes, key: bytes | None = None) -> None:
        """Send ``value`` unchecked to a topic role (e.g. to inject bad input in tests)."""
        self._check_open()
        self._produce(self.settings.topic(topic_role), value, key)

    def poll(self, timeout: float = 0) -> None:
        """Send batches whose linger time has passed; serve delivery reports."""
        self._emit_due()
        self._producer.poll(timeout)

    def flush(self, timeout: float = 30) -> None:
        """Send every batch and wait for delivery; ``KafkaRequestError`` if messages are
        still undelivered after ``timeout`` or any delivery failed since the last flush."""
        for slot in list(self._batches):
            self._emit(slot)
        remaining = self._producer.flush(timeout)
        if remaining:
            raise KafkaRequestError(f"{remaining} message(s) not delivered within {timeout:g} s")
        if self.errors > self._reported:
            failed, self._reported = self.errors - self._reported, self.errors
            raise KafkaRequestError(f"{failed} message(s) not delivered; last error: {self.last_error}")

    def close(self, timeout: float = 30) -> None:
        """Send and deliver what is queued (as ``flush``); later sends raise. The librdkafka
        client goes with the object: ``Producer.close`` is newer than confluent-kafka 2.5."""
        if not self._closed:
            self._closed = True
            self.flush(timeout)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except Exception:
            if exc_type is None:
                raise  # otherwise the original exception is the one to see

    def _enqueue(self, event: ScoreEvent | FeedbackEvent) -> None:
        """Queue an already validated event."""
        self._check_open()
        topic = self._topics[type(event)]
        key = event.scenario_id.encode()
        self.events += 1
        if not self.envelope:
            self._produce(topic, codec.encode(event), key)
            return
        slot = (topic, partition_for(key, self._partitions[topic]))
        batch = self._batches.get(slot)
        if batch is None:
            batch = self._batches[slot] = []
            self._started[slot] = now = time.monotonic()
            self._deadline = min(self._deadline, now + self.linger)
        batch.append(event)
        if len(batch) >= self.max_events:
            self._emit(slot)
        elif self._deadline <= time.monotonic():
            self._emit_due()

    def _emit_due(self) -> None:
        now = time.monotonic()
        for slot in [s for s, started in self._started.items() if now - started >= self.linger]:
            self._emit(slot)

    def _emit(self, slot: tuple[str, int]) -> None:
        events = self._batches.pop(slot)
        del self._started[slot]
        self._deadline = min(self._started.values(), default=math.inf) + self.linger
        self._produce_envelopes(slot[0], slot[1], events)

    def _produce_envelopes(self, topic: str, partition: int, events: Sequence) -> None:
        try:
            data = self._encode_envelope(events)
        except ValueError:  # above the codec's own byte limit
            data = None
        if len(events) > 1 and (data is None or len(data) > MAX_ENVELOPE_BYTES):
            half = len(events) // 2
            self._produce_envelopes(topic, partition, events[:half])
            self._produce_envelopes(topic, partition, events[half:])
        else:
            self._produce(topic, data, events[0].scenario_id.encode(), partition)

    def _produce(self, topic: str, value: bytes, key: bytes | None, partition: int = -1) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, partition)
                break
            except BufferError:  # local queue full: wait for deliveries to make room
                self._producer.poll(0.05)
        self.messages += 1
        self._producer.poll(0)

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self.errors += 1
            self.last_error = f"{msg.topic()}: {err.str()}"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("EventProducer is closed")


def produce_file(settings: Settings, path: str | Path, envelope: bool = True,
                 raw_topic: str | None = None) -> dict:
    """Send a JSON-lines file (one event or envelope per line; blank lines skipped).

    Validated mode reports invalid lines to stderr with their line numbers and does
    not send them. With ``raw_topic`` ("scores"/"feedback") each line goes as-is to that
    topic, unchecked, for injecting bad input; ``events`` then stays 0.
    Returns ``{"lines", "events", "messages", "invalid"}``.
    """
    counts = {"lines": 0, "events": 0, "messages": 0, "invalid": 0}
    with open(path, "rb") as f, EventProducer(settings, envelope=envelope) as producer:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            counts["lines"] += 1
            if raw_topic:
                producer.send_raw(raw_topic, line)
                continue
            events, errors = codec.decode(line)
            if errors:
                counts["invalid"] += 1
                for r in errors:
                    print(f"{path}:{lineno}: {r.reason}: {r.detail}", file=sys.stderr)
                continue
            for ev in events:
                producer._enqueue(ev)
    counts.update(events=producer.events, messages=producer.messages)
    return counts
