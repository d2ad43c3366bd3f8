"""A worker killed with SIGKILL at different points of a run, then restarted, publishes
exactly the final window statistics and trigger ids of the crash-free (in-process) run on
the same input: state and offsets come back together from the committed checkpoint, and
the replay after it is applied once."""
from __future__ import annotations

import dataclasses
import signal

import pytest

from streams.config import MonitorConfig
from streams.demo.runner import run_partitioned
from streams.kafka.producer import EventProducer
from streams.simulate import SimConfig, simulate
from tests.integration.harness import json_values, merged_by_partition, read_topic
from tests.integration.processes import spawn, stop, wait_caught_up
from tests.integration.test_worker_e2e import (
    _assert_same_windows, _cut, _expected, _flush_events, _published, _trigger_ids)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = MonitorConfig()


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

    reference = run_partitioned(merged_by_partition(settings, 2), CONFIG)
    cut = _cut(simulated)
    want = _expected(reference.results, cut)
    assert len(want) > 100
    _assert_same_windows(_published(settings, cut), want)
    published = json_values(read_topic(settings, "triggers"))
    assert _trigger_ids(published, cut) == _trigger_ids(reference.triggers, cut) != set()
