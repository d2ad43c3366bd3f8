"""The worker with Redis beside it, on the real broker and Redis: a threshold set in Redis
changes the next evaluation; Redis stopped and restarted (empty) mid-run loses nothing; the
Prometheus endpoint shows the counters moving."""
from __future__ import annotations

import time
import urllib.request

import orjson
import pytest
import redis

from streams.config import MonitorConfig
from streams.metrics import Metrics
from streams.settings import TOPICS
from streams.state.redis_store import RedisSink
from tests.integration.harness import (WorkerThread, json_values, ordered_producer, read_topic, redis_cluster_settings,
                                       redis_store)
from tests.integration.processes import wait_for
from tests.services import delete_topics, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = MonitorConfig()
T0 = 1_767_225_600.0  # a multiple of the 300 s pane
PANE = CONFIG.windows.tumbling_s
KEYS = [("pol-a", "seg"), ("pol-b", "seg"), ("pol:c", "seg%1")]
QUIET = ("pol-quiet", "seg")  # no events after the first part: only a restore brings it back


@pytest.fixture
def settings(kafka_bootstrap, redis_url, tmp_path):
    s = redis_cluster_settings(kafka_bootstrap, redis_url, str(tmp_path / "state"), "wr")
    yield s
    delete_topics(kafka_bootstrap, [s.topic(role) for role in TOPICS])


def _sink(settings) -> RedisSink:
    sink = RedisSink(lambda: redis_store(settings), flush_every_s=0.5)
    sink.start_background(0.5)
    return sink


def _windows(first: int, last: int, keys=KEYS) -> list[dict]:
    """Scores (tau 0.5) with their feedback for panes first..last of every key."""
    out = []
    for pane in range(first, last + 1):
        for k, (policy_id, segment) in enumerate(keys):
            for i in range(20):
                sid = f"{policy_id}|{segment}|{pane}|{i}"
                ts = T0 + pane * PANE + i * 10 + k
                score = 0.3 + 0.03 * i
                out.append({"type": "score", "v": 1, "event_id": f"s-{sid}", "scenario_id": sid,
                            "policy_id": policy_id, "segment": segment, "score": score, "tau": 0.5,
                            "decision": "act" if score >= 0.5 else "hold", "ts": ts})
                out.append({"type": "feedback", "v": 1, "event_id": f"f-{sid}", "scenario_id": sid,
                            "ts": ts + 5, "kind": "override" if i % 3 == 0 else "like"})
    return out


def _produce(settings, events: list[dict]) -> None:
    producer = ordered_producer(settings)
    for e in events:
        topic = settings.topic("scores" if e["type"] == "score" else "feedback")
        producer.produce(topic, orjson.dumps(e), key=e["scenario_id"].encode())
    assert producer.flush(30) == 0


def _final(settings, kind: str) -> dict:
    """(policy_id, segment, start) -> stats of final windows of one kind on the stats topic."""
    return {(e["policy_id"], e["segment"], e["window"]["start"]): e["stats"]
            for e in json_values(read_topic(settings, "stats")) if e["final"] and e["window"]["kind"] == kind}


