"""`npo bench pipeline`: every path measured in one run, on the same traffic and broker.

Why one run: figures from different runs on a shared 2-core machine are not
comparable; ratios measured minutes apart are. The run:

1. fills fresh topics with the same N events three times, once as single events and twice
   as envelopes (flat out, before anything is timed);
2. drains them, one spawned process at a time: the raw baselines (aiokafka and
   confluent-kafka, each plain consumer plus codec decode, taking turns; the faster is
   the baseline), the worker on single events, the worker on envelopes, the same pipeline
   as agents in a Faust app on the second envelope topics (`loadtest/faust_host.py`), the worker's operators
   in process on the same envelopes without Kafka (the ceiling of the envelope path), the
   Faust peer, then two workers in one group sharing the single-event topics;
3. runs the worker on fresh topics while the generator sends envelopes at half the
   envelope path's rate, reading the trigger topic, for the trigger latency.

A drained backlog gives the maximum sustained rate of a path (it never waits for
input). Trigger latency runs from the moment the event that closed the window that fired a
trigger (`evaluated_end`: a coverage alarm names an older pane) was due to be produced (the
generator's timeline, including producer batching) to the moment the trigger was read from
its topic.
"""
from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import queue as queue_mod
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from loadtest.generator import GenConfig, generate, run_in_thread
from streams.settings import DEFAULT_ENVELOPE_FORMAT

WARMUP_TRIGGERS_S = 5.0
"""Triggers read in the first seconds after the first one are left out of the after-warm-up p99."""
RAW_CLIENTS = ("aiokafka", "confluent")
"""The plain consumers measured for the raw baseline (`loadtest.procs.raw_main`, `raw_confluent_main`)."""
REQUIRED_KEYS = ("raw_events_per_s", "raw_aiokafka_events_per_s", "raw_confluent_events_per_s", "raw_client",
                 "single_events_per_s", "envelope_events_per_s", "faust_envelope_events_per_s", "peer_events_per_s",
                 "p50_trigger_latency_ms", "p99_trigger_latency_ms", "peak_rss_mb")


def check_result(result: dict) -> list[str]:
    """The required keys that are missing or not positive finite numbers (``peak_rss_mb``:
    a mapping of process to MiB, each positive; ``raw_client``: one of :data:`RAW_CLIENTS`)."""
    bad = []
    for key in REQUIRED_KEYS:
        value = result.get(key)
        if key == "raw_client":
            ok = value in RAW_CLIENTS
        elif key == "peak_rss_mb":
            flat = [v for x in (value or {}).values() for v in (x if isinstance(x, list) else [x])]
            ok = bool(flat) and all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in flat)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if not ok:
            bad.append(key)
    return bad


@dataclasses.dataclass
class BenchConfig:
    events: int = 1_000_000
    peer_events: int = 200_000
    partitions: int = 4
    latency_s: float = 30.0
    latency_rate: float | None = None  # default: half the envelope path's rate
    two_workers: bool = True
    peer: bool = True
    timeout_s: float = 900.0
    traffic: dict = dataclasses.field(default_factory=dict)
    raw_runs: int = 3  # drains of each raw baseline, for its median: one short drain swings by a third

    def __post_init__(self) -> None:
        for name in ("events", "peer_events", "partitions", "raw_runs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("latency_s", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)}")
        if self.latency_rate is not None and not self.latency_rate > 0:
            raise ValueError(f"latency_rate must be > 0, not {self.latency_rate}")


