"""`npo loadtest` and `npo bench pipeline`: argument parsing only; the work is in the modules."""
from __future__ import annotations

import json
import sys
import time

from streams.settings import DEFAULT_ENVELOPE_FORMAT, ENVELOPE_FORMATS


def _traffic_args(p) -> None:
    g = p.add_argument_group("traffic (the simulator's block, replayed cycle after cycle)")
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--key-spread", type=int, default=8,
                   help="keys per simulator scenario (6 scenarios; default 8 -> 48 keys)")
    g.add_argument("--decisions-per-window", type=int, default=500,
                   help="simulated decisions per scenario and minute of event time (default 500)")


def _traffic(args) -> dict:
    return {"seed": args.seed, "key_spread": args.key_spread, "decisions_per_window": args.decisions_per_window}


def add_commands(subparsers, bench_subparsers, settings_args) -> None:
    """Register `loadtest` on the top-level parser and `pipeline` under `bench`."""
    lt = subparsers.add_parser("loadtest", help="send realistic traffic to the topics (rate-limited or flat out)")
    lt.add_argument("--rate", type=float, help="events/s over all processes (default: flat out)")
    lt.add_argument("--duration", type=float, metavar="S", help="seconds to send for (default 60; soak 600)")
    lt.add_argument("--events", type=int, help="stop after this many events")
    lt.add_argument("--single", action="store_true", help="one message per event instead of envelopes")
    lt.add_argument("--envelope-events", type=int, default=1000, help="most events per envelope (default 1000)")
    lt.add_argument("--envelope-format", choices=ENVELOPE_FORMATS, default=DEFAULT_ENVELOPE_FORMAT,
                    help="envelopes as msgpack columns, as the producer client sends them, or JSON (default columnar)")
    lt.add_argument("--linger-ms", type=float, default=20.0, help="envelope batching time (default 20)")
    lt.add_argument("--processes", type=int, default=1, help="generator processes (share the partitions)")
    lt.add_argument("--group", help="consumer group whose lag to show (default: <NPO_GROUP_ID>-ingest)")
    lt.add_argument("--create-topics", action="store_true", help="create missing topics first")
    lt.add_argument("--no-progress", action="store_true")
    lt.add_argument("--json", action="store_true", help="print the result as one JSON object")
    soak = lt.add_argument_group("soak (worker in-process: constant load, RSS sampled)")
    soak.add_argument("--soak", action="store_true",
                      help="run a worker on its own fresh topics under constant load and report RSS")
    soak.add_argument("--warmup-pending", type=int, default=1_000_000,
                      help="pending scenarios in the join before the timed soak starts (default 1,000,000)")
    soak.add_argument("--join-horizon-hours", type=float, default=24.0,
                      help="the soak worker's join horizon in hours of event time (default 24; the monitor's "
                           "own default, 168, makes the join grow for 210 traffic cycles)")
    soak.add_argument("--no-horizon-fill", action="store_true",
                      help="do not also warm up until the join and de-duplication horizons are full (by "
                           "default the warm-up does: RSS grows by design until then)")
    soak.add_argument("--partitions", type=int, default=4, help="soak topics' partitions (default 4)")
    soak.add_argument("--join-scenarios", type=int, default=0,
                      help="also measure RSS of a join holding this many pending scenarios (e.g. 10000000)")
    soak.add_argument("--out", default="npo-soak", help="soak report directory (default ./npo-soak)")
    _traffic_args(lt)
    settings_args(lt)
    lt.set_defaults(run=_loadtest)

    bp = bench_subparsers.add_parser("pipeline", help="raw baselines, worker on single events and envelopes, "
                                                      "Faust peer, two workers and trigger latency, in one run")
    bp.add_argument("--events", type=int, default=1_000_000, help="events per path (default 1,000,000)")
    bp.add_argument("--peer-events", type=int, default=200_000, help="events for the Faust peer (slow; default 200k)")
    bp.add_argument("--partitions", type=int, default=4)
    bp.add_argument("--latency-seconds", type=float, default=30.0, help="length of the latency run (default 30)")
    bp.add_argument("--latency-rate", type=float, help="events/s for the latency run (default: half the envelope rate)")
    bp.add_argument("--raw-runs", type=int, default=3,
                    help="drains of each raw baseline (aiokafka, confluent-kafka, taking turns); the faster "
                         "client's median is the baseline (default 3)")
    bp.add_argument("--no-peer", action="store_true")
    bp.add_argument("--no-two-workers", action="store_true")
    bp.add_argument("--timeout", type=float, default=900.0, help="seconds any one path may take (default 900)")
    bp.add_argument("--out", default="npo-bench", help="report directory (default ./npo-bench)")
    bp.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    bp.add_argument("--profile", metavar="DIR", help="record each measured process with py-spy into DIR/<path>.svg "
                                                     "(slows the paths a little; same as NPO_LOADTEST_PROFILE=DIR)")
    _traffic_args(bp)
    settings_args(bp)
    bp.set_defaults(run=_bench_pipeline)


