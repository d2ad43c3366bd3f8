"""The load generator: pre-encoded traffic to the topics at a target rate or flat out.

Why it looks like this: the producer must not be the bottleneck it measures, so it
sends bytes prepared by :mod:`loadtest.traffic` straight to librdkafka, with partitions
already computed (no per-event Python encoding or hashing). Several processes share the
work by partition (process j sends partitions p with p % n == j), so each partition
keeps its event-time order and all processes walk through event time together.

Envelope mode batches what is due every ``linger_ms`` per (topic, partition), as
:class:`streams.kafka.producer.EventProducer` does; single mode sends each event as
its own keyed message. ``timeline`` records, per send tick, when the events were due
and the largest event time sent on each partition: the latency bench uses it to find
when the event that closed a window was produced.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from loadtest.traffic import ROLES, Traffic, envelopes
from streams import codec, columnar
from streams.settings import DEFAULT_ENVELOPE_FORMAT, ENVELOPE_FORMATS

FLAT_OUT_BATCH = 20_000
"""Events taken per round when there is no rate limit."""


class RateLimiter:
    """Paces a sender at ``rate`` items per second from ``start`` (None: unlimited).

    ``due(now)`` is how many items should have gone by ``now``; a sender that fell
    behind (a stall) catches up in bursts of at most ``max_burst`` items, so the average
    rate holds without flooding the broker at once.
    """

    def __init__(self, rate: float | None, start: float, max_burst: int = FLAT_OUT_BATCH) -> None:
        if rate is not None and not rate > 0:
            raise ValueError("rate must be > 0 events/s (or None for flat out)")
        self.rate, self.start, self.max_burst = rate, start, max_burst

    def due(self, now: float, sent: int) -> int:
        """Items that may be sent now (0: wait)."""
        if self.rate is None:
            return self.max_burst
        return max(0, min(int((now - self.start) * self.rate) - sent, self.max_burst))

    def wait(self, now: float, sent: int) -> float:
        """Seconds until the next item is due."""
        if self.rate is None:
            return 0.0
        return max(0.0, self.start + (sent + 1) / self.rate - now)

    def due_time(self, index: int) -> float:
        """When item ``index`` (0-based) was due."""
        return self.start if self.rate is None else self.start + index / self.rate


@dataclass
class GenConfig:
    """What to send: see ``npo loadtest --help`` for each field."""

    rate: float | None = None  # events/s over all processes; None = flat out
    duration_s: float | None = None
    max_events: int | None = None
    envelope: bool = True
    envelope_format: str = DEFAULT_ENVELOPE_FORMAT  # as the shipped producer sends them, or "json"
    envelope_events: int = 1000
    linger_ms: float = 20.0
    processes: int = 1
    first_cycle: int = 0
    traffic: dict = field(default_factory=dict)  # Traffic.cached parameters

    def __post_init__(self) -> None:
        if self.duration_s is None and self.max_events is None:
            raise ValueError("set duration_s or max_events (or both)")
        if self.processes < 1:
            raise ValueError("processes must be >= 1")
        if not 1 <= self.envelope_events <= 10_000:
            raise ValueError("envelope_events must be in [1, 10000]")
        if self.envelope_format not in ENVELOPE_FORMATS:
            raise ValueError(f"envelope_format must be one of {ENVELOPE_FORMATS}")


def producer_config(settings) -> dict:
    """librdkafka settings as the project's producer uses them, sized for throughput."""
    from streams.kafka.errors import ClientErrors, client_config

    return client_config(settings, ClientErrors(), **{
        "linger.ms": 5, "compression.type": "lz4", "enable.idempotence": True, "acks": "all",
        "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
        "batch.size": 1_000_000})


def _partitions(settings) -> int:
    from confluent_kafka.admin import AdminClient

    topic = settings.topic("scores")
    meta = AdminClient(settings.confluent()).list_topics(topic, timeout=30)
    if topic not in meta.topics or meta.topics[topic].error is not None:
        raise RuntimeError(f"topic {topic} does not exist: run `npo topics create` first")
    return len(meta.topics[topic].partitions)