def test_a_threshold_set_in_redis_changes_the_next_evaluation(settings):
    sink = _sink(settings)
    worker = WorkerThread(settings, CONFIG, sink=sink).start()
    try:
        first = _windows(0, 5)
        _produce(settings, first)
        worker.wait_idle()
        last_ts = max(e["ts"] for e in first)
        store = redis_store(settings)
        store.set_threshold("pol-a", "seg", 0.9)
        assert store.get_threshold("pol-a", "seg") == 0.9
        wait_for(lambda: worker.worker.monitors.thresholds.get(("pol-a", "seg")) == 0.9, 30, "the worker to poll")
        _produce(settings, _windows(6, 12))
        worker.wait_idle()
    finally:
        worker.stop()
        sink.stop()

    tumbling = _final(settings, "tumbling")
    # closed before the change (the watermark had passed them), and opened after it
    before = {k: s for k, s in tumbling.items() if k[2] + 2 * PANE <= last_ts - CONFIG.windows.grace_s}
    after = {k: s for k, s in tumbling.items() if k[2] > last_ts}
    assert len(before) >= 3 * len(KEYS) and len(after) >= 6 * len(KEYS)
    assert {s["tau"] for s in before.values()} == {0.5}  # mean tau of the decisions
    assert {s["tau"] for (p, _, _), s in after.items() if p == "pol-a"} == {0.9}
    assert {s["tau"] for (p, _, _), s in after.items() if p != "pol-a"} == {0.5}
    # the saving is measured against the decisions taken, so it is defined wherever there are labels
    labelled = [s for s in after.values() if s["n_labels"] > 0]
    assert labelled and all(s["cost_saved"] is not None for s in labelled)
    latest = redis_store(settings).get_stats("pol-a", "seg")
    assert latest["tumbling"]["tau"] == 0.9


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_redis_stopped_and_restarted_mid_run_loses_nothing(settings, redis_service):
    metrics, port = Metrics(), free_port()
    metrics.serve(port)
    sink = _sink(settings)
    worker = WorkerThread(settings, CONFIG, sink=sink, metrics=metrics).start()
    try:
        _produce(settings, sorted(_windows(0, 5) + _windows(0, 2, keys=[QUIET]), key=lambda e: e["ts"]))
        worker.wait_idle()
        wait_for(lambda: sink.pending == 0 and sink.written > 0, 30, "the first flush")
        quiet_before = redis_store(settings).get_stats(*QUIET)
        assert quiet_before is not None

        redis_service.stop()  # the managed Redis keeps no data: it comes back empty
        down_since = time.monotonic()
        _produce(settings, _windows(6, 11))
        worker.wait_idle()
        assert worker.alive()
        wait_for(lambda: sink.errors > 0, 30, "a failed flush")
        wait_for(lambda: _scrape(port).get("npo_redis_errors_total", 0) > 0, 30, "the error metric")
        time.sleep(max(0.0, 30.0 - (time.monotonic() - down_since)))  # down for 30 s in all
        assert worker.alive() and sink.consecutive_errors > 10

        redis_service.start()
        wait_for(lambda: sink.consecutive_errors == 0 and sink.pending == 0 and sink.restores == 1, 30,
                 "the sink to catch up")
        _produce(settings, _windows(12, 13))  # and it keeps writing afterwards
        worker.wait_idle()
        wait_for(lambda: sink.pending == 0, 30, "the last flush")
    finally:
        worker.stop()
        sink.stop()

    scraped = _scrape(port)
    assert scraped['npo_events_in_total{kind="score",topic="score"}'] == 20 * (14 * len(KEYS) + 3)
    assert scraped['npo_events_in_total{kind="like",topic="feedback"}'] > 0
    assert scraped['npo_windows_closed_total{kind="tumbling"}'] > 0
    assert any(name.startswith("npo_consumer_lag{") for name in scraped)
    assert scraped["npo_kernel_seconds_count"] > 0

    # Redis holds exactly the latest final window of each view that Kafka got, for every key
    store = redis_store(settings)
    for kind in ("tumbling", "hopping", "cumulative"):
        latest = {}
        for (policy_id, segment, start), stats in sorted(_final(settings, kind).items()):
            latest[policy_id, segment] = stats
        assert set(latest) == {*KEYS, QUIET}
        for (policy_id, segment), stats in latest.items():
            held = store.get_stats(policy_id, segment)[kind]
            assert {k: v for k, v in held.items() if k != "window"} == stats, (kind, policy_id)
    # its tumbling view was last written before the outage (hopping windows holding its panes
    # kept closing during it): only the restore can have put it back
    assert store.get_stats(*QUIET)["tumbling"] == quiet_before["tumbling"]
    client = redis.Redis.from_url(settings.redis_url)
    assert client.exists(settings.redis_namespace + "written")
    client.close()


def test_npo_worker_command_serves_metrics_writes_redis_and_stops_on_sigterm(settings):
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    env = {**os.environ, "NPO_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "NPO_TOPIC_PREFIX": settings.topic_prefix, "NPO_GROUP_ID": settings.group_id,
           "NPO_REDIS_URL": settings.redis_url, "NPO_REDIS_NAMESPACE": settings.redis_namespace,
           "NPO_STATE_DIR": settings.state_dir, "NPO_METRICS_PORT": str(port)}
    _produce(settings, _windows(0, 3))
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def counted() -> bool:
            try:
                return _scrape(port).get('npo_events_in_total{kind="score",topic="score"}', 0) == 4 * 20 * len(KEYS)
            except OSError:
                return False
        wait_for(counted, 60, "the worker to count every score")
        wait_for(lambda: (redis_store(settings).get_stats("pol-a", "seg") or {}).get("tumbling") is not None, 30,
                 "statistics in Redis")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    logs = [orjson.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert any(rec["msg"] == "worker started" and rec["level"] == "INFO" for rec in logs)
