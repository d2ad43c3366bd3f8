"""Records deleted from an input log before the worker read them (retention, while every
worker was down): the worker restarted from its checkpoint counts them by topic, logs them,
and reads on from the log's first record; nothing else is counted lost, and the next start
does not count them again. Also while a worker runs and has fallen behind: its client goes
on at the log's first record without a word, and the worker counts and logs what it skipped."""
from __future__ import annotations

import os
import signal
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.config import MonitorConfig
from streams.demo.runner import encode_messages
from streams.kafka.producer import EventProducer
from streams.pipeline import PartitionStage
from streams.simulate import SimConfig, simulate
from streams.worker.outputs import PartialsRouter
from tests.integration.harness import WorkerThread, ordered_producer
from tests.integration.processes import log_tail, spawn, stop, wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = MonitorConfig()
LOST = 25
LOST_PARTIALS = 3


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


def _delete(settings, role: str, before: int) -> None:
    """Delete the records of `role`'s partition 0 before offset `before`, as retention would."""
    admin = AdminClient(settings.confluent())  # held until the answer: a client dropped early never gives it
    deleted = admin.delete_records([TopicPartition(settings.topic(role), 0, before)])
    assert next(iter(deleted.values())).result(timeout=30).low_watermark == before


def _delete_unread_scores(settings, events: list[dict]) -> tuple[int, int]:
    """Produce the later events, then delete the first LOST scores among them: (offset of the
    first deleted, later scores produced)."""
    scores_at = _end(settings, "scores")
    _produce(settings, events)
    later_scores = sum(e["type"] == "score" for e in events)
    assert later_scores > LOST
    _delete(settings, "scores", scores_at + LOST)
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
    feedback_at = _end(settings, "feedback")
    scores_at, later_scores = _delete_unread_scores(settings, later)
    later_feedback = _end(settings, "feedback") - feedback_at
    _delete(settings, "feedback", feedback_at + later_feedback)  # all of it: nothing left to read there

    with caplog.at_level("ERROR", logger="npo.worker"):
        second = WorkerThread(settings, CONFIG).start()
        wait_caught_up(settings, [])
        second.wait_idle()
        second.stop()
    counters = second.worker.counters
    assert {k[1]: v for k, v in counters.items() if isinstance(k, tuple) and k[0] == "lost_to_retention"} == {
        settings.topic("scores"): LOST, settings.topic("feedback"): later_feedback}
    assert counters["events_in", "score"] == later_scores - LOST  # the rest read, from the log's first record
    assert _message(settings, scores_at) in [r.getMessage() for r in caplog.records]
    # its checkpoint goes on from the logs' first records, though no feedback came to move it
    third = WorkerThread(settings, CONFIG).start()
    third.wait_idle()
    third.stop()
    assert not [k for k in third.worker.counters if isinstance(k, tuple) and k[0] == "lost_to_retention"]


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


@pytest.mark.parametrize("host", ["worker", "faust"])
def test_records_deleted_while_a_running_worker_had_not_read_them_are_counted_once(cluster, tmp_path, host):
    """The worker is stopped (SIGSTOP, shorter than its session) while the later events are
    produced and the first of their scores deleted, as retention would behind a lagging
    consumer; it then goes on (SIGCONT) and its next fetch asks for deleted offsets."""
    settings = cluster(1)
    earlier, later = _events()
    _produce(settings, earlier)
    worker = spawn(settings, tmp_path / "worker.log", host=host)
    wait_caught_up(settings, [worker], host=host)
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)  # the fetch in flight is answered, empty: the next one asks for the deleted offsets
        scores_at, _ = _delete_unread_scores(settings, later)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    wait_caught_up(settings, [worker], host=host)
    stop(worker)
    log = log_tail(worker, 10**6)
    assert log.count("deleted before they were read") == 1 and _message(settings, scores_at) in log, log_tail(worker)


def _partials_messages(settings) -> list[bytes]:
    """The partials messages input partition 0 sends for simulated traffic, their parts
    numbered 1, 2, ..., made as a worker's ingest makes them."""
    stage = PartitionStage(CONFIG)
    router = PartialsRouter(settings.topic("partials"), CONFIG.layout.width, partitions=1)
    messages = []
    try:
        for batch in encode_messages(simulate(SimConfig(seed=4, n_windows=12, decisions_per_window=60)).events, 150):
            messages += [value for _, value, _, _ in router.messages(0, stage.process([batch]).partials)]
    finally:
        stage.close()
    return messages


@pytest.mark.parametrize("host", ["worker", "faust"])
def test_partials_deleted_before_the_aggregate_read_them_are_counted_and_it_does_not_wait_for_them(
        cluster, tmp_path, host):
    """Partials the aggregate's checkpoint had not reached were deleted while it was down, as
    partials retention (2 days) would after a longer outage: the restarted aggregate counts
    and logs them, gives up waiting for their numbers, and applies the rest."""
    settings = cluster(1)
    messages = _partials_messages(settings)
    assert len(messages) > 2 * LOST_PARTIALS
    producer = ordered_producer(settings)

    def produce(values) -> None:
        for value in values:
            producer.produce(settings.topic("partials"), value, partition=0)
        assert producer.flush(30) == 0

    produce(messages[:LOST_PARTIALS])
    first = spawn(settings, tmp_path / "first.log", host=host)
    wait_caught_up(settings, [first], host=host)  # its checkpoint covers them
    stop(first)
    produce(messages[LOST_PARTIALS:])
    _delete(settings, "partials", 2 * LOST_PARTIALS)
    second = spawn(settings, tmp_path / "second.log", host=host)
    wait_caught_up(settings, [second], host=host, timeout=120)  # nothing held back: its checkpoint reaches the end
    stop(second)
    log = log_tail(second, 10**6)
    lost = (f"{settings.topic('partials')}[0]: {LOST_PARTIALS} records (offsets {LOST_PARTIALS} to "
            f"{2 * LOST_PARTIALS - 1}) were deleted before they were read")
    assert log.count("deleted before they were read") == 1 and lost in log, log_tail(second)