def _max_events_of(cfg: GenConfig, index: int) -> int | None:
    if cfg.max_events is None:
        return None
    share, rest = divmod(cfg.max_events, cfg.processes)
    return share + (index < rest)


def generate(settings, cfg: GenConfig, index: int = 0, sent_counter=None, stop=None, start_at: float | None = None,
             timeline: list | None = None) -> dict:
    """Send this process's share of the traffic; return its counts.

    ``sent_counter[index]`` (a shared array) holds the events handed to librdkafka so far;
    ``stop`` (an Event) ends the run early; ``start_at`` aligns several processes' clocks.
    With ``max_events`` each process sends its share of events from the traffic's start.
    """
    from confluent_kafka import Producer

    traffic = Traffic.cached(**cfg.traffic)
    partitions = _partitions(settings)
    topics = [settings.topic(r) for r in ROLES]
    errors = []
    producer = Producer({**producer_config(settings),
                         "on_delivery": lambda err, msg: errors.append(err) if err is not None else None})
    mine = np.arange(partitions) % cfg.processes == index
    limit = _max_events_of(cfg, index)
    pool = ThreadPoolExecutor(1)

    def build(k: int):
        chunk = traffic.chunk(k, partitions)
        own = chunk.select(mine[chunk.partition])
        return own, len(own) / max(len(chunk), 1)

    cycle = cfg.first_cycle
    chunk, share = build(cycle)
    upcoming = pool.submit(build, cycle + 1)
    rate = None if cfg.rate is None else cfg.rate * share
    start = time.time() if start_at is None else start_at
    while time.time() < start:
        time.sleep(min(0.01, start - time.time()))
    pacer = RateLimiter(rate, start)
    deadline = math.inf if cfg.duration_s is None else start + cfg.duration_s
    tick = cfg.linger_ms / 1000 if cfg.envelope else 0.002
    sent = messages = pos = 0
    while True:
        now = time.time()
        if now >= deadline or (limit is not None and sent >= limit) or (stop is not None and stop.is_set()):
            break
        n = pacer.due(now, sent)
        if n == 0:
            time.sleep(min(pacer.wait(now, sent), tick))
            producer.poll(0)
            continue
        if limit is not None:
            n = min(n, limit - sent)
        hi = min(pos + n, len(chunk))
        due_at = pacer.due_time(sent)
        messages += _send(producer, topics, chunk, pos, hi, cfg)
        if timeline is not None:
            parts = chunk.partition[pos:hi]
            for p in np.unique(parts).tolist():
                timeline.append((due_at, p, float(chunk.ts[pos:hi][parts == p].max())))
        sent += hi - pos
        pos = hi
        if sent_counter is not None:
            sent_counter[index] = sent
        if pos >= len(chunk):
            cycle += 1
            chunk, share = upcoming.result()
            upcoming = pool.submit(build, cycle + 1)
            pos = 0
            if cfg.rate is not None:  # keep pace per process with its share of the new cycle
                pacer = RateLimiter(cfg.rate * share, time.time() - sent / (cfg.rate * share))
        producer.poll(0)
        if rate is not None and n < FLAT_OUT_BATCH:
            # what falls due within a tick goes together, as from a lingering producer
            time.sleep(max(0.0, min(now + tick - time.time(), deadline - time.time())))
    pool.shutdown(wait=False, cancel_futures=True)
    remaining = producer.flush(60)
    if remaining or errors:
        raise RuntimeError(f"{remaining} message(s) undelivered, {len(errors)} delivery error(s): "
                           f"{errors[-1] if errors else ''}")
    return {"events": sent, "messages": messages, "cycles": cycle - cfg.first_cycle + (pos > 0),
            "seconds": time.time() - start}


