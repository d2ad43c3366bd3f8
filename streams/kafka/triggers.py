"""Consuming trigger events: the documented way for a retraining job to act on them."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import msgspec
from confluent_kafka import Consumer, KafkaException

from streams.events import TriggerEvent
from streams.kafka.errors import ClientErrors, KafkaRequestError, KafkaUnavailable, client_config, metadata
from streams.settings import Settings

log = logging.getLogger("npo.kafka.triggers")
_DECODER = msgspec.json.Decoder(TriggerEvent)


class SeenIds:
    """A bounded, insertion-ordered set: past ``capacity`` the oldest id is forgotten."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}

    def add(self, item: str) -> None:
        if item not in self._ids:
            self._ids[item] = None
            if len(self._ids) > self.capacity:
                del self._ids[next(iter(self._ids))]

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)


def iter_triggers(settings: Settings, group_id: str, from_beginning: bool = True,
                  idle_timeout: float | None = None, seen: SeenIds | None = None,
                  limit: int | None = None, timeout: float = 30.0) -> Iterator[TriggerEvent]:
    """Yield trigger events of consumer group ``group_id``, at least once, repeats skipped.

    The contract: a trigger's offset is committed (synchronously) only when the loop
    asks for the next one, i.e. after the caller has processed it. A crash, or closing
    the generator before that, means the trigger is delivered again, to this group's
    next consumer. The monitor gives the same evidence the same ``trigger_id``, so
    repeats are skipped (and committed) by id: within a process by ``seen``; across
    restarts the job must keep its own record of processed ids, written as part of
    processing. Undecodable messages are skipped (and committed) with a warning on the
    ``npo.kafka.triggers`` logger, which reaches stderr unless logging is configured.
    ``from_beginning`` applies only when the group has no committed offset yet. Stops
    after ``idle_timeout`` seconds of waiting without a message (counted from the group's
    first assignment; none within ``timeout`` raises ``KafkaUnavailable``), or after ``limit``
    triggers (the last one committed). Close the generator (``contextlib.closing``) to
    leave the group at once rather than at garbage collection.

        done = load_processed_ids()                  # e.g. a table of the job's own
        seen = SeenIds()
        for t in iter_triggers(settings, "retrain-job", seen=seen):
            if t.trigger_id in done:                 # processed before a restart
                continue
            if t.rule == "retrain":
                start_retraining(t.policy_id, t.segment, t.evidence)
            record_processed(t.trigger_id)           # same transaction as the work,
            done.add(t.trigger_id)                   # if the work allows it
        # reaching the next iteration commits t's offset
    """
    seen = SeenIds() if seen is None else seen
    errors = ClientErrors()
    consumer = Consumer(client_config(settings, errors, **{
        "group.id": group_id, "enable.auto.commit": False,
        "auto.offset.reset": "earliest" if from_beginning else "latest"}))
    try:
        topic = settings.topic("triggers")
        if topic not in metadata(consumer, errors, settings, timeout).topics:
            raise KafkaUnavailable(f"topic {topic} does not exist at {settings.kafka_bootstrap_servers}")
        # idle time counts from the first assignment (the callback runs inside a poll), not from joining
        assigned: list[float] = []
        consumer.subscribe([topic], on_assign=lambda _c, _parts: assigned.append(time.monotonic()))
        yielded, last, join_deadline = 0, time.monotonic(), time.monotonic() + timeout
        while limit is None or yielded < limit:
            wait = 1.0 if idle_timeout is None else min(1.0, last + idle_timeout - time.monotonic())
            msg = consumer.poll(max(wait, 0.0))
            if assigned and last < assigned[0]:
                last = assigned[0]
            if msg is None:
                if not assigned:
                    if time.monotonic() > join_deadline:
                        raise KafkaUnavailable(f"group {group_id!r} got no assignment of {topic} "
                                               f"within {timeout:g} s")
                    last = time.monotonic()
                elif idle_timeout is not None and time.monotonic() - last >= idle_timeout:
                    return
                continue
            if msg.error():
                if msg.error().fatal():
                    raise KafkaRequestError(f"consumer failed: {msg.error().str()}")
                log.warning("%s: %s", topic, msg.error().str())
                last = time.monotonic()
                continue
            try:
                trigger = _DECODER.decode(msg.value() or b"")
            except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
                log.warning("skipping undecodable trigger at %s[%d]@%d: %s",
                            msg.topic(), msg.partition(), msg.offset(), exc)
            else:
                if trigger.trigger_id not in seen:
                    yield trigger  # a close() here leaves the offset uncommitted
                    seen.add(trigger.trigger_id)
                    yielded += 1
            _commit(consumer, msg)
            last = time.monotonic()  # idle time excludes the caller's processing
    finally:
        consumer.close()


def _commit(consumer: Consumer, msg) -> None:
    try:
        consumer.commit(message=msg, asynchronous=False)
    except KafkaException as exc:  # e.g. lost the partition in a rebalance: it is re-delivered
        if exc.args[0].fatal():
            raise KafkaRequestError(f"commit failed: {exc.args[0].str()}") from exc
        log.warning("commit of %s[%d]@%d failed (it will be re-delivered): %s",
                    msg.topic(), msg.partition(), msg.offset(), exc.args[0].str())
