"""`npo loadtest --soak`: constant load for a set time over a large live join state, RSS sampled.

Why: a leak or an unbounded structure shows only over time and only with realistic
state. The soak first sends traffic flat out until the worker's join holds
``warmup_pending`` scenarios (scores kept for their feedback, which may come days of
event time later or never) and both horizons are full: the join's (``join_horizon_s`` of
event time, 24 h by default here) and the de-duplication ids' (24 h, or the cap). From then
on each state forgets as much as it takes in, so a flat RSS is the right expectation. It
waits for the worker to catch up, then sends at a constant rate for ``duration_s`` while
the worker process reports its RSS and join size every second.

Why not the monitor's 7-day join horizon by default: at this traffic's pace of event time
the join would then grow for 210 cycles to about 30 million pending scenarios, a warm-up
of some 40 million events. ``join_horizon_s`` sets it for a soak that wants it.

``join_scenarios`` adds a separate measurement: one process holding that many pending
scenarios in the join store alone (the worker's RocksDB-backed
:class:`streams.operators.join.FeedbackJoin`), for the 10-million-scenario target.
"""
from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import queue as queue_mod
import tempfile
import time
import uuid

import numpy as np

from loadtest.generator import GenConfig, generate, run_in_thread
from loadtest.procs import CHECKPOINT_COUNTERS
from loadtest.traffic import SCORE, Traffic
from streams.config import MonitorConfig
from streams.settings import DEFAULT_ENVELOPE_FORMAT


@dataclasses.dataclass
class SoakConfig:
    rate: float = 20_000.0
    duration_s: float = 600.0
    warmup_pending: int = 1_000_000
    fill_horizons: bool = True  # warm up until the join and de-duplication horizons are full too
    join_horizon_s: float = 86_400.0
    partitions: int = 4
    envelope: bool = True
    envelope_format: str = DEFAULT_ENVELOPE_FORMAT
    join_scenarios: int = 0
    sample_s: float = 1.0
    catchup_timeout_s: float = 600.0
    traffic: dict = dataclasses.field(default_factory=dict)


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


def _mean(total: float, n: int) -> int | None:
    return round(total / n) if n else None


def checkpoint_sizes(counters: dict) -> dict:
    """Checkpoints the worker committed from its start to the end of the soak (warm-up
    included, the last ones at its stop not), by role, how many of them were deltas, and
    their mean uncompressed size, of all and of the deltas alone: a whole checkpoint's size
    follows the partition's state, a delta's the input since the one before. And the bytes
    of de-duplication ids copied aside because a checkpoint was read more slowly than the
    ids' ring was written."""
    out = {"ingest_checkpoint_bytes_copied_aside": counters.get("checkpoint_bytes_copied_aside", 0)}
    for role in ("ingest", "aggregate"):
        n, size, deltas, delta_size = (counters.get(f"{name}|{role}", 0) for name in CHECKPOINT_COUNTERS)
        out[f"{role}_checkpoints"] = n
        out[f"{role}_checkpoint_deltas"] = deltas
        out[f"{role}_checkpoint_bytes_mean"] = _mean(size, n)
        out[f"{role}_checkpoint_delta_bytes_mean"] = _mean(delta_size, deltas)
    return out


def steady_checkpoints(samples: list[tuple], start: float, end: float) -> dict:
    """The input partitions' checkpoints committed in the constant phase (`samples`: time, then
    so far: checkpoints, their bytes, deltas, their bytes), their mean size, and that of the
    deltas among them: what a checkpoint costs once the state is full."""
    inside = [s for s in samples if start <= s[0] <= end]
    before = [s for s in samples if s[0] < start]
    n = size = deltas = delta_size = 0
    if inside:
        first = before[-1] if before else inside[0]
        n, size, deltas, delta_size = (last - was for last, was in zip(inside[-1][1:], first[1:]))
    return {"ingest_checkpoints_in_soak": n, "ingest_checkpoint_bytes_in_soak_mean": _mean(size, n),
            "ingest_checkpoint_deltas_in_soak": deltas,
            "ingest_checkpoint_delta_bytes_in_soak_mean": _mean(delta_size, deltas)}


def warmup_events(traffic: Traffic, pending: int, partitions: int, config: MonitorConfig | None) -> int:
    """Events to send before the constant phase, 5% over: enough for ``pending`` scenarios in
    the join and, with a ``config``, to fill its join horizon and its de-duplication horizon
    (or cap). Both states grow until then by design (the ids take up to 120 bytes each, the
    scores live in RocksDB), so RSS is flat only after it."""
    for_join = pending / float(np.mean(traffic.role == SCORE))
    per_event_second = len(traffic) / traffic.span
    for_horizons = 0.0 if config is None else \
        max(min(config.dedup_horizon_s * per_event_second, config.dedup_max_ids * partitions),
            config.join_horizon_s * per_event_second)
    return int(max(for_join, for_horizons) * 1.05) if pending or for_horizons else 0