class Phase:
    """One measured process (or several sharing a group) and what it reported."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.samples: list[tuple] = []  # (t, events, rss_mb, extra)
        self.summaries: list[dict] = []

    def rate(self, events: int | None = None) -> float:
        firsts = [s["first"] for s in self.summaries if s.get("first")]
        ends = [s["end"] for s in self.summaries if s.get("end")]
        total = events if events is not None else sum(s["events"] for s in self.summaries)
        if not firsts or not ends or max(ends) <= min(firsts):
            return float("nan")
        return total / (max(ends) - min(firsts))

    def byte_rate(self) -> float:
        """Message bytes a second over the same time as :meth:`rate` (the raw baselines report ``bytes``)."""
        return self.rate(sum(s.get("bytes", 0) for s in self.summaries))

    def peak_rss(self) -> float | list[float]:
        peaks = [round(s["peak_rss_mb"], 1) for s in self.summaries]
        return peaks[0] if len(peaks) == 1 else peaks


def median_phase(phases: list[Phase]) -> Phase:
    """The run with the median rate (the upper middle one of an even number), so its samples go
    into the report with its figure."""
    return sorted(phases, key=lambda ph: _finite_or(ph.rate(), -math.inf))[len(phases) // 2]


def _finite_or(x, default: float) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else default


def pick_raw(result: dict) -> None:
    """Make the faster plain consumer the raw baseline: ``raw_client``, ``raw_events_per_s`` and
    ``raw_runs_events_per_s`` from ``raw_<client>_events_per_s`` (None where no client could be
    measured)."""
    measured = {c: result.get(f"raw_{c}_events_per_s") for c in RAW_CLIENTS if f"raw_{c}_events_per_s" in result}
    fast = max(measured, key=lambda c: _finite_or(measured[c], -math.inf), default=None)
    if fast is None or not math.isfinite(_finite_or(measured[fast], math.nan)):
        result.update(raw_client=None, raw_events_per_s=None, raw_runs_events_per_s=[])
        return
    result.update(raw_client=fast, raw_events_per_s=measured[fast],
                  raw_runs_events_per_s=result.get(f"raw_{fast}_runs_events_per_s", []))


def _r(x: float, digits: int | None = None):
    """Rounded, or None where the figure could not be measured."""
    return round(x, digits) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _ctx():
    return mp.get_context("spawn")


def run_processes(name: str, targets: list[tuple], expected_total: int | None, timeout_s: float,
                  until=None, on_sample=None) -> Phase:
    """Start spawned processes ``(function, args[, kwargs])`` that report over a shared queue (see
    :mod:`loadtest.procs`); stop them when their events sum to ``expected_total`` or
    ``until()`` is true. Returns the phase with every sample and summary."""
    ctx = _ctx()
    q, stop = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=t[0], args=t[1], kwargs={"queue": q, "stop": stop, **(t[2] if len(t) > 2 else {})},
                         daemon=True) for t in targets]
    for p in procs:
        p.start()
    phase = Phase(name)
    latest: dict[str, int] = {}
    ready: set[str] = set()
    deadline = time.time() + timeout_s
    try:
        while len(phase.summaries) < len(procs):
            if time.time() > deadline:
                raise TimeoutError(f"{name}: not done after {timeout_s:g} s ({sum(latest.values())} events)")
            try:
                msg = q.get(timeout=0.5)
            except queue_mod.Empty:
                if not any(p.is_alive() for p in procs):
                    raise RuntimeError(f"{name}: process exited without reporting")
                continue
            kind, who = msg[0], msg[1]
            if kind == "error":
                raise RuntimeError(f"{name} ({who}) failed: {msg[2]}")
            if kind == "sample":
                phase.samples.append((msg[2], msg[3], msg[4], msg[5], who))
                latest[who] = msg[3]
                ready.add(who)
                if on_sample is not None:
                    on_sample(who, msg)
            elif kind == "done":
                phase.summaries.append(msg[2])
                latest[who] = msg[2]["events"]
            if not stop.is_set() and ((expected_total is not None and sum(latest.values()) >= expected_total
                                       and len(latest) == len(procs))
                                      or (until is not None and until(ready))):
                stop.set()
    finally:
        stop.set()
        for p in procs:
            p.join(20)
            if p.is_alive():
                p.terminate()
    return phase


def _settings_for(settings, root: str, name: str, state_dir: str | None = None):
    """Topics ``<root><name>.*``, their own group, join stores under ``state_dir``."""
    return dataclasses.replace(settings, topic_prefix=f"{root}{name}.", group_id=f"{root}{name}-g",
                               state_dir=state_dir or settings.state_dir)


def fill(settings, events: int, partitions: int, envelope: bool, traffic: dict | None = None,
         envelope_format: str = DEFAULT_ENVELOPE_FORMAT) -> dict:
    """Create the topics of ``settings`` with ``partitions`` each and send them ``events`` events
    of the generator's traffic, flat out, as single events or envelopes; the generator's counts."""
    from streams.kafka.admin import create_topics

    create_topics(settings, partitions=partitions)
    return generate(settings, GenConfig(max_events=events, envelope=envelope, envelope_format=envelope_format,
                                        traffic=traffic or {}))


def delete_prefixed(settings, root: str) -> None:
    """Delete every topic whose name starts with ``root`` (ours, and the peer's internal ones)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.confluent())
    names = [t for t in admin.list_topics(timeout=15).topics if t.startswith(root)]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=30, request_timeout=30).values():
            try:
                fut.result(timeout=30)
            except Exception:  # noqa: BLE001 - best effort
                pass


