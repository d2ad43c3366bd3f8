"""How many workers, cores and input partitions a bus needs, from one bench run's rates.

A platform team sizes a deployment from measured per-worker rates, not from a peak figure:
this turns `npo bench pipeline`'s results into that table. The assumptions, each stated in
the table's notes:

- one worker process uses one core (its loop is one Python thread; the kernels run on it);
- workers scale as the bench's two workers did against one on single events (`scaling`,
  at most 1), envelopes alike: they share nothing but the broker, so more workers on more
  hosts scale at least as well as two beside a broker on the same two cores;
- each worker runs at most at `utilisation` of its drained rate, which leaves headroom for
  bursts and keeps trigger latency low (the bench measures latency at half the rate);
- every busy worker needs an input partition of its own, and twice as many partitions as
  workers lets the group grow without repartitioning (the count can only be raised, and
  raising it moves keys between partitions).
"""
from __future__ import annotations

import math

BUS_RATES = (1_000_000, 10_000_000)
"""Events per second of the buses the table sizes."""


def capacity(bench: dict, bus_rates=BUS_RATES, utilisation: float = 0.5) -> dict:
    """Rows per (message shape, bus rate) from a bench result with `envelope_events_per_s`,
    `single_events_per_s` and `two_workers_events_per_s` (two workers on single events)."""
    if not 0.0 < utilisation <= 1.0:
        raise ValueError(f"utilisation must be in (0, 1], got {utilisation}")
    single, two = bench.get("single_events_per_s"), bench.get("two_workers_events_per_s")
    if not single or not two or not bench.get("envelope_events_per_s"):
        raise ValueError("the bench result needs envelope_events_per_s, single_events_per_s and "
                         "two_workers_events_per_s (run npo bench pipeline without --no-two-workers)")
    scaling = min(1.0, two / (2 * single))
    rows = []
    for shape, key in (("envelopes", "envelope_events_per_s"), ("single events", "single_events_per_s")):
        per_worker = bench[key] * scaling * utilisation
        for rate in bus_rates:
            workers = math.ceil(rate / per_worker)
            rows.append({"shape": shape, "bus_events_per_s": rate, "per_worker_events_per_s": round(per_worker),
                         "workers": workers, "cores": workers, "input_partitions": 2 * workers})
    return {"scaling": round(scaling, 3), "utilisation": utilisation, "rows": rows}


def table(plan: dict) -> str:
    """The plan as a Markdown table, with its assumptions."""
    lines = ["| input | bus (events/s) | per worker at "
             f"{plan['utilisation']:.0%} (events/s) | workers (= cores) | input partitions |",
             "|---|---|---|---|---|"]
    for r in plan["rows"]:
        lines.append(f"| {r['shape']} | {r['bus_events_per_s']:,} | {r['per_worker_events_per_s']:,} | "
                     f"{r['workers']:,} | {r['input_partitions']:,} |")
    lines.append("")
    lines.append(f"Scaling measured from one worker to two: {plan['scaling']:.2f} per worker. Broker cores, "
                 "replication and the producers are not counted.")
    return "\n".join(lines)


def main(argv=None) -> int:
    """`python -m loadtest.capacity BENCH.json [--utilisation 0.5]`: the table of a saved
    `npo bench pipeline --json` result."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m loadtest.capacity", description=main.__doc__)
    parser.add_argument("bench", help="a file holding npo bench pipeline --json's output")
    parser.add_argument("--utilisation", type=float, default=0.5, help="share of a worker's drained rate to plan for")
    args = parser.parse_args(argv)
    try:
        with open(args.bench) as f:
            bench = json.load(f)
        print(table(capacity(bench, utilisation=args.utilisation)))
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        parser.error(f"{args.bench}: {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
