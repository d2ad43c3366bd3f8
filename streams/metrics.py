"""Prometheus metrics, health probes and structured JSON logs for the worker.

Every counter the pipeline keeps in its plain `Counter` is mirrored here, so
operators see the same numbers the tests assert on. The metrics port also answers
`/healthz` and `/readyz` for orchestrators, from a thread of its own: the worker's
loop only records a heartbeat per turn, never per event.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Seconds without a turn of the worker's loop after which /healthz answers 503.
LIVENESS_TIMEOUT_S = 60.0


class Health:
    """What /healthz and /readyz answer. The worker's loop calls `beat` once a turn; the
    probes only read, from the HTTP server's threads."""

    def __init__(self, liveness_timeout_s: float | None = None) -> None:
        self.liveness_timeout_s = liveness_timeout_s or LIVENESS_TIMEOUT_S
        self._beat = time.monotonic()  # process start counts as a turn: starting takes seconds
        self._not_ready: str | None = "starting"
        self.broker_reachable: Callable[[], bool] | None = None

    def beat(self, not_ready: str | None = None) -> None:
        """A turn of the loop; `not_ready` says why the worker cannot serve yet (None: it can)."""
        self._beat = time.monotonic()
        self._not_ready = not_ready

    def live(self) -> tuple[bool, str]:
        idle = time.monotonic() - self._beat
        if idle > self.liveness_timeout_s:
            return False, f"no turn of the worker loop for {idle:.0f} s (limit {self.liveness_timeout_s:g} s)"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        live, why = self.live()
        if not live:
            return False, why
        if self._not_ready is not None:
            return False, self._not_ready
        if self.broker_reachable is not None and not self.broker_reachable():
            return False, "no Kafka broker answers"
        return True, "ok"


class BrokerProbe:
    """Whether a broker answers a metadata request for one topic, through a client of its own
    (the worker's aiokafka clients belong to its event loop). Asked at most every `every_s`
    seconds, however often the orchestrator probes."""

    def __init__(self, settings, topic: str, timeout_s: float = 3.0, every_s: float = 5.0) -> None:
        from confluent_kafka.admin import AdminClient

        from streams.kafka.errors import ClientErrors, client_config

        self._admin = AdminClient(client_config(settings, ClientErrors()))
        self.topic, self.timeout_s, self.every_s = topic, timeout_s, every_s
        self._lock = threading.Lock()
        self._at, self._ok = float("-inf"), False

    def __call__(self) -> bool:
        from confluent_kafka import KafkaException

        with self._lock:
            if time.monotonic() - self._at >= self.every_s:
                try:
                    self._ok = bool(self._admin.list_topics(self.topic, timeout=self.timeout_s).brokers)
                except KafkaException:
                    self._ok = False
                self._at = time.monotonic()
            return self._ok


class Metrics:
    """The worker's metrics in their own registry (several workers can run in one test process)."""

    def __init__(self, liveness_timeout_s: float | None = None) -> None:
        self.health = Health(liveness_timeout_s)
        r = self.registry = CollectorRegistry()
        self.events_in = Counter("npo_events_in", "Events accepted, by topic and kind", ["topic", "kind"], registry=r)
        self.dead_letters = Counter("npo_dead_letters", "Records dead-lettered, by reason", ["reason"], registry=r)
        self.duplicates = Counter("npo_duplicates", "Events seen again within the horizon", registry=r)
        self.late_events = Counter("npo_late_events", "Events that reached only the cumulative view", registry=r)
        self.windows_closed = Counter("npo_windows_closed", "Final windows, by kind", ["kind"], registry=r)
        self.triggers = Counter("npo_triggers", "Triggers emitted, by rule", ["rule"], registry=r)
        self.checkpoints = Counter("npo_checkpoints", "Checkpoints committed with their offsets, by role "
                                   "(ingest: input partitions, aggregate: partials partitions)", ["role"], registry=r)
        self.checkpoint_bytes = Counter("npo_checkpoint_bytes", "Bytes of the checkpoints committed (uncompressed), "
                                        "by role: over npo_checkpoints, the size of one", ["role"], registry=r)
        self.checkpoint_deltas = Counter("npo_checkpoint_deltas", "Of npo_checkpoints, those holding only what "
                                         "changed since the one before (the rest are whole)", ["role"], registry=r)
        self.checkpoint_delta_bytes = Counter("npo_checkpoint_delta_bytes", "Of npo_checkpoint_bytes, those of the "
                                              "deltas: over npo_checkpoint_deltas, the size of one, which follows "
                                              "the input since the checkpoint before where a whole checkpoint's "
                                              "follows the state",
                                              ["role"], registry=r)
        self.records_lost_to_retention = Counter("npo_records_lost_to_retention", "Input or partials records "
                                                 "deleted (retention, delete-records) before they were processed: "
                                                 "before its log's first offset where a loaded checkpoint resumes, "
                                                 "or skipped by a fetch; by topic",
                                                 ["topic"], registry=r)
        self.checkpoint_guard_errors = Counter("npo_checkpoint_guard_errors", "Checkpoints (or their hourly "
                                               "refreshes) not committed because the group's committed pointer "
                                               "could not be read before the commit",
                                               ["role"], registry=r)
        self.checkpoint_bytes_copied_aside = Counter(
            "npo_checkpoint_bytes_copied_aside", "De-duplication ids a checkpoint being written had not read yet, "
            "copied aside before a batch overwrote them: zero while checkpoint writes keep up", registry=r)
        self.checkpoint_write_errors = Counter("npo_checkpoint_write_errors", "Checkpoint writes, and deletions "
                                               "of superseded ones or of what a write given up sent, that the "
                                               "broker refused or did not answer in time (each is tried again)",
                                               registry=r)
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
        self.partials_held = Gauge("npo_partials_held", "Partials messages that landed before an earlier one "
                                   "(a retried send) and wait for it", ["partition"], registry=r)
        self._seen: dict = {}

    def serve(self, port: int, host: str = "") -> ThreadingHTTPServer | None:
        """Serve /metrics, /healthz and /readyz on `port` (0: do not serve) from a daemon thread."""
        if not port:
            return None
        server = ThreadingHTTPServer((host, port), _handler(self))
        threading.Thread(target=server.serve_forever, name="npo-metrics", daemon=True).start()
        return server

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
            elif name == "lost_to_retention":
                self.records_lost_to_retention.labels(topic=labels[0]).inc(delta)
            elif name in ("checkpoints", "checkpoint_bytes", "checkpoint_deltas", "checkpoint_delta_bytes",
                          "checkpoint_guard_errors"):
                getattr(self, name).labels(role=labels[0]).inc(delta)
            elif name in ("duplicates", "late_events", "redis_errors", "joined_late", "waiting_for_score",
                          "expired_scores", "output_retries", "checkpoint_write_errors",
                          "checkpoint_bytes_copied_aside"):
                getattr(self, name).inc(delta)


def _handler(metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to `metrics` (http.server makes one instance per request)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, why = (metrics.health.live if path == "/healthz" else metrics.health.ready)()
                self._send(200 if ok else 503, why.encode() + b"\n", "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args) -> None:  # noqa: A002 - probes every few seconds: no log line each
            pass

    return Handler


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
