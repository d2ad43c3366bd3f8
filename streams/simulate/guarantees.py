"""What each trigger rule promises, measured: false alarms at the worst in-control case and
detection delays, by Monte-Carlo simulation of the rules' own detectors (`npo guarantees`).

Every rule's detector is built exactly as `TriggerEvaluator` builds it, from the same
configuration, and run by `kernels.sequential.first_alarms` over many independent
streams of 5-minute windows: the false-alarm rate within the horizon is measured at
the boundary of the in-control region (the loss exactly at the budget or ceiling,
coverage exactly at its floor, abstention exactly at its ceiling, a channel that
agrees with the audits), and the delay at several out-of-control levels, counted in
windows from a detector at its start (a change right after an alarm or a re-arm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kernels.sequential import ANY_WEIGHTS, UNIT_WEIGHTS, alarm_summary, first_alarms
from streams.config import MonitorConfig
from streams.operators.triggers import TriggerEvaluator


@dataclass(frozen=True)
class Traffic:
    """Per 5-minute window: labels, decisions, feedback events and discordant audit pairs."""

    labels: int = 100
    decisions: int = 250
    feedback: int = 100
    pairs: int = 2


def _detectors(config: MonitorConfig, partitions: int):
    ev = TriggerEvaluator(config.triggers, "guarantees", config.windows.tumbling_s, config.layout, config.stats,
                          partitions=partitions)
    return ev.new_detectors(), ev.thresholds


def _run(detector, rate, windows, n, runs, seed, **kw) -> np.ndarray:
    return first_alarms(detector.p0, np.array(detector.p1), detector.log_threshold, np.full(windows, rate), n, runs,
                        seed, **kw)


def measure(config: MonitorConfig = MonitorConfig(), runs: int = 400, seed: int = 0, traffic: Traffic = Traffic(),
            partitions: int = 1, looks: int = 5, delay_runs: int | None = None) -> list[dict]:
    """One row per (rule, condition): what was simulated and what it gave.

    `looks`: how often the rollback rule looks at each window as it fills (every minute
    of a 5-minute window by default), on each of `partitions` partitions.
    """
    t = config.triggers
    horizon = math.ceil(t.horizon_days * 86_400.0 / config.windows.tumbling_s)
    det, thresholds = _detectors(config, partitions)
    delay_runs = delay_runs or runs
    rows = []

    def row(rule, condition, kind, first, window_count, bound=None, **extra):
        rows.append({"rule": rule, "condition": condition, "kind": kind, "bound": bound,
                     **alarm_summary(first, window_count), **extra})

    fa = dict(bound=t.alpha)
    for weights, name in ((UNIT_WEIGHTS, "unit weights"), (ANY_WEIGHTS, "weights drawn from (0, 1000]")):
        row("retrain", f"loss = budget {t.l_budget}, {name}", "false alarm",
            _run(det.retrain, t.l_budget, horizon, traffic.labels, runs, seed + weights, weight_mode=weights),
            horizon, **fa)
    for loss in (0.12, 0.13, 0.15, 0.20):
        window_count = 20 * horizon // 30  # delays are measured over up to 20 days
        row("retrain", f"loss = {loss}", "delay",
            _run(det.retrain, loss, window_count, traffic.labels, delay_runs, seed + int(loss * 1000)), window_count)
    row("rollback", f"loss = ceiling {t.l_hard}, looked at {looks}x a window", "false alarm",
        _run(det.rollback, t.l_hard, horizon, traffic.labels, runs, seed + 7, weight_mode=ANY_WEIGHTS, looks=looks),
        horizon, **fa)
    for loss in (t.l_hard + 0.05, t.l_hard + 0.10, t.l_hard + 0.20):
        row("rollback", f"loss = {loss:.2f}", "delay",
            _run(det.rollback, loss, horizon, traffic.labels, delay_runs, seed + int(loss * 1000), looks=looks), horizon)
    # monitor_degraded: four detectors share alpha; a healthy key is at every one's boundary
    parts = [
        ("coverage", t.c_min, traffic.decisions, dict(poisson=True)),
        ("abstention", t.a_max, traffic.feedback, {}),
        ("under_reports", 0.5, traffic.pairs, {}),
        ("over_reports", 0.5, traffic.pairs, {}),
    ]
    firsts = [_run(getattr(det, name), rate, horizon, n, runs, seed + 11 + k, **kw)
              for k, (name, rate, n, kw) in enumerate(parts)]
    any_first = np.where(np.all([f < 0 for f in firsts], axis=0), -1,
                         np.min([np.where(f < 0, horizon, f) for f in firsts], axis=0))
    row("monitor_degraded", f"healthy key at every boundary: coverage {t.c_min}, abstention {t.a_max}, "
        "a channel that agrees with audits (any loss)", "false alarm", any_first, horizon, **fa)
    scenarios = [
        ("coverage", "feedback drought: coverage 0.02", 0.02, traffic.decisions, dict(poisson=True)),
        ("abstention", "abstention spike: abstention 0.50", 0.50, traffic.feedback, {}),
        ("under_reports", f"biased channel: {traffic.pairs} discordant audit pairs a window, "
         "the channel likes where audits override in 95% of them", 0.95, traffic.pairs, {}),
    ]
    for k, (name, condition, rate, n, kw) in enumerate(scenarios):
        row("monitor_degraded", condition, "delay", _run(getattr(det, name), rate, horizon, n, delay_runs,
                                                          seed + 21 + k, **kw), horizon)
    for r in rows:
        r["horizon_windows"] = horizon
        r["threshold"] = thresholds["degraded" if r["rule"] == "monitor_degraded" else r["rule"]]
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table (the README's "What each trigger promises")."""
    lines = ["| rule | condition | measured | guarantee |", "|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "false alarm":
            measured = f"P(alarm in 30 days) = {r['alarm_rate']:.4f} ± {r['alarm_rate_se']:.4f}"
            bound = f"≤ {r['bound']}"
        else:
            measured = (f"mean delay {r['mean_delay']:.1f} ± {r['mean_delay_se']:.1f} windows "
                        f"({r['alarm_rate']:.0%} detected)")
            bound = ""
        lines.append(f"| {r['rule']} | {r['condition']} | {measured} | {bound} |")
    runs = rows[0]["runs"] if rows else 0
    lines.append(f"\n{runs} simulated runs a false-alarm row (± one Monte-Carlo standard error).")
    return "\n".join(lines)
