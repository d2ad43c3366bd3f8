"""The closed loop in `npo demo`: the open and the closed loop on the same draws, and the
closed loop with one part switched off at a time (each re-runs the loop: a part that acts
changes what happens next, so nothing can be re-scored from another run).

The ablations run at a quarter of the decisions per window of the main comparison (100 by
default), so that all of it fits in a minute on two cores; they add the sparse ambiguous study
key, where advice is noise, to show what held-out validation buys.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter

from streams.actuator.decide import ActuatorConfig
from streams.config import MonitorConfig
from streams.demo.evaluate import score_run
from streams.operators.triggers import RULES
from streams.simulate import SimConfig
from streams.simulate.closed_loop import LoopConfig, LoopRun, decisions_only, run_loop
from streams.simulate.loop_figures import compare, key_figures, window_truth

#: (name, monitor change, loop change). "without validation": advice stands on the window's own
#: point saving (the rule's validate_advice off, and that saving handed to the actuator as its bound).
LOOP_ABLATIONS = (
    ("full loop", {}, {}),
    ("without threshold tuning", {"triggers": {"threshold_tuning": False}}, {}),
    ("without validation", {"triggers": {"validate_advice": False}}, {"unvalidated_advice": True}),
    ("without retraining", {}, {"act_on": ("threshold_adjust", "rollback")}),
    ("naive retrain rule", {"triggers": {"retrain_rule": "naive"}}, {}),
    ("without abstention handling", {"abstention_handling": False}, {}),
    ("without audit feedback", {"triggers": {"use_audit": False}}, {"drop_audit": True}),
)
STUDY_KEYS = ("sparse_ambiguous",)


def variant(config: MonitorConfig, change: dict) -> MonitorConfig:
    """``config`` with a variant's changes (a ``triggers`` table, and top-level fields)."""
    triggers = dataclasses.replace(config.triggers, **change.get("triggers", {}))
    return dataclasses.replace(config, triggers=triggers, **{k: v for k, v in change.items() if k != "triggers"})


def loop_config(config: MonitorConfig, **change) -> LoopConfig:
    """The demo's loop: the actuator's default guard rails, its saving bar the monitor's own
    (as the README asks of a deployment), a retrain landing 2 h after its trigger."""
    return LoopConfig(actuator=ActuatorConfig(min_saving=config.triggers.min_cost_saving), **change)


