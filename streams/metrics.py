"""Prometheus metrics and structured JSON logs for the worker.

Every counter the pipeline keeps in its plain `Counter` is mirrored here, so
operators see the same numbers the tests assert on.
"""
from __future__ import annotations

import json
import logging
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    """The worker's metrics in their own registry (several workers can run in one test process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events_in = Counter("npo_events_in", "Events accepted, by topic and kind", ["topic", "kind"], registry=r)
        self.dead_letters = Counter("npo_dead_letters", "Records dead-lettered, by reason", ["reason"], registry=r)
        self.duplicates = Counter("npo_duplicates", "Events seen again within the horizon", registry=r)
        self.late_events = Counter("npo_late_events", "Events that reached only the cumulative view", registry=r)
        self.windows_closed = Counter("npo_windows_closed", "Final windows, by kind", ["kind"], registry=r)
        self.triggers = Counter("npo_triggers", "Triggers emitted, by rule", ["rule"], registry=r)
        self.checkpoints = Counter("npo_checkpoints", "Checkpoints committed with their offsets, by role "
                                   "(ingest: input partitions, aggregate: partials partitions)", ["role"], registry=r)
        self.kernel_seconds = Histogram("npo_kernel_seconds", "Time per partition batch (decode to partials)",
                                        registry=r, buckets=(0.001, 0.005, 0.02, 0.05, 0.1, 0.5, 1, 5))
        self.redis_errors = Counter("npo_redis_errors", "Failed Redis flushes and threshold polls", registry=r)
        self.joined_late = Counter("npo_joined_late", "Feedback joined to a score that arrived after it", registry=r)
        self.waiting_for_score = Counter("npo_waiting_for_score", "Feedback parked on disk until its score",
                                         registry=r)
        self.expired_scores = Counter("npo_expired_scores", "Scores forgotten by the join after the feedback horizon",
                                      registry=r)
        self.output_retries = Counter("npo_output_retries", "Output messages written again after a failure "
                                      "(an output topic could not be written)", registry=r)
        self.undelivered = Gauge("npo_undelivered", "Output messages waiting to be written again", registry=r)
        self.consumer_lag = Gauge("npo_consumer_lag", "High watermark minus position", ["topic", "partition"],
                                  registry=r)
        self._seen: dict = {}

    def serve(self, port: int) -> None:
        """Expose /metrics on `port` (0: do not serve)."""
        if port:
            start_http_server(port, registry=self.registry)

    def sync(self, counters) -> None:
        """Bring the Prometheus counters up to the pipeline's plain counters (which only grow)."""
        for key, value in counters.items():
            delta = value - self._seen.get(key, 0)
            if delta <= 0:
                continue
            self._seen[key] = value
            name, *labels = key if isinstance(key, tuple) else (key,)
            if name == "events_in":
                self.events_in.labels(topic="score" if labels[0] == "score" else "feedback", kind=labels[0]).inc(delta)
            elif name == "dead_letters":
                self.dead_letters.labels(reason=labels[0]).inc(delta)
            elif name == "windows_closed":
                self.windows_closed.labels(kind=labels[0]).inc(delta)
            elif name == "triggers":
                self.triggers.labels(rule=labels[0]).inc(delta)
            elif name == "checkpoints":
                self.checkpoints.labels(role=labels[0]).inc(delta)
            elif name in ("duplicates", "late_events", "redis_errors", "joined_late", "waiting_for_score",
                          "expired_scores", "output_retries"):
                getattr(self, name).inc(delta)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra` fields."""

    _skip = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in self._skip})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_json_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.Formatter.converter = time.gmtime
