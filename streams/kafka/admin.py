"""Creating the job's topics, so that a deployment (or a test) needs no Kafka tooling."""
from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from streams.kafka.errors import ClientErrors, KafkaRequestError, auth_error, client_config, metadata
from streams.settings import TOPICS, Settings

_DENIED = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED}


def create_topics(settings: Settings, partitions: int | None = None, replication: int | None = None,
                  timeout: float = 30) -> dict[str, str]:
    """Create every topic of ``TOPICS`` (prefixed) that does not exist yet, with its configs.

    Returns ``{topic: "created" | "exists"}``; an existing topic with another partition
    count is reported as ``"exists (N partitions)"`` and left alone, since changing it
    would move keys between partitions under a running job. Returns only once every
    partition of the created topics answers on its leader, so producing right after is
    safe: on brokers before Kafka 4.5 (KAFKA-15591) an idempotent producer's first request
    to a partition its leader has not taken up yet could be lost without an error, when a
    later request of the same producer landed first.
    """
    partitions = partitions or settings.topic_partitions
    replication = replication or settings.topic_replication
    errors = ClientErrors()
    admin = AdminClient(client_config(settings, errors))
    existing = metadata(admin, errors, settings, timeout).topics
    result = {settings.topic(role): _existing(existing[settings.topic(role)], partitions)
              for role in TOPICS if settings.topic(role) in existing}
    new = [NewTopic(settings.topic(role), num_partitions=partitions, replication_factor=replication,
                    config=dict(config)) for role, config in TOPICS.items() if settings.topic(role) not in existing]
    if new:
        futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result()
                result[name] = "created"
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:  # created concurrently
                    result[name] = _existing(admin.list_topics(name, timeout=timeout).topics[name], partitions)
                elif err.code() in _DENIED:
                    raise auth_error(settings, err) from exc
                else:
                    raise KafkaRequestError(f"cannot create topic {name}: {err.str()}") from exc
        created = [n for n, r in result.items() if r == "created"]
        _await_leaders(admin, created, timeout)
        _await_writable(admin, created, timeout)
    return {settings.topic(role): result[settings.topic(role)] for role in TOPICS}


def _existing(topic_metadata, partitions: int) -> str:
    count = len(topic_metadata.partitions)
    return "exists" if count == partitions else f"exists ({count} partitions)"


def _await(still_pending, pending: list, timeout: float, what: str) -> None:
    """Ask `still_pending(pending)` every 0.1 s until it returns nothing; KafkaRequestError
    naming the topics left after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while pending and (pending := still_pending(pending)):
        if time.monotonic() > deadline:
            names = sorted({p if isinstance(p, str) else p.topic for p in pending})
            raise KafkaRequestError(f"topics created but {what} after {timeout:g} s: {names}")
        time.sleep(0.1)


def _await_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    def without_leaders(pending: list[str]) -> list[str]:
        topics = admin.list_topics(timeout=timeout).topics
        return [n for n in pending if n not in topics or topics[n].error is not None
                or not topics[n].partitions or any(p.leader < 0 for p in topics[n].partitions.values())]

    _await(without_leaders, names, timeout, "without leaders")


def _await_writable(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Until every partition's leader answers a ListOffsets for it: the leader has taken the
    partition up (metadata can name a leader a moment before it has), so a produce lands.
    A principal not allowed to describe the topics cannot ask; it is not held up."""
    def unanswered(pending: list[TopicPartition]) -> list[TopicPartition]:
        futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in pending}, request_timeout=timeout)
        failed = []
        for tp, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() not in _DENIED:
                    failed.append(tp)
        return failed

    topics = admin.list_topics(timeout=timeout).topics
    _await(unanswered, [TopicPartition(n, p) for n in names for p in topics[n].partitions], timeout, "not writable")
