"""The metrics port's /healthz and /readyz, and the Docker HEALTHCHECK that asks it (no Kafka)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from streams.metrics import BrokerProbe, Health, Metrics  # noqa: E402
from streams.settings import Settings  # noqa: E402
from tests.services import free_port  # noqa: E402

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"
# short, to keep the tests quick, and long enough that a stall of the host between two
# steps of a test does not pass for a stopped loop
LIVENESS_S = 2.0


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def served():
    metrics, port = Metrics(liveness_timeout_s=LIVENESS_S), free_port()
    server = metrics.serve(port, host="127.0.0.1")
    yield metrics, port
    server.shutdown()
    server.server_close()


def test_liveness_fails_when_the_loop_stops_turning():
    health = Health(liveness_timeout_s=LIVENESS_S)
    assert health.live() == (True, "ok")  # starting counts from creation
    time.sleep(LIVENESS_S + 0.1)
    live, why = health.live()
    assert not live and "no turn" in why
    health.beat()
    assert health.live() == (True, "ok")


def test_readiness_says_why_not():
    health = Health(liveness_timeout_s=5)
    assert health.ready() == (False, "starting")
    health.beat("waiting for a partition assignment (ingest)")
    assert health.ready() == (False, "waiting for a partition assignment (ingest)")
    health.beat()
    assert health.ready() == (True, "ok")
    health.broker_reachable = lambda: False
    assert health.ready() == (False, "no Kafka broker answers")
    health.broker_reachable = lambda: True
    assert health.ready() == (True, "ok")


def test_endpoints(served):
    metrics, port = served
    metrics.events_in.labels(topic="score", kind="score").inc(3)
    status, body = _get(port, "/metrics")
    assert status == 200 and 'npo_events_in_total{kind="score",topic="score"} 3.0' in body
    assert _get(port, "/healthz")[0] == 200
    assert _get(port, "/readyz") == (503, "starting\n")
    metrics.health.beat()
    assert _get(port, "/readyz") == (200, "ok\n")
    time.sleep(LIVENESS_S + 0.1)  # no turn for longer than the liveness timeout: neither live nor ready
    assert _get(port, "/healthz")[0] == 503
    assert _get(port, "/readyz")[0] == 503
    assert _get(port, "/nothing")[0] == 404


def test_broker_probe_without_a_broker_says_no_and_asks_at_most_every_few_seconds():
    probe = BrokerProbe(Settings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}"), "npo.scores",
                        timeout_s=0.5, every_s=60)
    started = time.monotonic()
    assert probe() is False
    assert probe() is False
    # fail-fast bound: asking the broker again would cost a second 0.5 s timeout, so the second
    # answer coming at once is what shows it was remembered
    assert time.monotonic() - started < 1.5  # fail-fast bound (above)


def _healthcheck_command() -> list[str]:
    """The exec-form command of the Dockerfile's HEALTHCHECK."""
    import json

    text = DOCKERFILE.read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK\s.*?\bCMD\s+(\[.*\])\s*$", text, re.M)
    assert match, "no exec-form HEALTHCHECK in the Dockerfile"
    return json.loads(match.group(1))


def test_the_image_healthcheck_asks_healthz(served):
    """The HEALTHCHECK one-liner, run here with this Python: exit 0 while the loop turns,
    non-zero once it does not."""
    metrics, port = served
    command = _healthcheck_command()
    assert command[0] == "python" and "/healthz" in command[-1]
    env = {**os.environ, "NPO_METRICS_PORT": str(port)}
    turning = threading.Event()
    turning.set()

    def loop():  # a loop that turns while the first check starts up, however slowly
        while turning.is_set():
            metrics.health.beat()
            time.sleep(0.05)

    beats = threading.Thread(target=loop, daemon=True)
    beats.start()
    assert subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode == 0
    turning.clear()
    beats.join()
    time.sleep(LIVENESS_S + 0.1)
    assert subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode != 0
