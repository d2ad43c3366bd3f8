"""`npo`: the command line. Each subcommand is a thin shell over a module that does the work."""
from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

from streams.worker.memory import small_pages_for_arrays


def _demo(args) -> int:
    from streams.demo.demo import run_demo

    summary = run_demo(seed=args.seed, out=args.out, progress=not args.quiet, ablations=not args.no_ablations)
    h = summary["headline"]
    print(f"npo demo: {summary['events']} events in {summary['seconds']} s -> {Path(args.out) / 'report.html'}")
    print(f"  coverage {h['mean_coverage']:.3f}  false alarms {h['false_alarms']}  "
          f"detection delay {h['detection_delay_windows']:.1f} windows  fidelity {h['fidelity']:.3f}")
    print(f"  triggers: {json.dumps(h['triggers_by_rule'])}")
    cuts = [f"{r['scenario']} {r['area_open']:.2f} -> {r['area_closed']:.2f}"
            for r in summary["loop"]["by_scenario"] if r["area_open"] > 0]
    print(f"  closed loop, true-loss area above budget (loss-hours): {'; '.join(cuts) or 'none over budget'}")
    print(f"  {summary['cpu_seconds']} CPU seconds over two processes")
    return 0


def _replay(args) -> int:
    from streams.demo.demo import run_replay

    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        print(f"npo replay: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    summary = run_replay(args.files, out=args.out, progress=not args.quiet)
    print(f"npo replay: {summary['messages']} messages -> {Path(args.out) / 'report.html'}")
    print(f"  triggers: {json.dumps(summary['triggers_by_rule'])}")
    return 0


def _bench_kernels(args) -> int:
    from kernels.bench import bench_kernels

    result = bench_kernels(n=args.events, keys=args.keys, repeats=args.repeats)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"kernel {result['events_per_s'] / 1e6:.1f} M events/s, numpy baseline "
              f"{result['baseline_events_per_s'] / 1e6:.1f} M events/s ({result['speedup']:.1f}x)")
    return 0


def _guarantees(args) -> int:
    from streams.simulate.guarantees import advice_table, measure, table, threshold_advice

    if args.runs < 10 or args.partitions < 1 or args.looks < 1:
        raise SystemExit("npo guarantees: need --runs >= 10, --partitions >= 1, --looks >= 1")
    rows = measure(runs=args.runs, seed=args.seed, partitions=args.partitions, looks=args.looks)
    advice = threshold_advice(runs=max(1, args.runs // 100), seed=args.seed)
    print(json.dumps({"alarms": rows, "advice": advice}) if args.json else table(rows) + "\n\n" + advice_table(advice))
    return 0


def _validate(args) -> int:
    from streams import codec

    bad = 0
    with open(args.file, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            decoded = codec.decode(line.rstrip(b"\r\n"))
            for r in decoded.errors:
                bad += 1
                print(f"{args.file}:{lineno}: {r.reason}: {r.detail}")
    print(f"{args.file}: {'ok' if not bad else f'{bad} invalid record(s)'}")
    return 1 if bad else 0


def _version() -> str:
    """The installed distribution's version: the one a bug report needs."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("npo-stream")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (npo-stream is not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="npo", description="NPO stream: continual alignment monitoring.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the paper's simulation in process (no Kafka) and write a report")
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--out", default="npo-demo", help="output directory (default: ./npo-demo)")
    d.add_argument("--no-ablations", action="store_true", help="skip the ablation runs (faster)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(run=_demo)

    r = sub.add_parser("replay", help="run JSON-lines logs of score/feedback events in process")
    r.add_argument("files", nargs="+")
    r.add_argument("--out", default="npo-replay")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(run=_replay)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    k = bsub.add_parser("kernels", help="batch kernel update vs the numpy baseline")
    k.add_argument("--events", type=int, default=1_000_000)
    k.add_argument("--keys", type=int, default=10_000)
    k.add_argument("--repeats", type=int, default=5)
    k.add_argument("--json", action="store_true", help="print one JSON object")
    k.set_defaults(run=_bench_kernels)

    g = sub.add_parser("guarantees", help="simulate every trigger rule: false alarms at the worst in-control "
                                          "case over the horizon, and detection delays")
    g.add_argument("--runs", type=int, default=400, help="simulated runs a row (Monte-Carlo error ~ 1/sqrt(runs))")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--partitions", type=int, default=1, help="input partitions sending mid-window looks")
    g.add_argument("--looks", type=int, default=5, help="looks at each window as it fills (rollback)")
    g.add_argument("--json", action="store_true", help="print the rows as JSON")
    g.set_defaults(run=_guarantees)

    v = sub.add_parser("validate", help="check a JSON-lines file against the event schemas")
    v.add_argument("file")
    v.set_defaults(run=_validate)

    # Kafka, Redis and worker commands import their clients only when they run, so
    # `pip install .` (without the kafka extra) is enough for demo, replay and bench.
    from streams.kafka.commands import add_commands as kafka_commands, settings_args
    from streams.kafka.registry import add_command as registry_command
    from streams.state.commands import add_commands as state_commands
    from streams.actuator.command import add_command as actuator_command
    from streams.worker.command import add_command as worker_command

    kafka_commands(sub, settings_args)
    registry_command(sub, settings_args)
    from loadtest.commands import add_commands as loadtest_commands

    loadtest_commands(sub, bsub, settings_args)
    state_commands(sub, settings_args)
    worker_command(sub, settings_args)
    actuator_command(sub, settings_args)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The pipeline allocates many short-lived objects per event; collecting the
    # young generation less often saves a third of the time and changes nothing else.
    gc.set_threshold(50_000, 20, 100)
    small_pages_for_arrays()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
