"""`npo demo` and `npo replay`: run the pipeline in process and write its outputs to a directory.

Outputs: triggers.jsonl (trigger events), windows.csv (per-window
statistics), dead_letters.jsonl, summary.json (headline figures), and
report.html with its PNG plots.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import orjson

from streams import codec
from streams.config import MonitorConfig
from streams.demo.convergence import convergence
from streams.demo.evaluate import scenario_outcomes, score_run, window_truth
from streams.demo.report import write_report
from streams.demo.runner import RunResult, encode_messages, reevaluate, run_pipeline
from streams.simulate import SimConfig, simulate

#: Variants of the monitor; rule-only changes re-run just the rules over the same windows,
#: the others re-run the whole pipeline (in a second process, beside the main run).
ABLATIONS = (
    ("full monitor (sequential rules)", {}),
    ("naive per-window trigger", {"triggers": {"retrain_rule": "naive"}}),
    ("without threshold tuning", {"triggers": {"threshold_tuning": False}}),
    ("without abstention handling", {"abstention_handling": False}),
    ("without audit feedback", {"triggers": {"use_audit": False}, "drop_audit": True}),
)


def _rules_only(change: dict) -> bool:
    return set(change) == {"triggers"}


def _variant(config: MonitorConfig, change: dict) -> MonitorConfig:
    triggers = dataclasses.replace(config.triggers, **change.get("triggers", {}))
    rest = {k: v for k, v in change.items() if k not in ("triggers", "drop_audit")}
    return dataclasses.replace(config, triggers=triggers, **rest)


def _write_outputs(out: Path, result: RunResult, summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "triggers.jsonl", "wb") as f:
        for t in result.triggers:
            f.write(orjson.dumps(t) + b"\n")
    with open(out / "dead_letters.jsonl", "wb") as f:
        for d in result.dead_letters:
            f.write(codec.encode(d) + b"\n")
    if result.windows:
        fields = list(dict.fromkeys(k for row in result.windows for k in row))
        with open(out / "windows.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(result.windows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")


def _json_default(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    return str(x)


def _rerun(messages: list[bytes], config: MonitorConfig, change: dict) -> RunResult:
    """One ablation that needs its own pass over the events (runs in a worker process); its
    windows and triggers go back to be scored against the main run's truth."""
    result = run_pipeline(messages, _variant(config, change))
    return RunResult(windows=result.windows, triggers=result.triggers)


def _score(result: RunResult, truth_w: dict, sim: SimConfig, config: MonitorConfig) -> dict:
    end = sim.start_ts + sim.n_windows * sim.window_s
    return score_run(result.windows, result.triggers, truth_w, config.stats.l_budget, config.windows.tumbling_s,
                     end, config.triggers.p_fire)


def run_demo(seed: int = 7, out: str | Path = "npo-demo", config: MonitorConfig | None = None,
             sim: SimConfig | None = None, progress: bool = True, ablations: bool = True) -> dict:
    """The paper's simulation artifact: scenarios with known truth through the real operators.

    The events are simulated and encoded once; ablations that need their own pass get the
    encoded messages (cheaper to send than to simulate again) and run beside the main run.
    """
    started = time.perf_counter()
    config = config or MonitorConfig()
    sim = sim or SimConfig(seed=seed, l_budget=config.stats.l_budget)
    pane_s, budget = config.windows.tumbling_s, config.stats.l_budget
    reruns = [(name, change) for name, change in ABLATIONS if change and not _rules_only(change)] if ablations else []
    # spawn, not fork: a forked child inherits RocksDB's and other libraries' threads mid-state and can hang
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        run = simulate(sim)
        messages = encode_messages(run.events)
        futures = {}
        for name, change in reruns:
            sent = (encode_messages([e for e in run.events if e.get("source") != "audit"])
                    if change.get("drop_audit") else messages)
            futures[name] = pool.submit(_rerun, sent, config, change)
        truth_w = window_truth(run.events, run.truth, pane_s)
        result = run_pipeline(messages, config, progress="demo: full monitor" if progress else None)
        headline = _score(result, truth_w, sim, config)
        scores = {name: _score(reevaluate(result.results, _variant(config, change)), truth_w, sim, config)
                  for name, change in ABLATIONS if ablations and change and _rules_only(change)}
        conv = convergence(seed, config.stats)
        scores.update({name: _score(f.result(), truth_w, sim, config) for name, f in futures.items()})
    for row in result.windows:
        if row["kind"] == "tumbling":
            row["true_loss"] = truth_w.get((row["policy_id"], row["segment"], round(row["start"] / pane_s)), math.nan)
    ablation_rows = [{"variant": name, **(scores[name] if change else headline)}
                     for name, change in (ABLATIONS if ablations else ())]
    summary = {
        "seed": seed, "events": len(run.events), "messages": len(messages), "config_version": config.version,
        "headline": headline, "ablation": ablation_rows, "convergence": conv, "counters": result.counters,
        "scenarios": list(sim.scenarios), "l_budget": budget,
        "by_scenario": scenario_outcomes(run.truth, result.windows, result.triggers, config.triggers),
    }
    out = Path(out)
    _write_outputs(out, result, summary)
    write_report(out, result.windows, result.triggers, summary, config)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def read_jsonl(paths: list[str | Path]) -> list[bytes]:
    """Raw lines of JSON-lines files (one event or envelope per line), blank lines skipped."""
    messages = []
    for path in paths:
        with open(path, "rb") as f:
            messages.extend(line.rstrip(b"\r\n") for line in f if line.strip())
    return messages


def run_replay(paths: list[str | Path], out: str | Path = "npo-replay", config: MonitorConfig | None = None,
               progress: bool = True) -> dict:
    """A team's own JSON-lines logs through the same pipeline, with the same outputs (no truth)."""
    config = config or MonitorConfig()
    messages = read_jsonl(paths)
    result = run_pipeline(messages, config, progress="replay" if progress else None)
    summary = {"files": [str(p) for p in paths], "messages": len(messages), "config_version": config.version,
               "counters": result.counters,
               "triggers_by_rule": {r: sum(t["rule"] == r for t in result.triggers)
                                    for r in ("retrain", "threshold_adjust", "rollback", "monitor_degraded")}}
    out = Path(out)
    _write_outputs(out, result, summary)
    write_report(out, result.windows, result.triggers, summary, config)
    return summary
