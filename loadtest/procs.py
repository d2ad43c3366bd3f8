"""The measured processes: the raw consumer baselines (aiokafka and confluent-kafka) and the pipeline worker.

Each runs in its own spawned process, so its peak RSS is its own, and reports over a
queue: ``("sample", name, t, events, rss_mb, stats or None)`` every ``sample_s`` while it works (a
soak worker's stats: join keys, then its input partitions' checkpoints, their bytes, deltas and
their bytes, all so far), then
``("done", name, summary)``. Events are counted the way each path sees them: the raw
baseline counts decoded events, the worker counts events accepted plus duplicates
suppressed (``counted(worker.counters)``), which is every event produced to its topics.
A path's rate is its events over the time from the start of its first productive
fetch to its last one.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import time

CHECKPOINT_COUNTERS = ("checkpoints", "checkpoint_bytes", "checkpoint_deltas", "checkpoint_delta_bytes")
"""The worker's checkpoint counters a soak follows, in the order its samples carry them."""


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(current, peak) resident set size in MiB, from /proc (psutil is not a dependency)."""
    cur = peak = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


def counted(counters) -> int:
    """Events a worker has taken in: accepted (scores and each feedback kind), duplicates,
    and dead-lettered records."""
    return (sum(v for k, v in counters.items() if isinstance(k, tuple) and k[0] == "events_in")
            + counters.get("duplicates", 0)
            + sum(v for k, v in counters.items() if isinstance(k, tuple) and k[0] == "dead_letters"
                  and k[1] != "join_expired"))


class _Reporter:
    def __init__(self, name: str, queue, sample_s: float) -> None:
        self.name, self.queue, self.sample_s = name, queue, sample_s
        self.last = 0.0
        self.first = self.end = None
        self.n = 0

    def progress(self, t0: float, n: int, extra=None) -> None:
        now = time.time()
        if n != self.n:
            if self.first is None:
                self.first = t0
            self.end, self.n = now, n
        if now - self.last >= self.sample_s:
            self.last = now
            self.queue.put(("sample", self.name, now, n, rss_mb()[0], extra() if extra else None))

    def done(self, **extra) -> None:
        cur, peak = rss_mb()
        self.queue.put(("sample", self.name, time.time(), self.n, cur, None))
        self.queue.put(("done", self.name, {"events": self.n, "first": self.first, "end": self.end,
                                            "rss_mb": cur, "peak_rss_mb": peak, "pid": os.getpid(), **extra}))


def profile_self(name: str) -> None:
    """With NPO_LOADTEST_PROFILE=DIR, record this process with py-spy into DIR/<name>.svg
    (a flame graph; NPO_LOADTEST_PROFILE_FORMAT=raw gives collapsed stacks in .txt) until it
    exits: the evidence for where a path spends its time."""
    out = os.environ.get("NPO_LOADTEST_PROFILE")
    if not out:
        return
    import shutil
    import subprocess

    if shutil.which("py-spy") is None:
        return
    os.makedirs(out, exist_ok=True)
    fmt = os.environ.get("NPO_LOADTEST_PROFILE_FORMAT", "flamegraph")  # or raw (collapsed stacks), speedscope
    ext = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}.get(fmt, "out")
    subprocess.Popen(["py-spy", "record", "--pid", str(os.getpid()), "--rate", "200", "--nonblocking",
                      "--format", fmt, "-o", os.path.join(out, f"{name}.{ext}")],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def worker_main(settings, expected: int | None, name: str, queue, stop, sample_s: float = 0.25,
                join_stats: bool = False, settle: tuple[int, int] | None = None, config=None) -> None:
    """The pipeline worker until it has counted ``expected`` events (None: until ``stop``).

    ``settle`` = (input, partials) topic-partitions this worker should own once its group
    is complete: it then waits for that assignment before its first step, so the timed
    part of a multi-worker run is not a rebalance. ``config``: the monitor's (default
    ``MonitorConfig()``)."""
    gc.set_threshold(50_000, 20, 100)  # as `npo worker` runs (streams.cli.main)
    profile_self(name)
    from streams.config import MonitorConfig
    from streams.worker.worker import Worker

    worker = Worker(settings, config or MonitorConfig())
    rep = _Reporter(name, queue, sample_s)

    async def main() -> None:
        await worker.start()
        if settle is not None:
            deadline = time.time() + 60
            while time.time() < deadline and (len(worker.ingest.assignment()), len(worker.aggregate.assignment())) \
                    != tuple(settle):
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # the other members see theirs too
        try:
            while not stop.is_set():
                t0 = time.time()
                await worker.step()
                n = counted(worker.counters)
                rep.progress(t0, n, (lambda: (join_keys(worker), *(worker.counters[counter, "ingest"]
                                                                   for counter in CHECKPOINT_COUNTERS)))
                             if join_stats else None)
                if expected is not None and n >= expected:
                    break
        finally:
            counters = {"|".join(map(str, k)) if isinstance(k, tuple) else k: v for k, v in worker.counters.items()}
            rep.done(counters=counters, join_keys=join_keys(worker))
            await worker.stop()

    try:
        asyncio.run(main())
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        queue.put(("error", name, repr(e)))


def join_keys(worker) -> int:
    """Scores held by the worker's join over its partitions: the pending scenarios, since a
    score is kept for the whole horizon."""
    return sum(stage.join.pending_scores for stage in list(worker.stages.stages.values()))


FETCH_TIMEOUT_MS, FETCH_RECORDS = 100, 20_000
"""The worker's ingest fetch: ``getmany(timeout_ms=100, max_records=20_000)``."""

