"""Fixtures the worker's end-to-end tests share: fresh topic sets on the real broker, and a
small simulated stream with known truth."""
from __future__ import annotations

import pytest

from streams.kafka.admin import create_topics
from streams.settings import TOPICS, load
from streams.simulate import SimConfig, simulate
from tests.integration.processes import kill_leftovers
from tests.services import delete_topics, unique_prefix


@pytest.fixture(autouse=True)
def _no_leftover_workers():
    yield
    kill_leftovers()


@pytest.fixture(scope="module")
def sim():
    return simulate(SimConfig(seed=5, n_windows=36, decisions_per_window=60))


@pytest.fixture
def cluster(kafka_bootstrap, tmp_path):
    """``cluster(partitions)`` -> Settings for a fresh set of topics (deleted afterwards)."""
    made = []

    def make(partitions: int):
        s = load(overrides={"kafka_bootstrap_servers": kafka_bootstrap, "topic_prefix": unique_prefix("e2e"),
                            "topic_partitions": partitions, "group_id": unique_prefix("g").rstrip("."),
                            "state_dir": str(tmp_path / f"state-{len(made)}"), "metrics_port": 0,
                            "checkpoint_interval_s": 1.0}, env={})
        create_topics(s)
        made.append(s)
        return s

    yield make
    for s in made:
        delete_topics(kafka_bootstrap, [s.topic(role) for role in TOPICS])
