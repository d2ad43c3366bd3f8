"""A worker killed with SIGKILL at different points of a run, then restarted, publishes
exactly the final window statistics and trigger ids of the crash-free (in-process) run on
the same input: state and offsets come back together from the committed checkpoint, and
the replay after it is applied once."""
from __future__ import annotations

import dataclasses
import signal
import time

import orjson
import pytest

from streams.kafka.producer import EventProducer
from streams.simulate import SimConfig, simulate
from tests.integration.harness import ordered_producer
from tests.integration.processes import spawn, stop, wait_caught_up
from tests.integration.test_worker_e2e import _flush_events, assert_same_as_in_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def events():
    sim = simulate(SimConfig(seed=17, n_windows=60, decisions_per_window=150))
    return sim.events, sim.events + _flush_events(sim.events, 2)


@pytest.mark.parametrize("crash_at", ["round:4", "batch:3", "checkpoint:3", "window:2"])
def test_a_worker_killed_and_restarted_gives_the_crash_free_results(cluster, events, tmp_path, crash_at):
    simulated, everything = events
    settings = dataclasses.replace(cluster(2), checkpoint_interval_s=0.2)
    with EventProducer(settings, envelope=False) as producer:  # single events: many small batches
        for e in everything:
            producer.send(e)

    first = spawn(settings, tmp_path / "first.log", crash_at=crash_at)
    assert first.wait(timeout=180) == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-2000:]
    second = spawn(settings, tmp_path / "second.log")
    wait_caught_up(settings, [second])
    stop(second)

    assert_same_as_in_process(settings, simulated, 2)


def test_partials_writes_that_fail_and_land_after_later_ones_are_applied_in_order(cluster, events, tmp_path):
    """Every 4th write to the partials topic fails once and is retried after the writes that
    followed it, so messages of one input partition land out of order: the monitors hold
    the early ones until the gap fills, and the results are those of the in-process run."""
    simulated, everything = events
    settings = cluster(2)
    log = _run_refusing(settings, everything, tmp_path / "worker.log", "partials:4")
    assert "refused by NPO_REFUSE_SEND" in log
    assert_same_as_in_process(settings, simulated, 2)


def _run_refusing(settings, everything: list[dict], log_path, refuse: str) -> str:
    """One worker over `everything` (single events) with `NPO_REFUSE_SEND=refuse`; its log."""
    with EventProducer(settings, envelope=False) as producer:
        for e in everything:
            producer.send(e)
    worker = spawn(settings, log_path, NPO_REFUSE_SEND=refuse)
    wait_caught_up(settings, [worker])
    stop(worker)
    return log_path.read_text()


def test_checkpoint_writes_and_deletions_that_fail_are_tried_again_and_change_nothing(cluster, events, tmp_path):
    """Every 3rd write to the checkpoints topic (a checkpoint, or the tombstones of a superseded
    one) fails, as in a broker outage longer than the producer's request timeout: the worker
    goes on, checkpoints again at the partition's next turn, and gives the in-process results;
    a worker started after it loads the checkpoints that did come into force."""
    simulated, everything = events
    settings = cluster(2)
    log = _run_refusing(settings, everything, tmp_path / "worker.log", "checkpoints:3")
    assert "checkpoint not written" in log and "refused by NPO_REFUSE_SEND" in log
    assert_same_as_in_process(settings, simulated, 2)
    second = spawn(settings, tmp_path / "second.log")  # loads what is in force, reads nothing again
    wait_caught_up(settings, [second])
    stop(second)
    assert_same_as_in_process(settings, simulated, 2)


def test_a_silent_input_partition_does_not_hold_windows_open(cluster, events, tmp_path):
    """Every event on partition 0 of two: once partition 1 has been idle for a second the
    monitors close windows on partition 0's event time alone, and the final windows and
    trigger ids are those of the in-process run, after a SIGKILL at a checkpoint and a replay
    (the monitors see the idleness note before and after the crash)."""
    crash_at = "checkpoint:3"
    simulated, _ = events
    settings = dataclasses.replace(cluster(2), checkpoint_interval_s=0.2)
    everything = simulated + _flush_events(simulated, 1)
    producer = ordered_producer(settings, **{"linger.ms": 5})
    base_ms = int(time.time() * 1000)
    for i, e in enumerate(everything):
        topic = settings.topic("scores" if e["type"] == "score" else "feedback")
        producer.produce(topic, orjson.dumps(e), key=e["scenario_id"].encode(), partition=0, timestamp=base_ms + i)
        if i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0

    idle = {"NPO_PARTITION_IDLE_MS": "1000"}
    worker = spawn(settings, tmp_path / "first.log", crash_at=crash_at, **idle)
    assert worker.wait(timeout=180) == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-2000:]
    worker = spawn(settings, tmp_path / "second.log", **idle)
    wait_caught_up(settings, [worker])
    time.sleep(3.0)  # the idleness note goes out a second after the partition's last read
    wait_caught_up(settings, [worker])
    stop(worker)
    assert_same_as_in_process(settings, simulated, 2)
