"""Score a run against the simulator's ground truth: false alarms, detection delay, fidelity.

Feedback is windowed by its own event time, so the loss a window estimates
is that of the decisions its labels refer to. The true loss of a window is
therefore the weight-averaged true loss of those decisions, taken from the
simulator's exact per-decision-window truth.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


def window_truth(events: list[dict], truth: list[dict], pane_s: float) -> dict[tuple, float]:
    """(policy_id, segment, pane) -> true loss of the decisions labelled in that pane."""
    by_window = {(t["policy_id"], t["segment"], t["window_start"]): t["true_loss"] for t in truth}
    sim_window = truth[1]["window_end"] - truth[1]["window_start"] if len(truth) > 1 else pane_s
    decision_loss = {}
    for e in events:
        if e["type"] == "score":
            start = e["ts"] - (e["ts"] - truth[0]["window_start"]) % sim_window
            decision_loss[e["scenario_id"]] = (e["policy_id"], e["segment"],
                                               by_window.get((e["policy_id"], e["segment"], start), math.nan))
    acc: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
    seen = set()
    for e in events:
        if e["type"] != "feedback" or e["kind"] == "abstain" or e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        ctx = decision_loss.get(e["scenario_id"])
        if ctx is None or math.isnan(ctx[2]):
            continue
        a = acc[(ctx[0], ctx[1], math.floor(e["ts"] / pane_s))]
        a[0] += e.get("weight", 1.0)
        a[1] += e.get("weight", 1.0) * ctx[2]
    return {k: wl / w for k, (w, wl) in acc.items() if w > 0}


def score_run(windows: list[dict], triggers: list[dict], truth_w: dict[tuple, float], l_budget: float,
              pane_s: float) -> dict:
    """Headline figures of one run. A retrain trigger is a false alarm if its window's true loss
    is within budget; the delay is counted in windows from the first over-budget window."""
    tumbling = [w for w in windows if w["kind"] == "tumbling"]
    agree, n, coverage = 0, 0, []
    onset: dict[tuple, int] = {}
    for w in tumbling:
        key, pane = (w["policy_id"], w["segment"]), round(w["start"] / pane_s)
        t = truth_w.get((*key, pane))
        if not math.isnan(w["coverage"]):
            coverage.append(w["coverage"])
        if t is None:
            continue
        over = t > l_budget
        agree += int(bool(w.get("alarmed", 0.0)) == over)
        n += 1
        if over and key not in onset:
            onset[key] = pane
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
    return {
        "windows_scored": n,
        "fidelity": agree / n if n else math.nan,
        "false_alarms": false_alarms,
        "retrain_triggers": sum(t["rule"] == "retrain" for t in triggers),
        "detection_delay_windows": float(np.mean(list(delays.values()))) if delays else math.nan,
        "delay_by_key": {f"{k[0]}/{k[1]}": d for k, d in sorted(delays.items())},
        "detections": len(delays),
        "missed_detections": len(missed),
        "mean_coverage": float(np.mean(coverage)) if coverage else math.nan,
        "triggers_by_rule": {r: sum(t["rule"] == r for t in triggers) for r in
                             ("retrain", "threshold_adjust", "rollback", "monitor_degraded")},
    }
