"""What a loop achieved, scored on exact ground truth and on its own draws.

* Area above budget: the sum over the horizon's windows of ``max(0, L_true - budget)`` times the
  window's length in hours (loss-hours: 0.05 over budget for two hours is 0.1). It counts how
  long and how far the key was out of bounds, so a fix that comes late or half-way shows.
* Realised cost per decision: ``c_fp`` for each act the person did not want, ``c_fn`` for each
  hold they did not want, nothing for a deferral, over every decision in the horizon.
* Each change of the policy in force: the saving it promised (the advice's held-out saving, or
  its in-window point saving when unvalidated) against the saving it realised on the same
  decisions (the cost under the old policy minus under the new, over its first probation
  window: the draws are common, so this is an exact counterfactual), and whether it ever
  raised the true loss above what the old policy would have had by more than ``HARM``.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .closed_loop import KeySystem, _cost

HARM = 0.01
"""True-loss increase a change may not cause (for longer than its probation)."""


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def key_figures(system: KeySystem, budget: float) -> dict:
    """One key's true loss per window, area above budget, realised cost and each change."""
    n_w, hours = system.sim.n_windows, system.sim.window_s / 3600.0
    loss = system.true_loss()
    cost = _cost(system.decision, system.d.wants_act, system.costs)
    ends = [c["window"] for c in system.changes[1:]] + [n_w]
    return {
        "loss": [round(float(x), 6) for x in loss],
        "tau": [round(float(x), 6) for x in system.taus],
        "area": float(np.maximum(loss - budget, 0.0).sum() * hours),
        "hours_over": float((loss > budget).sum() * hours),
        "mean_loss": float(loss.mean()),
        "cost_per_decision": float(cost.mean()) if cost.size else float("nan"),
        "decisions": int(cost.size),
        "actions": dict(Counter(a["decision"] for a in system.actions)),
        "changes": [_change(system, c, end, loss) for c, end in zip(system.changes, ends)],
    }


def window_truth(systems: list[KeySystem], pane_s: float) -> dict[tuple, float]:
    """(policy_id, segment, pane) -> true loss of the decisions labelled in that pane: feedback is
    windowed by when the person judged, so a pane's loss is the weight-averaged truth of the
    windows its labelled decisions were made in (only labels the pipeline was given count)."""
    out = {}
    for s in systems:
        d, sim = s.d, s.sim
        j = s.fed(sim.start_ts + sim.n_windows * sim.window_s + s.loop.tail_s)
        j = j[~d.fb_abstain[j]]
        panes, where = np.unique(np.floor(d.f_ts[j] / pane_s).astype(np.int64), return_inverse=True)
        w = np.bincount(where, weights=d.weight[j], minlength=panes.size)
        wl = np.bincount(where, weights=d.weight[j] * s.true_loss()[d.win[d.fi[j]]], minlength=panes.size)
        out.update({(*s.key, int(p)): float(b / a) for p, a, b in zip(panes, w, wl) if a > 0})
    return out


def _change(system: KeySystem, change: dict, end: int, loss: np.ndarray) -> dict:
    hours = system.sim.window_s / 3600.0
    w0 = change["window"]
    before, after = (change["tau_before"], change["shift_before"]), (change["tau_after"], change["shift_after"])
    probation = max(1, round(system.loop.actuator.probation_s / system.sim.window_s))
    d = system.d
    idx = np.arange(d.offsets[w0], d.offsets[min(w0 + probation, system.sim.n_windows)])
    old = system.cost(idx, *before)
    realised = float((old - system.cost(idx, *after)).mean()) if idx.size else float("nan")
    excess = np.array([loss[w] - system.truth_at(w, *before)["true_loss"] for w in range(w0, end)])
    harmful = _runs(excess > HARM)
    cause = change["cause"] or {}
    out = {"at_h": w0 * hours, "cause": cause.get("decision"), "rule": cause.get("rule"),
           "tau_before": before[0], "tau_after": after[0], "shift_before": before[1], "shift_after": after[1],
           "realised_saving": realised,
           "harm_hours": max((b - a for a, b in harmful), default=0) * hours,
           "max_excess_loss": float(excess.max()) if excess.size else 0.0}
    if cause.get("decision") == "applied":
        advised = cause.get("heldout_saving")
        out.update(advised_saving=advised if advised is not None else cause.get("cost_saved"),
                   advised_saving_lo=cause.get("heldout_saving_lo"), tau_star=cause.get("tau_star"),
                   realised_at_tau_star=float((old - system.cost(idx, cause["tau_star"], before[1])).mean())
                   if idx.size else float("nan"))
    return out


def episodes(open_loss: list[float], closed_loss: list[float], budget: float, hours: float) -> list[dict]:
    """Each stretch where the open loop's true loss is over budget (a drift, or a wrong policy
    from the start): when it began, and how long the closed loop took to be back within budget
    (None: not within the horizon)."""
    o, c = np.asarray(open_loss), np.asarray(closed_loss)
    out = []
    for start, _ in _runs(o > budget):
        under = np.flatnonzero(c[start:] <= budget)
        out.append({"start_h": start * hours, "back_under_h": float(under[0]) * hours if under.size else None})
    return out


def compare(open_: dict, closed: dict, budget: float, hours: float) -> dict:
    """One key's open and closed loops side by side (figures from ``key_figures``)."""
    a_open, a_closed = open_["area"], closed["area"]
    return {
        "area_open": a_open, "area_closed": a_closed,
        "area_cut": 1.0 - a_closed / a_open if a_open > 0 else None,
        "hours_over_open": open_["hours_over"], "hours_over_closed": closed["hours_over"],
        "mean_loss_open": open_["mean_loss"], "mean_loss_closed": closed["mean_loss"],
        "cost_open": open_["cost_per_decision"], "cost_closed": closed["cost_per_decision"],
        "episodes": episodes(open_["loss"], closed["loss"], budget, hours),
        "loss_unchanged": open_["loss"] == closed["loss"],
    }
