"""Run the in-process pipeline over a list of events and collect what it emits."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import orjson
from tqdm import tqdm

from streams.config import MonitorConfig
from streams.operators.aggregate import WindowResult
from streams.pipeline import InProcessPipeline, Output

WINDOW_FIELDS = ("policy_id", "segment", "kind", "start", "end")


@dataclass
class RunResult:
    """Everything one run emitted, plus its counters."""

    windows: list[dict] = field(default_factory=list)
    triggers: list[dict] = field(default_factory=list)
    results: list[WindowResult] = field(default_factory=list)  # every final/early window, in order
    dead_letters: list = field(default_factory=list)
    counters: dict = field(default_factory=dict)


def window_rows(res: WindowResult) -> list[dict]:
    """One flat dict per key of a window result (CSV-ready)."""
    cols = {k: np.asarray(v) for k, v in res.stats.items()}
    rows = []
    for i, (policy_id, segment) in enumerate(res.keys):
        row = {"policy_id": policy_id, "segment": segment, "kind": res.kind, "start": res.start, "end": res.end}
        row.update({k: float(v[i]) for k, v in cols.items()})
        rows.append(row)
    return rows


def encode_messages(events: list[dict], envelope: int = 1000) -> list[bytes]:
    """Events as Kafka-style message values: envelopes of `envelope` events, or single events if 1."""
    if envelope <= 1:
        return [orjson.dumps(e) for e in events]
    return [orjson.dumps({"type": "envelope", "v": 1, "events": events[i:i + envelope]})
            for i in range(0, len(events), envelope)]


def run_pipeline(messages: list[bytes], config: MonitorConfig, batch: int = 50, progress: str | None = None,
                 emitted_at=None) -> RunResult:
    """Feed `messages` in batches through one in-process pipeline, then drain it.

    `emitted_at(trigger) -> float` stamps triggers; by default the end of the
    trigger's window, so runs are deterministic.
    """
    return run_partitioned([messages], config, batch, progress, emitted_at)


def run_partitioned(by_partition: list[list[bytes]], config: MonitorConfig, batch: int = 50,
                    progress: str | None = None, emitted_at=None) -> RunResult:
    """Messages already routed to partitions (each list in that partition's order), as the
    Kafka worker sees them; partitions take turns, which does not change the results."""
    pipe = InProcessPipeline(config, partitions=len(by_partition))
    result = RunResult()
    bar = tqdm(total=sum(map(len, by_partition)), desc=progress, unit="msg", disable=progress is None, leave=False)

    def collect(out: Output) -> None:
        result.results.extend(out.results)
        for res in out.windows:
            result.windows.extend(window_rows(res))
        result.triggers.extend(out.triggers)
        result.dead_letters.extend(out.dead_letters)

    try:
        longest = max((len(m) for m in by_partition), default=0)
        for i in range(0, longest, batch):
            for p, messages in enumerate(by_partition):
                if i < len(messages):
                    collect(pipe.process(messages[i:i + batch], first_offset=i, now=0.0, partition=p))
                    bar.update(len(messages[i:i + batch]))
        collect(pipe.finish())
    finally:
        bar.close()
        pipe.close()
    _stamp_all(result.triggers, emitted_at or (lambda t: t["window"]["end"]))
    result.counters = {"/".join(map(str, k)) if isinstance(k, tuple) else k: v for k, v in pipe.counters.items()}
    return result


def _stamp_all(triggers: list[dict], stamp) -> None:
    for trig in triggers:
        trig["emitted_at"] = stamp(trig)