def trigger_latencies(timeline: list[tuple], triggers: list[tuple], grace_s: float) -> list[tuple]:
    """(read time, latency s, rule) per trigger whose closing event is in ``timeline``.

    A window [start, end) is final once every input partition's watermark (largest event
    time minus ``grace_s``) reaches ``end``; the event that made that happen is, on each
    partition, the first with event time >= end + grace, and the last of these across
    partitions is the one that made the rule fire. ``timeline`` holds (due time,
    partition, largest event time sent) per send; ``triggers`` (read time, trigger dict).
    """
    if not timeline:
        return []
    arr = np.array(timeline, dtype=np.float64)
    parts = np.unique(arr[:, 1]).astype(int)
    per = {}
    for p in parts:
        rows = arr[arr[:, 1] == p]
        per[p] = (rows[:, 0], np.maximum.accumulate(rows[:, 2]))
    out = []
    for read_at, trig in triggers:
        # the window whose close fired the rule: a coverage alarm names an older pane
        need = float(trig.get("evidence", {}).get("evaluated_end") or trig["window"]["end"]) + grace_s
        causes = []
        for t, ts in per.values():
            i = int(np.searchsorted(ts, need, side="left"))
            if i >= len(ts):
                causes = None
                break
            causes.append(t[i])
        if causes:
            cause = max(causes)
            if cause <= read_at:
                out.append((read_at, read_at - cause, trig["rule"]))
    return out