def _send(producer, topics: list[str], chunk, lo: int, hi: int, cfg: GenConfig) -> int:
    produce = producer.produce
    if cfg.envelope:
        n = 0
        for role, part, value, _, _ in envelopes(chunk, lo, hi, cfg.envelope_events):
            if cfg.envelope_format == "columnar":
                value = as_columnar(value)
            _produce(producer, topics[role], value, None, part)
            n += 1
        return n
    data, starts, ends, ks, ke = chunk.data, chunk.starts, chunk.ends, chunk.key_starts, chunk.key_ends
    for role, part, s, e, a, b in zip(chunk.role[lo:hi].tolist(), chunk.partition[lo:hi].tolist(),
                                      starts[lo:hi].tolist(), ends[lo:hi].tolist(), ks[lo:hi].tolist(),
                                      ke[lo:hi].tolist()):
        try:
            produce(topics[role], data[s:e], data[a:b], part)
        except BufferError:
            _produce(producer, topics[role], data[s:e], data[a:b], part)
    return hi - lo


def as_columnar(envelope: bytes) -> bytes:
    """The columnar envelope of a JSON one's events."""
    return columnar.encode(codec.decode(envelope).events)


def _produce(producer, topic: str, value: bytes, key: bytes | None, partition: int) -> None:
    while True:
        try:
            producer.produce(topic, value, key, partition)
            return
        except BufferError:  # local queue full: let deliveries make room
            producer.poll(0.05)


def _child(settings, cfg: GenConfig, index: int, counter, stop, start_at, results) -> None:
    import gc

    gc.set_threshold(50_000, 20, 100)
    try:
        results.put((index, generate(settings, cfg, index, counter, stop, start_at)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        results.put((index, {"error": repr(e)}))


class MultiGenerator:
    """``cfg.processes`` generator processes started together; ``sent()`` is their total so far."""

    def __init__(self, settings, cfg: GenConfig) -> None:
        Traffic.cached(**cfg.traffic)  # build the block once, before the children load it
        ctx = mp.get_context("spawn")
        self.cfg = cfg
        self.counter = ctx.Array("q", cfg.processes)
        self.stop_event = ctx.Event()
        self.results = ctx.Queue()
        self.start_at = time.time() + 1.5 + 0.5 * cfg.processes  # time for the children to start
        self.procs = [ctx.Process(target=_child, args=(settings, cfg, i, self.counter, self.stop_event,
                                                        self.start_at, self.results), daemon=True)
                      for i in range(cfg.processes)]

    def start(self) -> "MultiGenerator":
        for p in self.procs:
            p.start()
        return self

    def sent(self) -> int:
        return int(sum(self.counter[:]))

    def alive(self) -> bool:
        return any(p.is_alive() for p in self.procs) and self.results.empty()

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float = 120) -> dict:
        """Wait for every process; their summed counts (RuntimeError if one failed)."""
        out = {}
        deadline = time.time() + timeout
        while len(out) < len(self.procs) and time.time() < deadline:
            try:
                i, res = self.results.get(timeout=max(0.1, deadline - time.time()))
            except Exception:  # noqa: BLE001 - queue.Empty: checked below
                break
            out[i] = res
        for p in self.procs:
            p.join(5)
        failed = [r["error"] for r in out.values() if "error" in r]
        if failed or len(out) < len(self.procs):
            raise RuntimeError(f"generator process failed: {failed or 'no result'}")
        return {"events": sum(r["events"] for r in out.values()), "messages": sum(r["messages"] for r in out.values()),
                "seconds": max(r["seconds"] for r in out.values()), "processes": len(out)}


def run_in_thread(settings, cfg: GenConfig, timeline: list | None = None) -> tuple[threading.Thread, dict, list]:
    """One generator in a thread of this process (for the latency bench, which reads its
    timeline); returns (thread, result dict filled at the end, [sent so far])."""
    result: dict = {}
    counter = [0]

    def main() -> None:
        try:
            result.update(generate(settings, cfg, 0, counter, None, None, timeline))
        except BaseException as e:  # noqa: BLE001 - surfaced by the caller
            result["error"] = repr(e)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, result, counter
