"""The load-test tool on the real broker, at a small scale: `npo bench pipeline` reports every
figure, `npo loadtest` sends exactly what the worker then counts, and a short soak runs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from loadtest.bench import check_result
from loadtest.procs import counted
from streams.config import MonitorConfig
from streams.kafka.admin import create_topics
from streams.settings import TOPICS, load
from tests.integration.harness import WorkerThread
from tests.services import delete_topics, unique_prefix

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _npo(bootstrap: str, *args: str, timeout: float = 240) -> dict:
    env = {**os.environ, "NPO_KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    proc = subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=REPO, env=env, capture_output=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return orjson.loads(proc.stdout.splitlines()[-1])


def test_bench_pipeline_reports_every_figure(kafka_bootstrap, tmp_path):
    n = 20_000
    result = _npo(kafka_bootstrap, "bench", "pipeline", "--events", str(n), "--peer-events", "4000",
                  "--latency-seconds", "4", "--timeout", "120", "--topic-prefix", unique_prefix("lt"),
                  "--out", str(tmp_path), "--json")
    assert check_result(result) == [], result
    assert result["single_counted"] == result["envelope_counted"] == result["envelope_json_counted"] == n
    assert result["envelope_json_events_per_s"] > 0 and result["in_process_json_events_per_s"] > 0
    assert result["two_workers_counted"] >= n and result["two_workers_events_per_s"] > 0
    assert result["latency_triggers_timed"] > 0
    for client in ("aiokafka", "confluent"):  # each plain consumer: the median of its drains
        runs = result[f"raw_{client}_runs_events_per_s"]
        assert len(runs) == 3 and result[f"raw_{client}_events_per_s"] == sorted(runs)[1]
    faster = max(("aiokafka", "confluent"), key=lambda c: result[f"raw_{c}_events_per_s"])
    assert result["raw_client"] == faster and result["raw_events_per_s"] == result[f"raw_{faster}_events_per_s"]
    assert result["single_vs_raw"] == round(result["single_events_per_s"] / result["raw_events_per_s"], 3)
    assert result["in_process_events_per_s"] > 0 and result["in_process_vs_raw"] > 0
    assert set(result["peak_rss_mb"]) >= {"raw_aiokafka", "raw_confluent", "single", "envelope", "envelope_json",
                                          "in_process", "in_process_json", "peer", "two_workers", "latency"}
    assert (tmp_path / "bench.png").stat().st_size > 0 and (tmp_path / "bench.html").is_file()


def test_loadtest_sends_what_the_worker_counts(kafka_bootstrap, tmp_path):
    prefix = unique_prefix("lt")
    settings = load(overrides={"kafka_bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix,
                               "group_id": prefix + "g", "metrics_port": 0, "state_dir": str(tmp_path / "state")},
                    env={})
    create_topics(settings, partitions=4)
    try:
        single = _npo(kafka_bootstrap, "loadtest", "--events", "12000", "--single", "--processes", "2",
                      "--no-progress", "--json", "--topic-prefix", prefix)
        paced = _npo(kafka_bootstrap, "loadtest", "--events", "8000", "--rate", "8000", "--no-progress",
                     "--json", "--topic-prefix", prefix)
        assert single["events"] == 12_000 and single["messages"] == 12_000
        assert paced["events"] == 8_000 and paced["messages"] < 8_000  # envelopes
        worker = WorkerThread(settings, MonitorConfig()).start()
        try:
            worker.wait_idle(quiet_s=2.0, timeout=120)
        finally:
            worker.stop()
        assert counted(worker.worker.counters) == 20_000
        assert worker.worker.counters["dead_letters", "not_json"] == 0
    finally:
        delete_topics(kafka_bootstrap, [settings.topic(r) for r in TOPICS])


def test_short_soak(kafka_bootstrap, tmp_path):
    result = _npo(kafka_bootstrap, "loadtest", "--soak", "--duration", "4", "--rate", "3000",
                  "--warmup-pending", "5000", "--no-horizon-fill", "--join-scenarios", "20000", "--no-progress", "--json",
                  "--topic-prefix", unique_prefix("lt"), "--out", str(tmp_path))
    assert result["events_processed"] == result["warmup_events"] + result["soak_events"]
    assert result["join_keys_at_end"] >= 5000
    assert result["rss_at_start_mb"] > 0 and result["rss_max_mb"] > 0
    assert result["join_found"] == result["join_probe"] and result["join_rss_mb"] > 0
    assert result["join_keys"] == result["join_scenarios"] == 20_000  # the scores held, counted
    assert 29 < result["join_whole_bytes_per_scenario"] < 200  # a row of 29 bytes and its id, at least
    assert 0 <= result["ingest_checkpoint_deltas_in_soak"] <= result["ingest_checkpoints_in_soak"]
    assert result["ingest_checkpoint_deltas_in_soak"] <= result["ingest_checkpoint_deltas"]
    assert (result["ingest_checkpoint_delta_bytes_mean"] is None) == (result["ingest_checkpoint_deltas"] == 0)
    if result["ingest_checkpoint_deltas"]:
        assert 0 < result["ingest_checkpoint_delta_bytes_mean"] <= result["ingest_checkpoint_bytes_mean"] * \
            result["ingest_checkpoints"] / result["ingest_checkpoint_deltas"]
    assert (tmp_path / "soak.png").is_file()