class TriggerReader(threading.Thread):
    """Reads the trigger topic from its start; records (read time, trigger) per message."""

    def __init__(self, settings) -> None:
        super().__init__(daemon=True)
        import orjson
        from confluent_kafka import Consumer, TopicPartition

        self._loads = orjson.loads
        self.consumer = Consumer({**settings.confluent(), "group.id": f"lt-read-{uuid.uuid4().hex}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                  "fetch.wait.max.ms": 10})
        topic = settings.topic("triggers")
        meta = self.consumer.list_topics(topic, timeout=15)
        self.consumer.assign([TopicPartition(topic, p) for p in meta.topics[topic].partitions])
        self.triggers: list[tuple] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            msg = self.consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            self.triggers.append((time.time(), self._loads(msg.value())))
        self.consumer.close()


def latency_run(settings, cfg: BenchConfig, rate: float, progress=None) -> tuple[dict, Phase, list, list]:
    """Worker on fresh topics, generator at ``rate`` for ``cfg.latency_s``; trigger latencies."""
    from loadtest.procs import worker_main
    from streams.config import MonitorConfig
    from streams.kafka.admin import create_topics

    create_topics(settings, partitions=cfg.partitions)
    reader = TriggerReader(settings)
    reader.start()
    timeline: list[tuple] = []
    gen: dict = {}
    produced: list[tuple] = []

    def until(ready: set) -> bool:
        if not ready:
            return False
        if "thread" not in gen:
            gen["cfg"] = GenConfig(rate=rate, duration_s=cfg.latency_s, envelope=True, traffic=cfg.traffic)
            gen["thread"], gen["result"], gen["sent"] = run_in_thread(settings, gen["cfg"], timeline)
            gen["t0"] = time.time()
        produced.append((time.time(), gen["sent"][0]))
        if gen["thread"].is_alive():
            return False
        if "error" in gen["result"]:
            raise RuntimeError(f"latency generator failed: {gen['result']['error']}")
        gen.setdefault("ended", time.time())
        return phase_events[0] >= gen["result"]["events"] or time.time() - gen["ended"] > 30

    phase_events = [0]

    def on_sample(who, msg) -> None:
        phase_events[0] = msg[3]
        if progress is not None:
            progress(f"latency: {msg[3]:,} events processed")

    phase = run_processes("latency", [(worker_main, (settings, None, "latency"))], None,
                          cfg.latency_s + cfg.timeout_s, until=until, on_sample=on_sample)
    time.sleep(1.0)  # triggers published at the end are read
    reader.done.set()
    reader.join(5)
    grace = MonitorConfig().windows.grace_s
    lat = trigger_latencies(timeline, reader.triggers, grace)
    ms = np.array([x[1] * 1000 for x in lat]) if lat else np.array([math.nan])
    res = gen.get("result", {})
    out = {"latency_target_events_per_s": round(rate),
           "latency_achieved_events_per_s": round(res.get("events", 0) / max(res.get("seconds", 1), 1e-9)),
           "latency_triggers": len(reader.triggers), "latency_triggers_timed": len(lat),
           "p50_trigger_latency_ms": float(np.nanpercentile(ms, 50)),
           "p99_trigger_latency_ms": float(np.nanpercentile(ms, 99)),
           "max_trigger_latency_ms": float(np.nanmax(ms))}
    # the first windows close while the worker still loads its compiled kernels: shown apart
    steady = [x[1] * 1000 for x in lat if x[0] - lat[0][0] >= WARMUP_TRIGGERS_S] if lat else []
    out["p99_trigger_latency_after_warmup_ms"] = float(np.percentile(steady, 99)) if steady else math.nan
    return out, phase, lat, produced


def bench_pipeline(settings, cfg: BenchConfig, out_dir: str | Path | None = None, progress=print) -> dict:
    """Run every phase; return the bench's JSON object (and write the report to ``out_dir``)."""
    from loadtest.capacity import capacity
    from loadtest.faust_host import faust_main
    from loadtest.peer_faust import peer_main
    from loadtest.procs import in_process_main, raw_confluent_main, raw_main, rss_mb, worker_main

    import shutil
    import tempfile

    root = f"{settings.topic_prefix}bench.{uuid.uuid4().hex[:8]}."
    state = tempfile.mkdtemp(prefix="npo-bench-state-")
    single = _settings_for(settings, root, "single", state)
    env = _settings_for(settings, root, "env", state)
    json_env = _settings_for(settings, root, "jenv", state)  # the same events in JSON envelopes
    faust_env = _settings_for(settings, root, "fenv", state)  # the same envelopes, for the Faust host
    lat_settings = _settings_for(settings, root, "lat", state)
    phases: dict[str, Phase] = {}
    result: dict = {"events": cfg.events, "partitions": cfg.partitions, "topic_prefix": root}
    started = time.time()
    try:
        progress(f"filling {single.topic_prefix}* and {env.topic_prefix}* with {cfg.events:,} events each")
        filled_single = fill(single, cfg.events, cfg.partitions, False, cfg.traffic)
        filled_env = fill(env, cfg.events, cfg.partitions, True, cfg.traffic)
        fill(json_env, cfg.events, cfg.partitions, True, cfg.traffic, envelope_format="json")
        fill(faust_env, cfg.events, cfg.partitions, True, cfg.traffic)
        result["fill_single_events_per_s"] = round(filled_single["events"] / filled_single["seconds"])
        result["fill_envelope_events_per_s"] = round(filled_env["events"] / filled_env["seconds"])
        result["envelope_messages"] = filled_env["messages"]
        n = cfg.events

        def measure(name, fn, s, expected, *extra):
            progress(f"{name}: draining {expected:,} events")
            phase = run_processes(name, [(fn, (s, expected, name, *extra))], expected, cfg.timeout_s)
            phases[name] = phase
            progress(f"{name}: {phase.rate():,.0f} events/s")
            return phase

        # the two plain consumers take turns, so a slow spell of the shared host hits both
        raws: dict[str, list[Phase]] = {client: [] for client in RAW_CLIENTS}
        for _ in range(cfg.raw_runs):
            for client, fn in zip(RAW_CLIENTS, (raw_main, raw_confluent_main)):
                raws[client].append(measure(f"raw_{client}", fn, single, n))
        for client, runs in raws.items():
            phases[f"raw_{client}"] = median_phase(runs)
            result[f"raw_{client}_events_per_s"] = _r(phases[f"raw_{client}"].rate())
            result[f"raw_{client}_runs_events_per_s"] = [_r(ph.rate()) for ph in runs]
        pick_raw(result)
        progress(f"raw baseline: {result['raw_client']} (aiokafka {result['raw_aiokafka_events_per_s'] or 0:,.0f}, "
                 f"confluent {result['raw_confluent_events_per_s'] or 0:,.0f} events/s)")
        one = measure("single", worker_main, single, n)
        envp = measure("envelope", worker_main, env, n)
        result.update(single_events_per_s=_r(one.rate()), envelope_events_per_s=_r(envp.rate()))
        json_envp = measure("envelope_json", worker_main, json_env, n)
        result["envelope_json_events_per_s"] = _r(json_envp.rate())
        faust = measure("faust_envelope", faust_main, faust_env, n)
        result["faust_envelope_events_per_s"] = _r(faust.rate())
        result["faust_envelope_vs_worker"] = _r(faust.rate() / (envp.rate() or math.nan), 3)
        stage = measure("in_process", in_process_main, single, n, cfg.partitions, cfg.traffic, "columnar")
        result["in_process_events_per_s"] = _r(stage.rate())
        json_stage = measure("in_process_json", in_process_main, single, n, cfg.partitions, cfg.traffic, "json")
        result["in_process_json_events_per_s"] = _r(json_stage.rate())
        result["single_counted"] = one.summaries[0]["events"]
        result["envelope_counted"] = envp.summaries[0]["events"]
        result["envelope_json_counted"] = json_envp.summaries[0]["events"]
        result["single_counters"] = one.summaries[0].get("counters", {})
        if cfg.peer:
            peer_n = min(cfg.peer_events, n)
            peer = measure("peer", peer_main, single, peer_n)
            result["peer_events_per_s"] = _r(peer.rate())
            result["peer_events"] = peer_n
        if cfg.two_workers:
            two_settings = dataclasses.replace(single, group_id=f"{root}two-g")
            progress(f"two workers: draining {n:,} events")
            share = (2 * cfg.partitions // 2, cfg.partitions // 2)  # scores+feedback, partials
            two = run_processes("two_workers", [(worker_main, (two_settings, None, f"w{i}"), {"settle": share})
                                                for i in range(2)], n, cfg.timeout_s)
            phases["two_workers"] = two
            result["two_workers_events_per_s"] = _r(two.rate(n))
            result["two_workers_counted"] = sum(s["events"] for s in two.summaries)
            progress(f"two workers: {two.rate(n):,.0f} events/s combined")
        rate = cfg.latency_rate or (result["envelope_events_per_s"] or 2_000) / 2
        progress(f"latency: envelopes at {rate:,.0f} events/s for {cfg.latency_s:g} s")
        lat_out, lat_phase, lat, produced = latency_run(lat_settings, cfg, rate)
        phases["latency"] = lat_phase
        result.update(lat_out)
        result["peak_rss_mb"] = {name: ph.peak_rss() for name, ph in phases.items()}
        result["peak_rss_mb"]["bench"] = round(rss_mb()[1], 1)
        if all(result.get(k) for k in ("single_events_per_s", "envelope_events_per_s", "two_workers_events_per_s")):
            result["capacity"] = capacity(result)
        raw_rate = result["raw_events_per_s"] or math.nan
        for path in ("envelope", "envelope_json", "faust_envelope", "single", "peer", "two_workers", "in_process",
                     "in_process_json"):
            if f"{path}_events_per_s" in result:
                result[f"{path}_vs_raw"] = _r((result[f"{path}_events_per_s"] or math.nan) / raw_rate, 3)
        result["seconds"] = round(time.time() - started, 1)
        # JSON has no NaN: a figure that could not be measured (e.g. no trigger late enough) is null
        result = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in result.items()}
        if out_dir is not None:
            from loadtest.report import write_bench_report

            result["report"] = str(write_bench_report(out_dir, result, phases, lat, produced))
        return result
    finally:
        delete_prefixed(settings, root)
        shutil.rmtree(state, ignore_errors=True)