def run_soak(settings, cfg: SoakConfig, out_dir=None, progress=print) -> dict:
    from loadtest.bench import delete_prefixed
    from loadtest.procs import worker_main
    from streams.kafka.admin import create_topics

    say = progress or (lambda msg: None)
    root = f"{settings.topic_prefix}soak.{uuid.uuid4().hex[:8]}."
    s = dataclasses.replace(settings, topic_prefix=root, group_id=f"{root}g",
                            state_dir=tempfile.mkdtemp(prefix="npo-soak-state-"))
    ctx = mp.get_context("spawn")
    q, stop = ctx.Queue(), ctx.Event()
    samples: list[tuple] = []  # (t, events, rss_mb, join_keys, who)
    checkpoints: list[tuple] = []  # (t, ingest checkpoints so far, their bytes, deltas so far, their bytes)
    produced: list[tuple] = []
    summary: dict = {}
    proc = None
    config = MonitorConfig(join_horizon_s=cfg.join_horizon_s)

    def drain(block_s: float = 0.0) -> None:
        deadline = time.time() + block_s
        while True:
            try:
                msg = q.get(timeout=max(0.01, deadline - time.time()))
            except queue_mod.Empty:
                return
            if msg[0] == "error":
                raise RuntimeError(f"soak worker failed: {msg[2]}")
            if msg[0] == "sample":
                extra = msg[5]  # (join keys, *CHECKPOINT_COUNTERS of the input partitions), as the worker counts them
                samples.append((msg[2], msg[3], msg[4], extra[0] if extra else None, msg[1]))
                if extra:
                    checkpoints.append((msg[2], *extra[1:]))
            elif msg[0] == "done":
                summary.update(msg[2])

    def processed() -> int:
        return samples[-1][1] if samples else 0

    def wait_for(target: int, what: str) -> None:
        deadline = time.time() + cfg.catchup_timeout_s
        while processed() < target:
            if time.time() > deadline or not proc.is_alive():
                raise TimeoutError(f"soak: worker at {processed():,} of {target:,} events after {what}")
            drain(1.0)

    try:
        create_topics(s, partitions=cfg.partitions)
        proc = ctx.Process(target=worker_main, args=(s, None, "soak"),
                           kwargs={"queue": q, "stop": stop, "sample_s": cfg.sample_s, "join_stats": True,
                                   "config": config},
                           daemon=True)
        proc.start()
        traffic = Traffic.cached(**cfg.traffic)
        warm_events = warmup_events(traffic, cfg.warmup_pending, cfg.partitions,
                                    config if cfg.fill_horizons else None)
        t_start = time.time()
        next_cycle = 0
        if warm_events:
            say(f"soak: warm-up, {warm_events:,} events flat out: {cfg.warmup_pending:,} pending scenarios"
                + (f", and the join ({cfg.join_horizon_s / 3600:g} h) and de-duplication horizons full"
                   if cfg.fill_horizons else ""))
            warm = generate(s, GenConfig(max_events=warm_events, envelope=cfg.envelope,
                                         envelope_format=cfg.envelope_format, traffic=cfg.traffic))
            next_cycle = warm["cycles"]
            produced.append((time.time(), warm["events"]))
            wait_for(warm["events"], "the warm-up")
        sent_before = warm_events
        t_warm = time.time()
        drain(cfg.sample_s * 2)
        say(f"soak: {cfg.rate:,.0f} events/s for {cfg.duration_s:g} s")
        gen_cfg = GenConfig(rate=cfg.rate, duration_s=cfg.duration_s, envelope=cfg.envelope,
                            envelope_format=cfg.envelope_format, first_cycle=next_cycle,
                            traffic=cfg.traffic)
        thread, result, sent = run_in_thread(s, gen_cfg)
        last_say = time.time()
        while thread.is_alive():
            drain(1.0)
            produced.append((time.time(), sent_before + sent[0]))
            if time.time() - last_say >= 30 and samples:
                last_say = time.time()
                say(f"soak: {time.time() - t_warm:.0f} s, processed {processed():,}, lag "
                    f"{sent_before + sent[0] - processed():,}, rss {samples[-1][2]:.0f} MiB, "
                    f"join keys {samples[-1][3] or 0:,}")
        if "error" in result:
            raise RuntimeError(f"soak generator failed: {result['error']}")
        t_end_send = time.time()
        wait_for(sent_before + result["events"], "the soak")
        stop.set()
        deadline = time.time() + 30
        while not summary and time.time() < deadline:
            drain(0.5)
        steady = [x for x in samples if t_warm <= x[0] <= t_end_send]
        tenth = max(1, len(steady) // 10)
        rss = [x[2] for x in steady]
        base = _median(rss[:tenth])
        lag = [p - np.interp(t, [x[0] for x in samples], [x[1] for x in samples]) for t, p in produced
               if t >= t_warm]
        joins = [x[3] for x in steady if x[3] is not None]
        out = {
            "rate_target_events_per_s": cfg.rate, "duration_s": cfg.duration_s,
            "join_horizon_s": cfg.join_horizon_s,
            "rate_achieved_events_per_s": round(result["events"] / max(result["seconds"], 1e-9)),
            "warmup_events": sent_before, "warmup_s": round(t_warm - t_start, 1),
            "warmup_end_s": round(t_warm - (samples[0][0] if samples else t_warm), 1),
            "soak_events": result["events"], "events_processed": summary.get("events", processed()),
            "join_keys_at_start": joins[0] if joins else None, "join_keys_at_end": joins[-1] if joins else None,
            "rss_at_start_mb": round(base, 1), "rss_at_end_mb": round(_median(rss[-tenth:]), 1),
            "rss_max_mb": round(max(rss), 1) if rss else None,
            "rss_drift_pct": round(100 * (_median(rss[-tenth:]) - base) / base, 1) if rss else None,
            "rss_max_over_start_pct": round(100 * (max(rss) - base) / base, 1) if rss else None,
            "peak_rss_mb": round(summary.get("peak_rss_mb", math.nan), 1),
            "max_lag_events": int(max(lag)) if lag else None,
            "catch_up_s": round(time.time() - t_end_send, 1),
            **checkpoint_sizes(summary.get("counters", {})),
            **steady_checkpoints(checkpoints, t_warm, t_end_send),
        }
        if cfg.join_scenarios:
            say(f"soak: join store alone with {cfg.join_scenarios:,} pending scenarios")
            out.update(join_rss(cfg.join_scenarios))
        if out_dir is not None:
            from loadtest.report import write_soak_report

            out["report"] = str(write_soak_report(out_dir, out, samples, produced))
        return out
    finally:
        stop.set()
        if proc is not None:
            proc.join(30)
            if proc.is_alive():
                proc.terminate()
        delete_prefixed(settings, root)
        import shutil

        shutil.rmtree(s.state_dir, ignore_errors=True)


def _join_main(n: int, batch: int, result) -> None:
    import os
    import shutil

    from loadtest.procs import rss_mb
    from streams.operators.join import Context, FeedbackJoin

    path = tempfile.mkdtemp(prefix="npo-join-rss-")
    join = FeedbackJoin(path)
    rng = np.random.default_rng(1)
    t0, ts, peak_seen = time.time(), 1767225600.0, 0.0
    try:
        for lo in range(0, n, batch):
            k = min(batch, n - lo)
            scores = rng.random(k).tolist()
            ids = [f"stationary-7-{(lo + i) // 1000:06d}-{(lo + i) % 1000:05d}~000000" for i in range(k)]
            ctxs = [Context("pol-stationary", f"seg-{i % 8}", sc, 0.5, "act" if sc >= 0.5 else "hold", ts + i * 1e-3)
                    for i, sc in enumerate(scores)]
            join.add_scores(ids, ctxs)
            ts += k * 1e-3
            peak_seen = max(peak_seen, rss_mb()[0])
        keys = join.pending_scores
        probe = join.lookup([f"stationary-7-{i // 1000:06d}-{i % 1000:05d}~000000" for i in range(0, n, max(1, n // 1000))])
        cur, peak = rss_mb()
        disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
        fill_s, t0 = time.time() - t0, time.time()
        whole = sum(map(len, join.dump_lazily()[1]))  # a whole checkpoint's join, before compression
        result.put({"join_scenarios": n, "join_keys": keys, "join_found": sum(c is not None for c in probe),
                    "join_probe": len(probe), "join_rss_mb": round(cur, 1), "join_peak_rss_mb": round(peak, 1),
                    "join_disk_mb": round(disk / 2**20, 1), "join_fill_s": round(fill_s, 1),
                    "join_whole_bytes_per_scenario": round(whole / max(1, n), 1),
                    "join_whole_dump_s": round(time.time() - t0, 1)})
    finally:
        join.close()
        shutil.rmtree(path, ignore_errors=True)


def join_rss(n: int, batch: int = 20_000) -> dict:
    """RSS of a process whose join store holds ``n`` pending scenarios (written as the worker
    writes them: one batch per call)."""
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    p = ctx.Process(target=_join_main, args=(n, batch, result), daemon=True)
    p.start()
    try:
        return result.get(timeout=max(600.0, n / 5_000))
    finally:
        p.join(30)
