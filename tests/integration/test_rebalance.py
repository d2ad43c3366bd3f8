"""Two workers share a 4-partition topic set; one is killed with SIGKILL and the survivor
takes its partitions over within the session timeout; a third joins mid-run. The final
window statistics and trigger ids are those of the single-process run on the same input."""
from __future__ import annotations

import dataclasses
import signal

import pytest
from confluent_kafka.admin import AdminClient

from streams.kafka.producer import EventProducer
from streams.simulate import SimConfig, simulate
from tests.integration.processes import owners, spawn, stop, wait_caught_up, wait_for
from tests.integration.test_worker_e2e import _flush_events, assert_same_as_in_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SESSION_TIMEOUT_S = 10.0  # aiokafka's default session_timeout_ms
HEARTBEAT_S = 3.0  # aiokafka's default heartbeat_interval_ms: how soon the survivor hears of the rebalance


def _produce(settings, events) -> None:
    with EventProducer(settings, envelope=False) as producer:
        for e in events:
            producer.send(e)


def _sole_owner(settings, admin: AdminClient) -> bool:
    """One member holds every partition of both groups."""
    for role in ("ingest", "aggregate"):
        held = owners(settings, f"{settings.group_id}-{role}", admin)
        if list(held.values()) != [set(range(settings.topic_partitions))]:
            return False
    return True


def test_a_killed_worker_is_taken_over_and_a_joining_one_changes_nothing(cluster, tmp_path):
    sim = simulate(SimConfig(seed=23, n_windows=72, decisions_per_window=150))
    everything = sim.events + _flush_events(sim.events, 4)
    thirds = [everything[: len(everything) // 3], everything[len(everything) // 3: 2 * len(everything) // 3],
              everything[2 * len(everything) // 3:]]
    # records wait up to 2 s for their co-partition, so producing while the workers run keeps
    # the merged order the one the log holds (see worker/merge.py)
    settings = dataclasses.replace(cluster(4), checkpoint_interval_s=0.5, merge_idle_ms=2000.0)
    _produce(settings, thirds[0])

    a = spawn(settings, tmp_path / "a.log")
    b = spawn(settings, tmp_path / "b.log")
    wait_for(lambda: len(owners(settings, settings.group_id + "-ingest")) == 2, 90, "both workers joining", [a, b])
    wait_caught_up(settings, [a, b])

    b.send_signal(signal.SIGKILL)
    assert b.wait(timeout=10) == -signal.SIGKILL
    admin = AdminClient(settings.confluent())  # one client: a new one per look would add to what is measured
    takeover = wait_for(lambda: _sole_owner(settings, admin), 60, "the survivor taking every partition", [a])
    print(f"takeover after SIGKILL: {takeover:.1f} s")
    # within the session timeout and a heartbeat, with room for a busy host (the survivor's
    # loop busy with a batch or one group's checkpoint loads, delaying the other group's rejoin)
    assert takeover <= SESSION_TIMEOUT_S + HEARTBEAT_S + 10.0

    _produce(settings, thirds[1])
    c = spawn(settings, tmp_path / "c.log")  # joins while the second third is being processed
    _produce(settings, thirds[2])
    wait_for(lambda: len(owners(settings, settings.group_id + "-ingest")) == 2, 90, "the third worker joining", [a, c])
    wait_caught_up(settings, [a, c])
    stop(a)
    stop(c)

    assert_same_as_in_process(settings, sim.events, 4)