#: confluent-kafka consumer properties for a backlog, on top of the settings' own (``-X``,
#: ``NPO_KAFKA_X_*`` and the named ones) and under the job's (group, offsets, assignor).
#: Measured on the development machine (2 cores, broker on the same host, shared with other
#: work; 1M events, 4 partitions a topic, medians of 5 drains taking turns, rounds of up to
#: 20,000 messages; aiokafka as the worker runs it made 370k to 420k single events/s alongside):
#: librdkafka's defaults (1 MiB a partition a fetch, 64 MiB queued, fetch.wait.max.ms 500,
#: fetch.queue.backoff.ms 1000) drained 160k to 170k single events/s; with 8 MiB a partition and
#: 256 MiB queued 430k to 470k (1 MiB a partition, the rest as here: 257k); adding
#: fetch.queue.backoff.ms 10 (a partition whose queue was over its bounds waits 10 ms, not 1 s,
#: before its next fetch) 520k to 550k. 16 MiB a partition (528k) or queued.min.messages 1M
#: (547k) gained nothing more. On envelopes every setting tried but the defaults (410k) fell
#: within the runs' spread of each other (680k to 830k).
CONFLUENT_CONSUMER = {
    "fetch.max.bytes": 64 * 2**20,  # one fetch request to a broker, over its partitions
    "max.partition.fetch.bytes": 8 * 2**20,  # a partition's share of one fetch (default 1 MiB)
    "fetch.wait.max.ms": 100,  # as the worker's getmany timeout: an idle topic answers within it
    "queued.min.messages": 200_000,  # prefetched a partition (default 100k)
    "queued.max.messages.kbytes": 256 * 1024,  # prefetched in all, KiB (default 64 MiB)
    "fetch.queue.backoff.ms": 10,  # a partition whose queue was full is fetched again after this (default 1 s)
    "enable.partition.eof": False,
}


def by_partition(messages) -> tuple[dict[tuple[str, int], list[bytes]], int]:
    """confluent-kafka messages as the worker takes a fetch (aiokafka's ``getmany`` groups them
    itself): the values per (topic, partition) in fetch order, and how many were error events
    (skipped)."""
    out: dict[tuple[str, int], list[bytes]] = {}
    errors = 0
    for m in messages:
        if m.error() is not None:
            errors += 1
            continue
        key = (m.topic(), m.partition())
        values = out.get(key)
        if values is None:
            out[key] = values = []
        values.append(m.value())
    return out, errors


def _raw(open_fetch, settings, expected: int, name: str, queue, stop, sample_s: float) -> None:
    """A raw baseline: ``open_fetch(settings, summary)`` (an async context manager) gives ``fetch()``,
    which returns what one fetch got as lists of values, one a topic-partition; each list is decoded
    into events (``codec.decode_batch``, the decode the worker makes of JSON messages before it
    puts their events into columns), until ``expected`` events. The summary adds
    ``bytes`` (message values read) and ``errors`` (error events a client handed back)."""
    gc.set_threshold(50_000, 20, 100)
    profile_self(name)
    from streams import codec

    rep = _Reporter(name, queue, sample_s)
    seen = {"bytes": 0, "errors": 0}

    async def main() -> None:
        async with open_fetch(settings, seen) as fetch:
            n = 0
            while not stop.is_set() and n < expected:
                t0 = time.time()
                for values in await fetch():
                    n += len(codec.decode_batch(values)[0])
                    seen["bytes"] += sum(map(len, values))
                rep.progress(t0, n)

    try:
        asyncio.run(main())
    except BaseException as e:  # noqa: BLE001 - reported to the parent, before the summary ends its wait
        queue.put(("error", name, repr(e)))
    finally:
        rep.done(**seen)


