"""Score a run against the simulator's ground truth: false alarms, detection delay, fidelity.

The truth a window is scored against is that of the decisions its labels refer to
(``streams.simulate.loop_figures.window_truth``: feedback is windowed by its own event time).
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from streams.operators.triggers import RULES


def score_run(windows: list[dict], triggers: list[dict], truth_w: dict[tuple, float], l_budget: float,
              pane_s: float, end: float, p_fire: float) -> dict:
    """Headline figures of one run. A retrain trigger is a false alarm if its window's true loss
    is within budget; the delay is counted in windows from the first over-budget window.

    Fidelity P(D = T), T = 1[true loss > budget], is scored on the tumbling windows that end
    by `end` (the simulated horizon): later windows hold only the late feedback of the drain.
    Beside the monitor's D it is scored for two baselines on the same windows: never alarm
    (D = 0) and the memoryless per-window rule D = 1[p_exceed >= p_fire].
    """
    tumbling = [w for w in windows if w["kind"] == "tumbling"]
    agree = defaultdict(lambda: np.zeros(4))  # key -> windows, monitor, never alarm, per-window agreements
    coverage = []
    onset: dict[tuple, int] = {}
    for w in tumbling:
        key, pane = (w["policy_id"], w["segment"]), round(w["start"] / pane_s)
        t = truth_w.get((*key, pane))
        if not math.isnan(w["coverage"]):
            coverage.append(w["coverage"])
        if t is None:
            continue
        over = t > l_budget
        if over and key not in onset:
            onset[key] = pane
        if w["end"] <= end:
            agree[key] += (1, bool(w.get("alarmed", 0.0)) == over, not over, (w["p_exceed"] >= p_fire) == over)
    false_alarms, delays = 0, {}
    for trig in triggers:
        if trig["rule"] != "retrain":
            continue
        key, pane = (trig["policy_id"], trig["segment"]), round(trig["window"]["start"] / pane_s)
        t = truth_w.get((*key, pane), 0.0)
        if t <= l_budget:
            false_alarms += 1
        elif key in onset and key not in delays and pane >= onset[key]:
            delays[key] = pane - onset[key]
    missed = [k for k in onset if k not in delays]
    total = sum(agree.values(), np.zeros(4))
    n = int(total[0])
    return {
        "windows_scored": n,
        "fidelity": total[1] / n if n else math.nan,
        "fidelity_never_alarm": total[2] / n if n else math.nan,
        "fidelity_per_window": total[3] / n if n else math.nan,
        "fidelity_by_key": {f"{k[0]}/{k[1]}": {"windows": int(a[0]), "monitor": a[1] / a[0],
                                               "never_alarm": a[2] / a[0], "per_window": a[3] / a[0]}
                            for k, a in sorted(agree.items())},
        "false_alarms": false_alarms,
        "retrain_triggers": sum(t["rule"] == "retrain" for t in triggers),
        "detection_delay_windows": float(np.mean(list(delays.values()))) if delays else math.nan,
        "delay_by_key": {f"{k[0]}/{k[1]}": d for k, d in sorted(delays.items())},
        "detections": len(delays),
        "missed_detections": len(missed),
        "mean_coverage": float(np.mean(coverage)) if coverage else math.nan,
        "triggers_by_rule": {r: sum(t["rule"] == r for t in triggers) for r in RULES},
    }


def expected_rules(truth: list[dict], config) -> dict[str, list[str]]:
    """Scenario -> the rules its ground truth calls for somewhere in the horizon.

    retrain: true loss over budget; rollback: over the hard ceiling; threshold_adjust: the
    true cost-optimal threshold more than tau_eps from the one in force; monitor_degraded:
    coverage under c_min, abstention over a_max, or a channel that under-reports overrides.
    """
    out: dict[str, set] = defaultdict(set)
    for t in truth:
        rules = out[t["scenario"]]
        if t["true_loss"] > config.l_budget:
            rules.add("retrain")
        if t["true_loss"] > config.l_hard:
            rules.add("rollback")
        if abs(t["true_tau_star"] - t["tau"]) > config.tau_eps:
            rules.add("threshold_adjust")
        if t["coverage"] < config.c_min or t["abstention_rate"] > config.a_max or t.get("under_report", 0.0) > 0:
            rules.add("monitor_degraded")
    return {name: [r for r in RULES if r in rules] for name, rules in out.items()}


def scenario_outcomes(truth: list[dict], windows: list[dict], triggers: list[dict], config) -> list[dict]:
    """Per scenario: the rules its truth calls for, what fired (count, and the first window end
    in hours since the start), and the audit pairs its tumbling windows counted."""
    expected = expected_rules(truth, config)
    t0 = min(t["window_start"] for t in truth)
    key_of = {t["scenario"]: (t["policy_id"], t["segment"]) for t in truth}
    pairs = defaultdict(lambda: np.zeros(3))
    for w in windows:
        if w["kind"] == "tumbling":
            pairs[(w["policy_id"], w["segment"])] += [w.get(c, 0.0) for c in ("audit_pairs", "audit_pairs_b",
                                                                              "audit_pairs_c")]
    rows = []
    for name, key in key_of.items():
        fired = [t for t in triggers if (t["policy_id"], t["segment"]) == key]
        first = {r: min(t["window"]["end"] for t in fired if t["rule"] == r) for r in RULES
                 if any(t["rule"] == r for t in fired)}
        p = pairs[key]
        rows.append({
            "scenario": name, "key": f"{key[0]}/{key[1]}", "expected": expected[name],
            "triggers": {r: sum(t["rule"] == r for t in fired) for r in RULES},
            "first_hours": {r: round((e - t0) / 3600.0, 2) for r, e in first.items()},
            "missing": [r for r in expected[name] if r not in first],
            "unexpected": [r for r in first if r not in expected[name]],
            "audit_pairs": int(p[0]), "audit_pairs_b": int(p[1]), "audit_pairs_c": int(p[2]),
        })
    return rows
