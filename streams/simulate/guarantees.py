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

from kernels.layout import LAG_PANES
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
        if name == "coverage":  # a decision pane is read once its feedback had LAG_PANES panes to come
            rows[-1]["mean_delay"] += LAG_PANES - 1
            rows[-1]["condition"] += f" (each pane read {LAG_PANES - 1} panes later)"
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


def threshold_advice(config: MonitorConfig = MonitorConfig(), days: int = 30, runs: int = 4, seed: int = 0,
                     labels: int = 100) -> list[dict]:
    """threshold_adjust through the real rule: advice per day, and hours until the first.

    Scores are uniform and calibrated (a person wants act with probability s), so with equal
    costs the best threshold is 0.5 and moving from tau to 0.5 saves `(tau - 0.5)^2` a labelled
    decision. Each 5-minute pane adds `labels` decisions taken at `tau`, each with its label,
    through the kernels; the rule reads the hourly hopping windows as the worker does.
    """
    from kernels.batch import FeedbackBatch, ScoreBatch, apply
    from kernels.derive import derive
    from streams.operators.aggregate import WindowResult

    spec, layout, params = config.windows, config.layout, config.stats
    taus = (0.5, 0.6, 0.8)
    # every (tau, run) is a key of its own, so each window is one call of the kernels for all
    sims = [(tau, run) for tau in taus for run in range(runs)]
    rngs = [np.random.default_rng([seed, run, int(tau * 100)]) for tau, run in sims]
    keys = [(f"tau={tau}", f"run={run}") for tau, run in sims]
    ev = TriggerEvaluator(config.triggers, "advice", spec.tumbling_s, layout, params)
    slot = np.repeat(np.arange(len(sims)), labels)
    tau_of = np.repeat([tau for tau, _ in sims], labels)
    zero = np.zeros(len(slot), np.int64)
    panes = np.zeros((spec.hop_panes, len(sims), layout.width))
    advice, firsts = np.zeros(len(sims), np.int64), [None] * len(sims)
    for pane in range(days * 86_400 // int(spec.tumbling_s)):
        draws = [(rng.random(labels), rng.random(labels)) for rng in rngs]
        s = np.concatenate([d[0] for d in draws])
        wants_act = np.concatenate([d[1] for d in draws]) < s
        acted = s >= tau_of
        kind = np.where(wants_act == acted, 0, 1).astype(np.int8)  # like, or override
        rows_now = panes[pane % spec.hop_panes]
        rows_now[:] = 0.0
        apply(rows_now, ScoreBatch(slot, np.where(acted, 0, 1), tau_of),
              FeedbackBatch(slot, kind, zero, np.where(acted, 0, 1), zero, s, np.ones(len(slot))))
        if (pane + 1) % spec.advance_panes or pane + 1 < spec.hop_panes:
            continue
        first = pane + 1 - spec.hop_panes
        halves = np.zeros((len(sims), 2, layout.width))
        for p in range(first, pane + 1):
            halves[:, p % 2] += panes[p % spec.hop_panes]
        hop = halves.sum(axis=1)
        res = WindowResult("hopping", 0.0, 0.0, keys, hop, derive(hop, layout, params), pane, halves=halves)
        for t in ev.evaluate(res):
            if t["rule"] == "threshold_adjust":
                k = keys.index((t["policy_id"], t["segment"]))
                advice[k] += 1
                firsts[k] = pane + 1 if firsts[k] is None else firsts[k]
    rows = []
    for tau in taus:
        of_tau = [k for k, (t, _) in enumerate(sims) if t == tau]
        saving = (tau - 0.5) ** 2
        detected = [firsts[k] for k in of_tau if firsts[k] is not None]
        rows.append({"rule": "threshold_adjust", "tau": tau, "true_saving": saving, "runs": runs, "days": days,
                     "advice_per_day": int(advice[of_tau].sum()) / (runs * days),
                     "wrong": saving < config.triggers.min_cost_saving,
                     "first_advice_hours": float(np.mean(detected)) * spec.tumbling_s / 3600 if detected else None,
                     "runs_advised": len(detected)})
    return rows


def advice_table(rows: list[dict]) -> str:
    lines = ["| τ in force | true saving of moving to τ* = 0.5 | advice a day | first advice |", "|---|---|---|---|"]
    for r in rows:
        first = f"{r['first_advice_hours']:.1f} h ({r['runs_advised']}/{r['runs']} runs)" if r["runs_advised"] else "never"
        count = round(r["advice_per_day"] * r["runs"] * r["days"])
        lines.append(f"| {r['tau']} | {r['true_saving']:.3f}{' (below the bar: advice would be wrong)' if r['wrong'] else ''}"
                     f" | {r['advice_per_day']:.3f} ({count} in all) | {first} |")
    run_days = rows[0]["runs"] * rows[0]["days"]
    lines.append(f"\n{rows[0]['runs']} runs of {rows[0]['days']} days each ({run_days} simulated days a row), "
                 "100 labels a 5-minute window.")
    return "\n".join(lines)