def _raw_group(settings, client: str) -> str:
    import uuid

    return f"{settings.group_id}-raw-{client}-{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def _aiokafka_fetch(settings, seen: dict, overrides: dict, records: int):
    from aiokafka import AIOKafkaConsumer
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor

    own = {"group_id": _raw_group(settings, "aiokafka"), "enable_auto_commit": False, "auto_offset_reset": "earliest",
           "partition_assignment_strategy": (RangePartitionAssignor,)}  # as the worker's ingest consumer
    consumer = AIOKafkaConsumer(settings.topic("scores"), settings.topic("feedback"),
                                **{**settings.aiokafka("consumer"), **overrides, **own})
    await consumer.start()

    async def fetch() -> list[list[bytes]]:
        fetched = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=records)
        return [[r.value for r in batch] for batch in fetched.values()]

    try:
        yield fetch
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def _confluent_fetch(settings, seen: dict, properties: dict, records: int):
    from confluent_kafka import Consumer

    consumer = Consumer({**settings.confluent(), **CONFLUENT_CONSUMER, **properties,
                         "group.id": _raw_group(settings, "confluent"), "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "partition.assignment.strategy": "range"})
    consumer.subscribe([settings.topic("scores"), settings.topic("feedback")])

    async def fetch():
        # consume(n, timeout) waits for all n messages or the timeout, where the worker's
        # getmany returns what has arrived: on envelopes, whose backlog is short of 20,000
        # messages, every call sat out its 0.1 s (570k events/s against 740k this way). So
        # take what is queued, and wait only when nothing is
        got = consumer.consume(records, 0)
        if not got:
            first = consumer.poll(FETCH_TIMEOUT_MS / 1000)
            got = [] if first is None else [first, *(consumer.consume(records - 1, 0) if records > 1 else ())]
        batches, errors = by_partition(got)
        seen["errors"] += errors
        return batches.values()

    try:
        yield fetch
    finally:
        consumer.close()


def raw_main(settings, expected: int, name: str, queue, stop, sample_s: float = 0.25, records: int = FETCH_RECORDS,
             overrides: dict | None = None) -> None:
    """The aiokafka baseline: ``getmany`` as the worker fetches (its consumer settings, range
    assignor, up to ``records`` a round), plus decoding every message into events
    (``codec.decode_batch``, a topic-partition's batch a call, as in :func:`_raw`), nothing else. ``overrides``:
    aiokafka consumer keywords over the worker's."""
    _raw(functools.partial(_aiokafka_fetch, overrides=overrides or {}, records=records), settings, expected, name,
         queue, stop, sample_s)


def raw_confluent_main(settings, expected: int, name: str, queue, stop, sample_s: float = 0.25,
                       records: int = FETCH_RECORDS, properties: dict | None = None) -> None:
    """The confluent-kafka (librdkafka) baseline over the same two topics: ``Consumer.consume``
    of up to ``records`` (the worker's 20,000) that are queued, or the first to arrive
    within 0.1 s, as a tuned consumer (:data:`CONFLUENT_CONSUMER`, then ``properties``); the
    messages grouped by topic-partition (:func:`by_partition`) and decoded as in :func:`_raw`."""
    _raw(functools.partial(_confluent_fetch, properties=properties or {}, records=records), settings, expected,
         name, queue, stop, sample_s)


def in_process_main(settings, expected: int, name: str, partitions: int, traffic: dict, envelope_format: str,
                    queue, stop, sample_s: float = 0.25) -> None:
    """The worker's own work without Kafka: the same envelopes the generator sends (columnar or
    JSON), through the in-process pipeline (every partition's stage and the monitor), 20,000
    events a round, each partition's envelopes in event-time order as the worker's merge would
    give them. The ceiling of the envelope path: what the worker adds to it is fetching,
    partials and output."""
    gc.set_threshold(50_000, 20, 100)
    profile_self(name)
    rep = _Reporter(name, queue, sample_s)
    pipe = None
    try:
        from loadtest.generator import as_columnar
        from loadtest.traffic import Traffic, envelopes
        from streams.config import MonitorConfig
        from streams.pipeline import InProcessPipeline, warm_up

        rounds, n, k = [], 0, 0
        source = Traffic.cached(**traffic)
        while n < expected:
            chunk = source.chunk(k, partitions)
            k += 1
            for lo in range(0, len(chunk), 20_000):
                by_partition: dict[int, list[tuple[float, bytes]]] = {}
                hi = min(lo + 20_000, len(chunk), lo + expected - n)
                for _, p, value, count, max_ts in envelopes(chunk, lo, hi, 1000):
                    if envelope_format == "columnar":
                        value = as_columnar(value)
                    by_partition.setdefault(p, []).append((max_ts, value))
                    n += count
                rounds.extend((p, [v for _, v in sorted(msgs, key=lambda m: m[0])])
                              for p, msgs in sorted(by_partition.items()))
                if n >= expected:
                    break
        config = MonitorConfig()
        warm_up(config)
        pipe = InProcessPipeline(config, partitions=partitions)
        for p, values in rounds:
            if stop.is_set():
                break
            t0 = time.time()
            pipe.process(values, partition=p)
            rep.progress(t0, counted(pipe.counters))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        queue.put(("error", name, repr(e)))
    finally:
        rep.done()
        if pipe is not None:
            pipe.close()
