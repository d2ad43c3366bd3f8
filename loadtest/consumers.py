"""`python -m loadtest.consumers`: aiokafka against confluent-kafka on the worker's fetch pattern.

The worker reads with one consumer subscribed to two co-partitioned topics (``scores`` and
``feedback``), ``getmany(timeout_ms=100, max_records=20_000)``, range assignor, and decodes each
topic-partition's values with ``codec.decode_batch``. This fills such a pair of topics once
with the generator's traffic as single events and once as envelopes, then drains each with
each plain consumer (:func:`loadtest.procs.raw_main`, :func:`loadtest.procs.raw_confluent_main`,
the processes the bench's raw baseline runs), ``--runs`` times, the clients taking turns.
It prints events/s and MB/s (message values) per value kind and client, medians of the runs,
and confluent's rate over aiokafka's. The broker and security settings are the project's
(``NPO_*``, ``--config``, the connection flags); topics are created under
``<prefix>consumers.<id>.`` and deleted at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import uuid

from loadtest.bench import _r, delete_prefixed, fill, median_phase, run_processes

CLIENTS = ("aiokafka", "confluent")
KINDS = ("single", "envelope")


def _value(text: str):
    """A property's value from the command line: JSON where it parses (numbers, booleans), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _assignment(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, _value(value)


def build_parser() -> argparse.ArgumentParser:
    from streams.kafka.commands import settings_args

    p = argparse.ArgumentParser(prog="python -m loadtest.consumers", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=500_000, help="events per value kind (default 500,000)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of each topic (default 4)")
    p.add_argument("--runs", type=int, default=3, help="drains per client and kind; the median counts (default 3)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="value kinds (default both)")
    p.add_argument("--records", type=int, default=20_000,
                   help="most messages a fetch round takes, both clients (getmany max_records, consume "
                        "num_messages; default 20,000, the worker's)")
    p.add_argument("--confluent", metavar="PROPERTY=VALUE", type=_assignment, action="append", default=[],
                   help="a librdkafka consumer property over the tuned ones (loadtest.procs.CONFLUENT_CONSUMER); "
                        "repeatable")
    p.add_argument("--aiokafka", metavar="KEYWORD=VALUE", type=_assignment, action="append", default=[],
                   help="an AIOKafkaConsumer keyword over the worker's (e.g. max_partition_fetch_bytes=8388608); "
                        "repeatable")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one drain may take (default 600)")
    p.add_argument("--json", action="store_true", help="print only the result as one JSON object")
    settings_args(p)
    return p


def client_figures(phases: list) -> dict:
    """One client's figures on one kind from its drains: the median run's events/s and MB/s
    (MiB of message values), and every run's."""
    mid = median_phase(phases)
    return {"events_per_s": _r(mid.rate()), "mb_per_s": _r(mid.byte_rate() / 2**20, 1),
            "runs_events_per_s": [_r(ph.rate()) for ph in phases],
            "runs_mb_per_s": [_r(ph.byte_rate() / 2**20, 1) for ph in phases],
            "bytes": mid.summaries[0].get("bytes") if mid.summaries else None}


def ratio(kind: dict, num: str = "confluent", den: str = "aiokafka") -> float | None:
    """``num``'s events/s over ``den``'s on one kind (None if either is missing)."""
    a = (kind.get(num) or {}).get("events_per_s")
    b = (kind.get(den) or {}).get("events_per_s")
    return round(a / b, 3) if a and b else None


def table(result: dict) -> str:
    """The result as a plain-text table: a row per kind and client, then the ratio."""
    lines = [f"{result['events']:,} events per kind, {result['partitions']} partitions a topic, "
             f"up to {result['records']:,} messages a round, medians of {result['runs']} drains",
             f"{'kind':<9} {'client':<10} {'events/s':>10} {'MB/s':>7}  runs (events/s)"]
    for kind in KINDS:
        if kind not in result:
            continue
        for client in CLIENTS:
            f = result[kind].get(client)
            if f is None:
                continue
            runs = ", ".join("-" if r is None else f"{r:,.0f}" for r in f["runs_events_per_s"])
            rate = "-" if f["events_per_s"] is None else f"{f['events_per_s']:,.0f}"
            mb = "-" if f["mb_per_s"] is None else f"{f['mb_per_s']:.1f}"
            lines.append(f"{kind:<9} {client:<10} {rate:>10} {mb:>7}  {runs}")
        r = result[kind].get("confluent_vs_aiokafka")
        lines.append(f"{kind:<9} {'confluent/aiokafka':<29} {'-' if r is None else f'{r:.2f}'}")
    return "\n".join(lines)


def compare(settings, events: int, partitions: int = 4, runs: int = 3, kinds=KINDS, records: int = 20_000,
            confluent: dict | None = None, aiokafka: dict | None = None, timeout_s: float = 600.0,
            progress=print) -> dict:
    """Fill, drain and measure (see the module's docstring); the result as a dict."""
    from loadtest.procs import CONFLUENT_CONSUMER, raw_confluent_main, raw_main

    for name, v in (("events", events), ("partitions", partitions), ("runs", runs), ("records", records)):
        if v < 1:
            raise ValueError(f"{name} must be at least 1, not {v}")
    root = f"{settings.topic_prefix}consumers.{uuid.uuid4().hex[:8]}."
    targets = {"aiokafka": (raw_main, {"records": records, "overrides": dict(aiokafka or {})}),
               "confluent": (raw_confluent_main, {"records": records, "properties": dict(confluent or {})})}
    result: dict = {"events": events, "partitions": partitions, "runs": runs, "records": records,
                    "confluent_properties": {**CONFLUENT_CONSUMER, **(confluent or {})},
                    "aiokafka_overrides": dict(aiokafka or {})}
    started = time.time()
    try:
        for kind in kinds:
            s = dataclasses.replace(settings, topic_prefix=f"{root}{kind}.", group_id=f"{root}{kind}-g")
            progress(f"{kind}: filling {s.topic_prefix}scores/feedback with {events:,} events")
            # JSON envelopes: what codec.decode_batch, the raw baseline's decode, reads in one call
            filled = fill(s, events, partitions, envelope=kind == "envelope", envelope_format="json")
            drains: dict[str, list] = {c: [] for c in CLIENTS}
            for i in range(runs):
                for client in CLIENTS:  # taking turns: a slow spell of a shared host hits both
                    fn, kwargs = targets[client]
                    phase = run_processes(client, [(fn, (s, events, f"{kind}-{client}-{i}"), kwargs)], events,
                                          timeout_s)
                    drains[client].append(phase)
                    progress(f"{kind}: {client} run {i + 1}: {phase.rate():,.0f} events/s")
            result[kind] = {"messages": filled["messages"], **{c: client_figures(drains[c]) for c in CLIENTS}}
            result[kind]["confluent_vs_aiokafka"] = ratio(result[kind])
    finally:
        delete_prefixed(settings, root)
    result["seconds"] = round(time.time() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    from streams.kafka.commands import settings_from_args

    args = build_parser().parse_args(argv)
    say = (lambda msg: print(f"consumers: {msg}", file=sys.stderr)) if args.json else print
    try:
        result = compare(settings_from_args(args), args.events, args.partitions, args.runs, args.kinds, args.records,
                         dict(args.confluent), dict(args.aiokafka), args.timeout, progress=say)
    except (RuntimeError, TimeoutError, ValueError, OSError) as e:
        print(f"python -m loadtest.consumers: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
