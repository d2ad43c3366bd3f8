"""Records deleted from an input log before the worker read them (retention, while every
worker was down): the worker restarted from its checkpoint counts them by topic, logs them,
and reads on from the log's first record; nothing else is counted lost."""
from __future__ import annotations

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.config import MonitorConfig
from streams.kafka.producer import EventProducer
from streams.simulate import SimConfig, simulate
from tests.integration.harness import WorkerThread
from tests.integration.processes import log_tail, spawn, stop, wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = MonitorConfig()
LOST = 25


def _produce(settings, events) -> None:
    with EventProducer(settings, envelope=False) as producer:  # single events: one record each
        for e in events:
            producer.send(e)


def _end(settings, role: str) -> int:
    consumer = Consumer({**settings.confluent(), "group.id": "end-offsets"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(settings.topic(role), 0), timeout=10)[1]
    finally:
        consumer.close()


def _delete_unread_scores(settings, events: list[dict]) -> tuple[int, int]:
    """Produce the later events, then delete the first LOST scores among them, as retention
    would: (offset of the first deleted, later scores produced)."""
    scores_at = _end(settings, "scores")
    _produce(settings, events)
    later_scores = sum(e["type"] == "score" for e in events)
    assert later_scores > LOST
    admin = AdminClient(settings.confluent())
    deleted = admin.delete_records([TopicPartition(settings.topic("scores"), 0, scores_at + LOST)])
    assert next(iter(deleted.values())).result(timeout=30).low_watermark == scores_at + LOST
    return scores_at, later_scores


def _message(settings, scores_at: int) -> str:
    return (f"{settings.topic('scores')}[0]: {LOST} records (offsets {scores_at} to {scores_at + LOST - 1}) were "
            f"deleted before they were read, by retention or delete-records; going on from {scores_at + LOST}")


def _events():
    events = simulate(SimConfig(seed=3, n_windows=6, decisions_per_window=40)).events
    return events[: len(events) // 2], events[len(events) // 2:]


def test_records_deleted_before_a_restarted_worker_read_them_are_counted_and_the_rest_is_read(cluster, caplog):
    settings = cluster(1)
    earlier, later = _events()
    _produce(settings, earlier)
    first = WorkerThread(settings, CONFIG).start()
    wait_caught_up(settings, [])  # its checkpoint covers the earlier events
    first.stop()
    scores_at, later_scores = _delete_unread_scores(settings, later)

    with caplog.at_level("ERROR", logger="npo.worker"):
        second = WorkerThread(settings, CONFIG).start()
        wait_caught_up(settings, [])
        second.wait_idle()
        second.stop()
    counters = second.worker.counters
    assert counters["lost_to_retention", settings.topic("scores")] == LOST
    assert counters["lost_to_retention", settings.topic("feedback")] == 0
    assert counters["events_in", "score"] == later_scores - LOST  # the rest read, from the log's first record
    assert [r.getMessage() for r in caplog.records if "deleted before they were read" in r.getMessage()] == [
        _message(settings, scores_at)]


def test_the_faust_host_logs_records_deleted_before_it_read_them(cluster, tmp_path):
    settings = cluster(1)
    earlier, later = _events()
    _produce(settings, earlier)
    first = spawn(settings, tmp_path / "first.log", host="faust")
    wait_caught_up(settings, [first], host="faust")
    stop(first)
    scores_at, _ = _delete_unread_scores(settings, later)
    second = spawn(settings, tmp_path / "second.log", host="faust")
    wait_caught_up(settings, [second], host="faust")
    stop(second)
    log = log_tail(second, 10**6)
    assert log.count("deleted before they were read") == 1 and _message(settings, scores_at) in log, log_tail(second)
