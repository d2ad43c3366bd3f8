"""The actuator's loop: triggers and window statistics in, thresholds and action events out.

One consumer group reads the ``triggers`` and ``stats`` topics. Each message is handled in
this order, which is what makes every effect happen exactly once across crashes:

1. decide and record, in one Redis transaction (:mod:`streams.actuator.store`): the decision,
   the threshold it writes, the key's state, and the messages to publish (an outbox);
2. publish the outbox and wait for the broker's acknowledgement, then drop those entries;
3. commit the message's offset.

A crash before 1 redelivers the message and it is decided then; after 1, the redelivered
trigger finds its decision recorded and is not decided again, and the outbox is published at
the next start (at worst twice, with the same ``action_id``/``trigger_id``). Window statistics
are stored by window start, so a redelivered one changes nothing.

For the crash tests, ``NPO_ACTUATOR_CRASH_AT=<point>:<n>`` makes the process SIGKILL itself the
n-th time it passes ``recorded`` (after 1) or ``published`` (after 2), as the worker's
``NPO_CRASH_AT`` does; unset, as in production, a point costs one comparison.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

import msgspec
import orjson
from confluent_kafka import Consumer, KafkaException, Producer

from streams.actuator.decide import ActuatorConfig, decide_adjust
from streams.actuator.store import ActuatorStore
from streams.events import TriggerEvent, Window
from streams.kafka.errors import ClientErrors, KafkaRequestError, KafkaUnavailable, client_config, metadata
from streams.settings import Settings
from streams.state.redis_store import RedisStore, StateUnavailable

log = logging.getLogger("npo.actuator")
_TRIGGER = msgspec.json.Decoder(TriggerEvent)


class _Stats(msgspec.Struct):
    """The window statistics the probation test reads; counts as numbers, since the worker
    writes some of the other counts (the audit pairs) as 0.0, which WindowStats refuses."""

    weight_sum: float
    n_labels: float
    n_decisions: float
    n_feedback: float
    loss: float | None = None
    n_eff: float | None = None


class _StatsEvent(msgspec.Struct):
    policy_id: str
    segment: str
    window: Window
    final: bool
    stats: _Stats


_STATS = msgspec.json.Decoder(_StatsEvent)


def _decoded(decoder: msgspec.json.Decoder, value: bytes | None, what: str):
    """The message decoded, or None (logged) if it is not one: a bad message is skipped, never fatal."""
    try:
        return decoder.decode(value or b"")
    except msgspec.DecodeError as exc:
        log.warning("skipping undecodable %s: %s", what, exc)
        return None
_CRASH_POINTS = ("recorded", "published")


def _crash_target() -> tuple[str, int] | None:
    raw = os.environ.get("NPO_ACTUATOR_CRASH_AT")
    if not raw:
        return None
    point, _, n = raw.partition(":")
    if point not in _CRASH_POINTS or not n.isdigit() or int(n) < 1:
        raise ValueError(f"NPO_ACTUATOR_CRASH_AT must be <point>:<n>, point in {_CRASH_POINTS}, got {raw!r}")
    return point, int(n)


_CRASH = _crash_target()
_passed = dict.fromkeys(_CRASH_POINTS, 0)


def _crash_point(point: str) -> None:
    if _CRASH is not None and point == _CRASH[0]:
        _passed[point] += 1
        if _passed[point] == _CRASH[1]:
            os.kill(os.getpid(), signal.SIGKILL)


class Actuator:
    """Consumes, decides, writes, publishes; :meth:`step` handles one message."""

    def __init__(self, settings: Settings, config: ActuatorConfig, redis_store: RedisStore | None = None,
                 commit_every_s: float = 1.0) -> None:
        self.settings, self.config, self.commit_every_s = settings, config, commit_every_s
        self.redis = redis_store or RedisStore.from_url(settings.redis_url, password=settings.redis_password,
                                                        namespace=settings.redis_namespace)
        self.state = ActuatorStore(self.redis)
        self.errors = ClientErrors()
        self.consumer = Consumer(client_config(settings, self.errors, **{
            "group.id": config.group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if config.from_beginning else "latest"}))
        self.producer = Producer(client_config(settings, self.errors, **{"enable.idempotence": True, "acks": "all"}))
        self.topics = {role: settings.topic(role) for role in ("triggers", "stats", "actions")}
        self.assigned = threading.Event()
        self.decisions: dict[str, int] = {}
        self._last_commit = time.monotonic()

    def start(self, timeout: float = 30.0) -> None:
        """Check the topics exist, publish what a previous run left in the outbox, subscribe."""
        known = metadata(self.consumer, self.errors, self.settings, timeout).topics
        missing = [t for t in self.topics.values() if t not in known]
        if missing:
            raise KafkaUnavailable(f"topics {missing} do not exist at {self.settings.kafka_bootstrap_servers} "
                                   "(run `npo topics create`)")
        self._flush_outbox()
        self.consumer.subscribe([self.topics["triggers"], self.topics["stats"]],
                                on_assign=lambda _c, _parts: self.assigned.set())

    def step(self, timeout: float = 0.5) -> bool:
        """Handle at most one message; whether there was one."""
        msg = self.consumer.poll(timeout)
        if msg is None:
            self._commit_due()
            return False
        if msg.error():
            if msg.error().fatal():
                raise KafkaRequestError(f"consumer failed: {msg.error().str()}")
            log.warning("%s: %s", msg.topic(), msg.error().str())
            return False
        while True:  # Redis down: hold this message (and the offsets behind it) until it answers
            try:
                acted = (self._on_trigger(msg.value()) if msg.topic() == self.topics["triggers"]
                         else self._on_stats(msg.value()))
                if acted:
                    _crash_point("recorded")
                    self._flush_outbox()
                    _crash_point("published")
                break
            except StateUnavailable as exc:
                log.warning("Redis unavailable, retrying in 1 s: %s", exc)
                time.sleep(1.0)
        if msg.topic() == self.topics["triggers"]:
            self._commit(asynchronous=False)  # a trigger's decision is done: never redeliver it needlessly
        else:
            self._commit_due()
        return True

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.step()

    def close(self) -> None:
        """Commit what was handled and leave the group."""
        self._commit(asynchronous=False)
        self.consumer.close()
        self.producer.flush(10)
        self.redis.close()

    def _on_trigger(self, value: bytes | None) -> bool:
        trigger = _decoded(_TRIGGER, value, "trigger")
        if trigger is None or trigger.rule != "threshold_adjust":
            return False
        action = self.state.decide_trigger(trigger, lambda st, tau: decide_adjust(trigger, st, tau, self.config))
        return self._decided(action)

    def _on_stats(self, value: bytes | None) -> bool:
        event = _decoded(_STATS, value, "window statistics")
        if event is None or not event.final or event.window.kind != "tumbling":
            return False
        w = event.window
        stats = msgspec.to_builtins(event.stats)
        keep = 2 * self.config.probation_s + (w.end - w.start)
        self.state.add_window(event.policy_id, event.segment, w.start, {**stats, "end": w.end}, keep_s=keep)
        return self._decided(self.state.settle_probation(event.policy_id, event.segment, self.config))

    def _decided(self, action: dict | None) -> bool:
        if action is None:
            return False
        self.decisions[action["decision"]] = self.decisions.get(action["decision"], 0) + 1
        log.info("%s %s/%s", action["decision"], action["policy_id"], action["segment"], extra={"action": action})
        return True

    def _flush_outbox(self) -> None:
        """Publish every outbox entry, wait for the broker, then drop the acknowledged ones."""
        entries = self.state.outbox()
        if not entries:
            return
        failed: list[str] = []

        def delivered(err, _msg) -> None:
            if err is not None:
                failed.append(err.str())

        for entry in entries:
            item = orjson.loads(entry)
            self.producer.produce(self.topics[item["role"]], orjson.dumps(item["value"]), key=item["key"].encode(),
                                  on_delivery=delivered)
        if self.producer.flush(30) or failed:
            raise KafkaRequestError(f"publishing {len(entries)} actuator messages failed: {failed[:1]}")
        self.state.published(entries)

    def _commit_due(self) -> None:
        if time.monotonic() - self._last_commit >= self.commit_every_s:
            self._commit(asynchronous=True)

    def _commit(self, asynchronous: bool) -> None:
        self._last_commit = time.monotonic()
        try:
            self.consumer.commit(asynchronous=asynchronous)
        except KafkaException as exc:  # nothing to commit yet, or lost the partitions: redelivered
            if exc.args[0].fatal():
                raise KafkaRequestError(f"commit failed: {exc.args[0].str()}") from exc