def study_sim(sim: SimConfig) -> SimConfig:
    """The ablations' simulation: a quarter of the decisions per window, plus the study keys."""
    return dataclasses.replace(sim, decisions_per_window=max(1, sim.decisions_per_window // 4),
                               scenarios=tuple(sim.scenarios) + tuple(k for k in STUDY_KEYS if k not in sim.scenarios))


def horizon_end(sim: SimConfig) -> float:
    return sim.start_ts + sim.n_windows * sim.window_s


def run_summary(run: LoopRun, config: MonitorConfig, truth_w: dict | None = None) -> dict:
    """What a loop run achieved, in plain data (it crosses processes): per scenario its figures
    and the triggers inside the horizon, and the run's fidelity scored on its own truth
    (``truth_w``: the run's ``window_truth``, if already computed)."""
    sim, budget, pane_s = run.config, config.stats.l_budget, config.windows.tumbling_s
    end = horizon_end(sim)
    by_scenario = {}
    for s in run.systems:
        figs = key_figures(s, budget)
        fired = Counter(t["rule"] for t in run.triggers
                        if (t["policy_id"], t["segment"]) == s.key and t["window"]["end"] <= end)
        figs.update(key=f"{s.key[0]}/{s.key[1]}", triggers={r: fired.get(r, 0) for r in RULES})
        by_scenario[s.sc.name] = figs
    truth_w = window_truth(run.systems, pane_s) if truth_w is None else truth_w
    score = score_run(run.windows, run.triggers, truth_w, budget, pane_s, end, config.triggers.p_fire)
    return {"by_scenario": by_scenario, "score": score}


def loop_variant(sim: SimConfig, config: MonitorConfig, loop: LoopConfig) -> dict:
    """One loop run, summarised (a worker process runs this)."""
    return run_summary(run_loop(sim, config, loop), config)


def open_figures(sim: SimConfig, config: MonitorConfig) -> dict:
    """The open loop's figures that need no monitor (true loss, cost), per scenario."""
    return {s.sc.name: key_figures(s, config.stats.l_budget) for s in decisions_only(sim, config)}


def comparison(open_: dict, closed: dict, sim: SimConfig, config: MonitorConfig) -> dict:
    """Open against closed loop on the same draws: per scenario, and the harm test on changes."""
    budget, hours = config.stats.l_budget, sim.window_s / 3600.0
    rows = []
    for name, c in closed["by_scenario"].items():
        o = open_["by_scenario"][name]
        rows.append({"scenario": name, "key": c["key"], **compare(o, c, budget, hours),
                     "triggers_open": o["triggers"], "triggers_closed": c["triggers"],
                     "triggers_unchanged": o["triggers"] == c["triggers"], "actions": c["actions"],
                     "changes": c["changes"], "loss_open": o["loss"], "loss_closed": c["loss"],
                     "tau_closed": c["tau"]})
    changes = [ch for r in rows for ch in r["changes"]]
    validated = [ch for ch in changes if ch["cause"] == "applied"]
    return {
        "decisions_per_window": sim.decisions_per_window, "window_h": hours, "l_budget": budget,
        "by_scenario": rows,
        "fidelity_open": open_["score"]["fidelity"], "fidelity_closed": closed["score"]["fidelity"],
        "score_closed": closed["score"],
        "validated_changes": len(validated),
        "longest_harm_h_validated": max((ch["harm_hours"] for ch in validated), default=0.0),
        "longest_harm_h_any": max((ch["harm_hours"] for ch in changes), default=0.0),
    }


def ablation_rows(study: SimConfig, results: dict[str, dict], open_: dict, config: MonitorConfig) -> list[dict]:
    """One row per variant (the open loop first): true-loss area and cost per scenario, the
    actions taken, the harm of its changes, and the monitor's scores on its own truth."""
    rows = [{"variant": "open loop (nothing acts)", "area_total": sum(f["area"] for f in open_.values()),
             "area": {k: f["area"] for k, f in open_.items()}, "mean_loss": {k: f["mean_loss"] for k, f in open_.items()},
             "cost": {k: f["cost_per_decision"] for k, f in open_.items()}, "actions": {}, "harm_hours": 0.0}]
    for name, _, _ in LOOP_ABLATIONS:
        res = results.get(name)
        if res is None:
            continue
        by = res["by_scenario"]
        actions = sum((Counter(f["actions"]) for f in by.values()), Counter())
        rows.append({"variant": name, **res["score"], "area_total": sum(f["area"] for f in by.values()),
                     "area": {k: f["area"] for k, f in by.items()}, "mean_loss": {k: f["mean_loss"] for k, f in by.items()},
                     "cost": {k: f["cost_per_decision"] for k, f in by.items()}, "actions": dict(actions),
                     "harm_hours": max((ch["harm_hours"] for f in by.values() for ch in f["changes"]), default=0.0)})
    return rows


def findings(rows: list[dict], min_area: float = 0.05) -> list[str]:
    """What each part buys, in words, from the measured rows: each variant against the full loop
    (total area, the scenarios it moves by at least ``min_area`` loss-hours, retrains, harm)."""
    full = next((r for r in rows if r["variant"] == "full loop"), None)
    if full is None:
        return []
    out = []
    for r in rows:
        if r is full:
            continue
        diff = r["area_total"] - full["area_total"]
        moved = sorted(((k, a - full["area"].get(k, 0.0)) for k, a in r["area"].items()
                        if abs(a - full["area"].get(k, 0.0)) >= min_area), key=lambda x: -abs(x[1]))
        where = "; ".join(f"{k} {d:+.2f}" for k, d in moved) or f"no scenario moves by {min_area:g} or more"
        verdict = ("worse than the full loop" if diff > min_area else "better than the full loop" if diff < -min_area
                   else "about the same as the full loop")
        retrains = r["actions"].get("retrained", 0), full["actions"].get("retrained", 0)
        extra = f"; retrains {retrains[0]} (full loop {retrains[1]})" if retrains[0] != retrains[1] else ""
        harm = (f"; a change held the true loss above its predecessor's for {r['harm_hours']:.1f} h"
                if r["harm_hours"] > 0 else "")
        out.append(f"{r['variant']}: true-loss area {r['area_total']:.2f} loss-hours against "
                   f"{full['area_total']:.2f} ({diff:+.2f}, {verdict}): {where}{extra}{harm}.")
    return out


def validation_verdict(rows: list[dict], keys=STUDY_KEYS) -> dict:
    """Whether acting without held-out validation did worse than the full loop where advice is
    noise (the study keys), with the figures."""
    full = next((r for r in rows if r["variant"] == "full loop"), None)
    noval = next((r for r in rows if r["variant"] == "without validation"), None)
    if full is None or noval is None:
        return {}
    out = {k: {"area_full": full["area"].get(k, math.nan), "area_without": noval["area"].get(k, math.nan),
               "mean_loss_full": full["mean_loss"].get(k, math.nan),
               "mean_loss_without": noval["mean_loss"].get(k, math.nan)} for k in keys}
    worse = [k for k, v in out.items() if v["area_without"] > v["area_full"] or v["mean_loss_without"] >
             v["mean_loss_full"] + 1e-9]
    return {"by_scenario": out, "worse_without_validation": worse,
            "total_area_full": full["area_total"], "total_area_without": noval["area_total"]}
