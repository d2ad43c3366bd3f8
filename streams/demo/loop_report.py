"""The demo report's closed-loop sections: open against closed loop per scenario, what each
change promised and realised, the ablation that re-runs the loop with one part off, and
loop.png (true loss over time, open against closed). Every figure is read from the summary,
so the words always say what was measured."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from streams.demo.report import (
    _esc,
    _figure,
    _fmt,
    _grid,
    _label,
    _legend,
    _save,
    _table,
)
from streams.simulate.loop_figures import HARM

CHANGE_STYLE = {"applied": "tab:orange", "retrained": "tab:red", "reverted": "purple", "model_reverted": "purple",
                "rolled_back": "black"}


def loop_sections(out: Path, summary: dict) -> list[str]:
    """The sections (HTML) and loop.png, or nothing if the summary has no loop."""
    loop = summary.get("loop")
    if not loop:
        return []
    plot_loop(Path(out) / "loop.png", loop)
    return [_loop_section(loop), _changes_section(loop), _ablation_section(summary)]


def _hours(x) -> str:
    return "never" if x is None else f"{x:.2f}"


def _rules(counts: dict) -> str:
    return ", ".join(f"{r} {n}" for r, n in counts.items() if n) or "none"


def _loop_section(loop: dict) -> str:
    rows = []
    for r in loop["by_scenario"]:
        cut = r["area_cut"]
        back = "; ".join(f"from {e['start_h']:.2f} h: {_hours(e['back_under_h'])}" for e in r["episodes"]) or "–"
        rows.append([r["scenario"], r["area_open"], r["area_closed"], "–" if cut is None else f"{100 * cut:.0f}%",
                     back, f"{r['hours_over_open']:.2f} / {r['hours_over_closed']:.2f}", r["cost_open"],
                     r["cost_closed"], _rules(r["triggers_open"]), _rules(r["triggers_closed"]),
                     ", ".join(f"{k} {v}" for k, v in sorted(r["actions"].items())) or "none"])
    unchanged = [r["scenario"] for r in loop["by_scenario"] if r["loss_unchanged"] and r["triggers_unchanged"]]
    return (
        "<h2>Closing the loop</h2><p>The same draws (scores, people, feedback and its timing) twice: the open "
        "loop, where nothing acts on a trigger (the generator's events, the run above), and the closed loop, where "
        "threshold_adjust moves the threshold through the production actuator's guard rails (held-out validation, "
        "max step, cool-down, probation and revert), a retrain re-maps the model's scores 2 h after its trigger "
        "from a logistic fit to the labels received on the last hour's decisions (not deployed when the fit's 99% "
        "interval holds the current model's point), and rollback restores the last validated policy. Ground "
        f"truth follows the policy in force, at {loop['decisions_per_window']} decisions per "
        f"{60 * loop['window_h']:g}-minute window. <em>Area above budget</em> is the sum over windows of "
        f"max(0, true loss − {_fmt(loop['l_budget'])}) × window length in hours (loss-hours). <em>Back under "
        "budget</em>: hours from the start of each stretch the open loop spends over budget until the closed "
        "loop's true loss is first within it. Realised cost per decision: c_fp per act the person did not want "
        "plus c_fn per hold they did not want.</p>"
        + _table(["scenario", "area open", "area closed", "cut", "back under budget (h)",
                  "hours over budget open / closed", "cost per decision open", "cost per decision closed",
                  "triggers open", "triggers closed", "actions (closed)"], rows, {1, 2, 3, 6, 7})
        + _figure("loop.png", "True loss per window, open loop (grey) against closed loop (blue), with the budget "
                  "(dashed green) and each change of the closed loop's policy (dotted: threshold applied orange, "
                  "retrain red, revert purple, rollback black).")
        + f"<p>Unchanged by the loop (same true loss and the same triggers inside the horizon): "
        f"{_esc(', '.join(unchanged) or 'none')}. Fidelity on each run's own truth: open loop "
        f"{_esc(_fmt(loop['fidelity_open']))}, closed loop {_esc(_fmt(loop['fidelity_closed']))}.</p>")


def _changes_section(loop: dict) -> str:
    rows = []
    for r in loop["by_scenario"]:
        for ch in r["changes"]:
            rows.append([r["scenario"], ch["at_h"], ch["cause"], f"{ch['tau_before']:.3f} → {ch['tau_after']:.3f}",
                         f"{ch['shift_before']:+.3f} → {ch['shift_after']:+.3f}", ch.get("tau_star"),
                         ch.get("advised_saving"), ch.get("advised_saving_lo"), ch["realised_saving"],
                         ch.get("realised_at_tau_star"), ch["harm_hours"]])
    if not rows:
        return "<h3>Changes</h3><p>The closed loop changed no policy.</p>"
    return (
        "<h3>What each change promised and realised</h3><p>Every change of the policy in force in the closed "
        "loop: applied threshold advice (its held-out saving per labelled decision, and that saving's lower "
        "bound), actuator reverts, retrains (the model's score shift) and rollbacks. Realised: the cost per "
        "decision under the old policy minus under the new one, on the same decisions of the change's first "
        "probation window (common random numbers make this an exact counterfactual); at τ*: had the whole "
        "advice been taken rather than one max step. Harm: the longest stretch, in hours, in which the true loss "
        f"was more than {HARM:g} above what the old policy would have had.</p>"
        + _table(["scenario", "at (h)", "cause", "τ", "model shift", "τ*", "advised saving", "advised bound",
                  "realised saving", "realised at τ*", "harm (h)"], rows, {1, 5, 6, 7, 8, 9, 10})
        + f"<p>{loop['validated_changes']} validated threshold changes; the longest harm of any of them: "
        f"{loop['longest_harm_h_validated']:.2f} h (of any change: {loop['longest_harm_h_any']:.2f} h).</p>")


def _ablation_section(summary: dict) -> str:
    rows = summary.get("ablation") or []
    if not rows:
        return ""
    setup = summary.get("ablation_setup", {})
    names = list(rows[0]["area"])
    table = []
    for r in rows:
        acts = r["actions"]
        table.append([r["variant"], r["area_total"], *[r["area"].get(k) for k in names],
                      acts.get("applied", 0), acts.get("reverted", 0), acts.get("retrained", 0), r["harm_hours"],
                      r.get("fidelity"), r.get("false_alarms"), r.get("detection_delay_windows"),
                      (r.get("triggers_by_rule") or {}).get("monitor_degraded")])
    n = len(names)
    items = "".join(f"<li>{_esc(f)}</li>" for f in summary.get("ablation_findings") or [])
    return (
        "<h2>Ablation (closed loop)</h2><p>The closed loop again with one part switched off; each variant re-runs "
        f"the loop on the same draws, at {_esc(setup.get('decisions_per_window'))} decisions per window (a quarter "
        "of the comparison above, so that all of it runs in a minute on two cores), with the sparse ambiguous key "
        "added (a tenth of the traffic, people less decided: its threshold is right and any advice on it is noise). "
        "Fidelity, false alarms and detection delay are scored on each variant's own truth.</p>"
        + _table(["variant", "area (all)", *names, "threshold changes", "reverted", "retrains", "harm (h)",
                  "fidelity", "false alarms", "detection delay (windows)", "monitor_degraded"], table,
                 set(range(1, n + 10)))
        + f"<p>What each part buys, measured (area in loss-hours):</p><ul>{items}</ul>"
        + _validation_text(summary.get("validation") or {}))


def _validation_text(v: dict) -> str:
    if not v:
        return ""
    parts = [f"{_esc(k)}: area {x['area_without']:.3f} without validation against {x['area_full']:.3f} with it, "
             f"mean true loss {x['mean_loss_without']:.4f} against {x['mean_loss_full']:.4f}"
             for k, x in v["by_scenario"].items()]
    if v["worse_without_validation"]:
        verdict = ("Acting on a window's own point saving did worse where the advice is noise: " + "; ".join(parts)
                   + ".")
    else:
        verdict = ("Acting without validation could not be shown to do worse here: " + "; ".join(parts) + ".")
    return (f"<p>{verdict} Over all keys: {v['total_area_without']:.3f} loss-hours without validation, "
            f"{v['total_area_full']:.3f} with it (validation waits for held-out labels, so on a real drift it acts "
            "later).</p>")


def plot_loop(path: Path, loop: dict) -> None:
    """True loss per window, open (grey) against closed loop (blue), the budget, and each change."""
    rows = loop["by_scenario"]
    if not rows:
        fig = Figure(figsize=(6, 2.5))
        fig.text(0.5, 0.5, "no scenarios", ha="center", va="center")
        _save(fig, path)
        return
    fig, axes = _grid(len(rows))
    hours, budget = loop["window_h"], loop["l_budget"]
    for ax, r in zip(axes, rows):
        x = (np.arange(len(r["loss_open"])) + 1) * hours
        ax.plot(x, r["loss_open"], color="0.55", lw=1.4)
        ax.plot(x, r["loss_closed"], color="tab:blue", lw=1.4)
        ax.axhline(budget, color="tab:green", ls="--", lw=1)
        for ch in r["changes"]:
            ax.axvline(ch["at_h"], color=CHANGE_STYLE.get(ch["cause"], "grey"), ls=":", lw=1.2)
        top = max(max(r["loss_open"]), max(r["loss_closed"]), budget)
        ax.set_ylim(0, min(1.0, top * 1.15 + 0.01))
        cut = r["area_cut"]
        ax.set_title(_label(r["scenario"] + ("" if cut is None or math.isnan(cut) else f"  (area cut {100 * cut:.0f}%)")),
                     fontsize=10)
        ax.set_ylabel("true loss")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color="0.55", label="open loop"), Line2D([], [], color="tab:blue", label="closed loop"),
               Line2D([], [], color="tab:green", ls="--", label="budget")]
    handles += [Line2D([], [], color=c, ls=":", label=k.replace("_", " ")) for k, c in CHANGE_STYLE.items()
                if k != "model_reverted"]
    _legend(fig, handles, ncols=4)
    _save(fig, path)
