"""The README names metrics as /metrics exposes them: prometheus_client appends `_total` to
counters, so a query copied from the README must find its series."""
from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from streams.metrics import Metrics

README = Path(__file__).resolve().parent.parent / "README.md"


def _exposed() -> tuple[set[str], set[str]]:
    """(sample names, histogram families) of a worker's registry with every metric set once."""
    metrics = Metrics()
    metrics.sync({("events_in", "score"): 1, ("dead_letters", "schema"): 1, ("windows_closed", "tumbling"): 1,
                  ("triggers", "retrain"): 1, ("checkpoints", "ingest"): 1, ("checkpoint_bytes", "ingest"): 1,
                  ("checkpoint_deltas", "ingest"): 1, ("checkpoint_delta_bytes", "ingest"): 1,
                  ("checkpoint_guard_errors", "ingest"): 1, "duplicates": 1, "late_events": 1,
                  "redis_errors": 1, "joined_late": 1, "waiting_for_score": 1, "expired_scores": 1,
                  "output_retries": 1, "checkpoint_write_errors": 1, "checkpoint_bytes_copied_aside": 1,
                  ("lost_to_retention", "npo.scores"): 1})
    metrics.kernel_seconds.observe(0.01)
    metrics.undelivered.set(0)
    metrics.consumer_lag.labels(topic="npo.scores", partition="0").set(0)
    metrics.partials_held.labels(partition="0").set(0)
    text = generate_latest(metrics.registry).decode()
    samples = {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group() for line in text.splitlines()
               if line and not line.startswith("#")}
    histograms = set(re.findall(r"^# TYPE (\S+) histogram$", text, flags=re.M))
    return samples, histograms


def test_every_metric_the_readme_names_is_exposed_under_that_name():
    named = set(re.findall(r"`(npo_[a-z_]+)[`{]", README.read_text()))
    samples, histograms = _exposed()
    assert len(named) >= 14
    assert not named - samples - histograms, sorted(named - samples - histograms)


def test_the_readme_names_every_exposed_metric():
    named = set(re.findall(r"`(npo_[a-z_]+)[`{]", README.read_text()))
    samples, histograms = _exposed()
    series = {s for s in samples if not any(s.startswith(h + "_") for h in histograms) and not s.endswith("_created")}
    assert not (series | histograms) - named, sorted((series | histograms) - named)