def _settings(args):
    from streams.kafka.commands import settings_from_args

    return settings_from_args(args)


def _bench_pipeline(args) -> int:
    import os

    from loadtest.bench import BenchConfig, bench_pipeline

    if args.profile:
        import shutil

        if shutil.which("py-spy") is None:  # else every path would run unrecorded, silently
            print("npo bench pipeline: --profile needs py-spy on PATH (pip install py-spy)", file=sys.stderr)
            return 2
        os.environ["NPO_LOADTEST_PROFILE"] = args.profile  # inherited by the spawned processes

    say = (lambda msg: print(f"npo bench pipeline: {msg}", file=sys.stderr)) if args.json else print
    try:
        cfg = BenchConfig(events=args.events, peer_events=args.peer_events, partitions=args.partitions,
                          latency_s=args.latency_seconds, latency_rate=args.latency_rate, peer=not args.no_peer,
                          two_workers=not args.no_two_workers, timeout_s=args.timeout, traffic=_traffic(args),
                          raw_runs=args.raw_runs)
        result = bench_pipeline(_settings(args), cfg, out_dir=args.out, progress=say)
    except (RuntimeError, TimeoutError, ValueError, OSError) as e:
        print(f"npo bench pipeline: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def _loadtest(args) -> int:
    settings = _settings(args)
    try:
        if args.soak:
            from loadtest.soak import SoakConfig, run_soak

            cfg = SoakConfig(rate=args.rate or 20_000.0, duration_s=args.duration or 600.0,
                             warmup_pending=args.warmup_pending, fill_horizons=not args.no_horizon_fill,
                             join_horizon_s=args.join_horizon_hours * 3600.0,
                             partitions=args.partitions,
                             envelope=not args.single, envelope_format=args.envelope_format,
                             join_scenarios=args.join_scenarios, traffic=_traffic(args))
            say = (lambda msg: print(msg, file=sys.stderr if args.json else sys.stdout))
            result = run_soak(settings, cfg, out_dir=args.out, progress=None if args.no_progress else say)
        else:
            result = _send(settings, args)
    except (RuntimeError, TimeoutError, ValueError, OSError) as e:
        print(f"npo loadtest: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def _send(settings, args) -> dict:
    from loadtest.generator import GenConfig, MultiGenerator
    from loadtest.lag import GroupLag

    if args.create_topics:
        from streams.kafka.admin import create_topics

        create_topics(settings)
    duration = args.duration if args.duration is not None or args.events is not None else 60.0
    cfg = GenConfig(rate=args.rate, duration_s=duration, max_events=args.events, envelope=not args.single,
                    envelope_format=args.envelope_format, envelope_events=args.envelope_events,
                    linger_ms=args.linger_ms, processes=args.processes, traffic=_traffic(args))
    lag = GroupLag(settings, args.group or f"{settings.group_id}-ingest")
    gen = MultiGenerator(settings, cfg).start()
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=args.events, unit="ev", unit_scale=True, dynamic_ncols=True, file=sys.stderr)
    last_n, last_t, shown = 0, time.time(), 0
    try:
        while gen.alive():
            time.sleep(1.0)
            n, now = gen.sent(), time.time()
            if bar is not None:
                bar.update(n - shown)
                shown = n
                bar.set_postfix(rate=f"{(n - last_n) / max(now - last_t, 1e-9):,.0f}/s", lag=lag.describe())
            last_n, last_t = n, now
    except KeyboardInterrupt:
        gen.stop()
    result = gen.join()
    if bar is not None:
        bar.update(result["events"] - shown)
        bar.close()
    result["events_per_s"] = round(result["events"] / max(result["seconds"], 1e-9))
    result["consumer_lag"] = lag.total()
    lag.close()
    return result
