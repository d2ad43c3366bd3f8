"""Back-pressure: the stats and triggers topics refuse writes for a while (their
max.message.bytes set below any message). The worker holds back, its memory stays flat, and
once the topics take writes again every window statistic and trigger arrives, exactly those of
the in-process run."""
from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from streams.config import MonitorConfig
from streams.demo.runner import encode_messages, run_pipeline
from tests.integration.harness import WorkerThread, json_values, ordered_producer, read_topic
from tests.integration.processes import wait_for
from tests.integration.test_hostile_input import _rss_mb
from tests.integration.test_worker_e2e import (
    _assert_same_windows, _cut, _expected, _flush_events, _published, _trigger_ids)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = MonitorConfig()


def _max_message_bytes(settings, roles, value: str | None) -> None:
    """Set (or, with None, remove) max.message.bytes on the roles' topics."""
    op = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
    resources = [ConfigResource(ConfigResource.Type.TOPIC, settings.topic(role),
                                incremental_configs=[ConfigEntry("max.message.bytes", value or "",
                                                                 incremental_operation=op)])
                 for role in roles]
    admin = AdminClient(settings.confluent())  # must outlive its futures
    for future in admin.incremental_alter_configs(resources).values():
        future.result(timeout=30)


def test_unwritable_output_topics_hold_the_worker_back_and_lose_nothing(cluster, sim):
    settings = cluster(1)
    events = sim.events + _flush_events(sim.events, 1)
    producer = ordered_producer(settings, **{"linger.ms": 5})
    # strictly increasing message timestamps near now (old ones would fall to the topics' retention)
    base_ms = int(time.time() * 1000)
    for i, e in enumerate(events):
        topic = settings.topic("scores" if e["type"] == "score" else "feedback")
        producer.produce(topic, orjson.dumps(e), key=e["scenario_id"].encode(), timestamp=base_ms + i)
        if i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    _max_message_bytes(settings, ["stats", "triggers"], "64")

    worker = WorkerThread(settings, CONFIG).start()
    wait_for(lambda: worker.worker.counters["output_retries"] > 0 or not worker.alive(), 60, "a refused write")
    assert worker.alive()
    rss_blocked = _rss_mb()
    time.sleep(15)  # blocked for a while
    assert worker.alive()
    assert _rss_mb() - rss_blocked < 50
    assert read_topic(settings, "stats") == []

    _max_message_bytes(settings, ["stats", "triggers"], None)
    worker.wait_idle(quiet_s=5.0)
    worker.stop()

    demo = run_pipeline(encode_messages(events, 1), CONFIG)
    cut = _cut(sim.events)
    _assert_same_windows(_published(settings, cut), _expected(demo.results, cut))
    published = json_values(read_topic(settings, "triggers"))
    assert _trigger_ids(published, cut) == _trigger_ids(demo.triggers, cut) != set()
    assert worker.worker.counters["events_in", "score"] == sum(e["type"] == "score" for e in events)
