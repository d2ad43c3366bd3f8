"""The broker stopped and restarted while a worker is in the middle of a run: the worker
reconnects by itself, and the window statistics and trigger ids are exactly those of the
in-process run on the same partitions (nothing lost, nothing counted twice)."""
from __future__ import annotations

import time

import pytest

from streams import codec
from streams.config import MonitorConfig
from streams.kafka.producer import EventProducer
from streams.simulate import SimConfig, simulate
from tests.integration.harness import WorkerThread, read_topic
from tests.integration.processes import wait_caught_up
from tests.integration.test_worker_e2e import _flush_events, assert_same_as_in_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = MonitorConfig()


def test_a_broker_restart_mid_run_loses_and_doubles_nothing(cluster, kafka_service):
    sim = simulate(SimConfig(seed=11, n_windows=72, decisions_per_window=60))
    settings = cluster(2)
    events = sim.events + _flush_events(sim.events, 2)
    with EventProducer(settings, envelope=True, max_events=50) as producer:  # many messages: a long run
        for e in events:
            producer.send(e)

    scores = sum(e["type"] == "score" for e in events)
    assert _scores_in_log(settings) == scores, "acknowledged events are missing from the log"

    worker = WorkerThread(settings, CONFIG).start()
    deadline = time.monotonic() + 60
    while worker.worker.counters["events_in", "score"] == 0:
        assert time.monotonic() < deadline and worker.alive(), "the worker never started consuming"  # fail-fast bound
        time.sleep(0.05)
    kafka_service.restart(downtime=5.0)
    try:
        worker.wait_for(("events_in", "score"), scores)
    except AssertionError as e:  # the worker's loss, or the broker's?
        raise AssertionError(f"{e}; scores in the log now: {_scores_in_log(settings)} of {scores}") from e
    try:  # the aggregate group too: it may still be rejoining its restarted coordinator
        wait_caught_up(settings, [])
    except AssertionError as e:
        raise AssertionError(f"{e}; worker error: {worker.error!r}") from e
    worker.wait_idle(quiet_s=6.0, timeout=240)
    assert worker.alive()
    worker.stop()

    assert_same_as_in_process(settings, sim.events, 2)
    assert worker.worker.counters["events_in", "score"] == scores


def _scores_in_log(settings) -> int:
    return sum(len(codec.decode(m.value()).events) for m in read_topic(settings, "scores"))
