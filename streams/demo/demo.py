"""`npo demo` and `npo replay`: run the pipeline in process and write its outputs to a directory.

Outputs: triggers.jsonl (trigger events), windows.csv (per-window
statistics), dead_letters.jsonl, summary.json (headline figures), and
report.html with its PNG plots.
"""
from __future__ import annotations

import csv
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
from streams.demo.evaluate import scenario_outcomes, score_run
from streams.demo.loop import (
    LOOP_ABLATIONS,
    ablation_rows,
    comparison,
    findings,
    horizon_end,
    loop_config,
    loop_variant,
    open_figures,
    run_summary,
    study_sim,
    validation_verdict,
    variant,
)
from streams.demo.loop_report import loop_sections
from streams.demo.report import write_report
from streams.demo.runner import RunResult, run_pipeline
from streams.simulate import SimConfig
from streams.simulate.closed_loop import OPEN, run_loop
from streams.simulate.loop_figures import window_truth


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


def _timed(fn, *args):
    """``fn(*args)`` and what it took in whichever process runs it: wall and CPU seconds (on a
    shared machine the CPU seconds say what it costs; the wall seconds, what it waited)."""
    started, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, {"wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(time.process_time() - cpu, 1)}


def run_demo(seed: int = 7, out: str | Path = "npo-demo", config: MonitorConfig | None = None,
             sim: SimConfig | None = None, progress: bool = True, ablations: bool = True) -> dict:
    """The paper's simulation artifact: scenarios with known truth through the real operators,
    in the open loop (nothing acts: the generator's events, the headline) and in the closed loop
    (the triggers act on the simulated system), on the same draws.

    The closed loop and the ablations run in two worker processes beside the open loop; the
    ablations at a quarter of the decisions per window (see streams/demo/loop.py).
    """
    started, cpu = time.perf_counter(), _cpu_seconds()
    config = config or MonitorConfig()
    sim = sim or SimConfig(seed=seed, l_budget=config.stats.l_budget)
    study = study_sim(sim)
    pane_s, budget = config.windows.tumbling_s, config.stats.l_budget
    # spawn, not fork: a forked child inherits RocksDB's and other libraries' threads mid-state and can hang
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        closed_f = pool.submit(_timed, loop_variant, sim, config, loop_config(config))
        variants = {name: pool.submit(_timed, loop_variant, study, variant(config, change), loop_config(config, **lc))
                    for name, change, lc in (LOOP_ABLATIONS if ablations else ())}
        result, open_s = _timed(run_loop, sim, config, OPEN, "demo: open loop" if progress else None)
        truth_w = window_truth(result.systems, pane_s)
        headline = score_run(result.windows, result.triggers, truth_w, budget, pane_s, horizon_end(sim),
                             config.triggers.p_fire)
        open_summary = run_summary(result, config, truth_w)
        conv = convergence(seed, config.stats)
        study_open = open_figures(study, config) if ablations else {}
        closed, closed_s = closed_f.result()
        done = {name: f.result() for name, f in variants.items()}
    for row in result.windows:
        if row["kind"] == "tumbling":
            row["true_loss"] = truth_w.get((row["policy_id"], row["segment"], round(row["start"] / pane_s)), math.nan)
    rows = ablation_rows(study, {name: r for name, (r, _) in done.items()}, study_open, config) if ablations else []
    summary = {
        "seed": seed, "events": len(result.events), "messages": result.messages, "config_version": config.version,
        "headline": headline, "loop": comparison(open_summary, closed, sim, config),
        "ablation": rows, "ablation_findings": findings(rows), "validation": validation_verdict(rows),
        "ablation_setup": {"decisions_per_window": study.decisions_per_window, "scenarios": list(study.scenarios)},
        "convergence": conv, "counters": result.counters,
        "scenarios": list(sim.scenarios), "l_budget": budget,
        "by_scenario": scenario_outcomes(result.truth, result.windows, result.triggers, config.triggers),
        "timings": {"open loop (main process)": open_s, "closed loop": closed_s,
                    **{f"ablation: {name}": secs for name, (_, secs) in done.items()}},
    }
    out = Path(out)
    _write_outputs(out, result, summary)
    write_report(out, result.windows, result.triggers, summary, config, extra=loop_sections(out, summary))
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["cpu_seconds"] = round(_cpu_seconds() - cpu, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")  # with the times
    return summary


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the worker processes)."""
    try:
        import resource
    except ImportError:  # not on Unix: this process only
        return time.process_time()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
