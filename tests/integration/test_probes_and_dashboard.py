"""A real `npo worker` process on the broker, asked the way an orchestrator and Prometheus ask
it: /readyz turns 200 only once its partitions are assigned and loaded, /healthz stays 200,
and every metric the Grafana dashboard queries is one the worker's /metrics exposes."""
from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.kafka.producer import EventProducer
from tests.integration.harness import ordered_producer
from tests.integration.processes import log_tail, spawn, stop, wait_caught_up
from tests.integration.test_worker_e2e import _flush_events
from tests.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "npo.json"

#: PromQL words that are not metric names (functions are told apart by the parenthesis after them).
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
             "unless", "inf", "nan"}


def _get(port: int, path: str) -> tuple[int | None, str]:
    """(status, body); (None, reason) while nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError) as e:
        return None, str(e)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery selectors (Grafana's $__rate_interval too)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[m.end():].lstrip().startswith("(") or m.group().lower() in _KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(m.group())
    return names


def test_metric_names_of_promql():
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y{"}[$__rate_interval])))') == {
        "a_bucket"}
    assert metric_names("sum(rate(a_total[5m])) / sum without (p) (b) > 1e3 and on (k) c offset 5m") == {
        "a_total", "b", "c"}


def exposed_names(text: str) -> tuple[set[str], set[str]]:
    """(every sample name the exposition can hold, those it holds now). A labelled metric that
    has not counted yet shows only its HELP and TYPE lines; its samples' names follow from its
    type (prometheus_client: counters end in _total, histograms have _bucket, _sum, _count)."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"],
                "summary": ["", "_sum", "_count"]}
    declared, sampled = set(), set()
    for family in text_string_to_metric_families(text):
        declared |= {family.name + s for s in suffixes.get(family.type, [""])}
        sampled |= {s.name for s in family.samples}
    return declared | sampled, sampled


def test_readiness_and_liveness_of_a_real_worker(cluster, sim, tmp_path):
    settings = cluster(2)
    port = free_port()
    proc = spawn(settings, tmp_path / "worker.log", NPO_METRICS_PORT=str(port))
    answers = []  # /readyz's (status, body) each time it changes
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_tail(proc)
        answer = _get(port, "/readyz")
        if answer[0] is not None and (not answers or answers[-1] != answer):
            answers.append(answer)
        if answer[0] == 200:
            break
        time.sleep(0.05)
    # the server is up before the worker has joined its groups: not ready until assigned and loaded
    assert answers[0][0] == 503 and answers[-1] == (200, "ok\n"), answers
    assert all(a[1].rstrip() in ("starting", "waiting for a partition assignment (ingest, aggregate)",
                                 "waiting for a partition assignment (aggregate)",
                                 "waiting for a partition assignment (ingest)", "loading checkpoints (ingest)",
                                 "loading checkpoints (aggregate)", "loading checkpoints (aggregate, ingest)")
               for a in answers[:-1]), answers
    assert _get(port, "/healthz") == (200, "ok\n")

    with EventProducer(settings, envelope=True) as producer:
        for e in sim.events[:2000]:
            producer.send(e)
    wait_caught_up(settings, [proc])
    assert _get(port, "/readyz") == (200, "ok\n") and _get(port, "/healthz") == (200, "ok\n")
    # SIGTERM: checkpoints, leaves the groups, exits 0, within a third of Kubernetes' 90 s grace period
    stop(proc, timeout=30)


def test_the_dashboard_queries_only_metrics_a_worker_exposes(cluster, sim, tmp_path):
    settings = cluster(2)
    with EventProducer(settings, envelope=True) as producer:
        for e in sim.events + _flush_events(sim.events, 2):
            producer.send(e)
    bad = ordered_producer(settings)
    bad.produce(settings.topic("scores"), b"{not json", key=b"bad")  # one dead letter
    bad.flush(30)
    port = free_port()
    proc = spawn(settings, tmp_path / "worker.log", NPO_METRICS_PORT=str(port))
    wait_caught_up(settings, [proc])
    status, text = _get(port, "/metrics")
    stop(proc)
    assert status == 200
    exposed, sampled = exposed_names(text)
    # the run reached every kind of metric the dashboard plots, so most are real samples
    assert {"npo_events_in_total", "npo_dead_letters_total", "npo_windows_closed_total", "npo_consumer_lag",
            "npo_checkpoints_total", "npo_kernel_seconds_bucket", "npo_redis_errors_total",
            "npo_triggers_total"} <= sampled

    dashboard = json.loads(DASHBOARD.read_text())
    titles = [p["title"] for p in dashboard["panels"]]
    for wanted in ("Throughput by topic and kind", "Consumer lag", "Dead letters by reason", "Windows closed",
                   "Triggers by rule", "Checkpoints", "Redis and output health", "Kernel time per batch"):
        assert wanted in titles
    used = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']!r}"
            for name in names:
                used.setdefault(name, []).append(panel["title"])
    unknown = {name: panels for name, panels in used.items() if name not in exposed}
    assert not unknown, f"queried but not exposed: {unknown}; exposed: {sorted(exposed)}"
