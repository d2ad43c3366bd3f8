"""Derived statistics for many state rows at once (numpy and scipy.special, vectorised).

The batch version of `WindowReference.get`: same field names, same formulas,
one array per field with one entry per row.
"""
from __future__ import annotations

import numpy as np
from scipy import special

from kernels.layout import (
    ABSTAIN,
    ACT,
    AUDIT_N,
    AUDIT_W,
    AUDIT_W2,
    AUDIT_WY,
    BRIER,
    FB_ABSTAIN,
    HOLD,
    LIKE,
    N_DEC,
    N_FB,
    OVERRIDE,
    PAIR_B,
    PAIR_C,
    PAIR_N,
    TAU_SUM,
    W2_LAB,
    W_CAP,
    WY_CAP,
    YSTAR_W,
    StateLayout,
    w_kd,
)
from kernels.params import StatsParams
from kernels.reference.calibration import TIE_TOLERANCE
from kernels.reference.intervals import W2_SHIFT, z_lower, z_value


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b where b > 0, NaN elsewhere (an empty window has no rate)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.divide(a, b, out=np.full(np.broadcast(a, b).shape, np.nan), where=b > 0)


def interval(p: np.ndarray, n: np.ndarray, params: StatsParams) -> tuple[np.ndarray, np.ndarray]:
    """Wilson or Jeffreys interval for proportions `p` on effective sizes `n`; [0, 1] when empty."""
    empty = ~(n > 0) | np.isnan(p)
    n_ = np.where(empty, 1.0, n)
    p_ = np.where(empty, 0.5, p)
    if params.interval == "wilson":
        z = z_value(params.confidence)
        z2n = z * z / n_
        centre = (p_ + z2n / 2.0) / (1.0 + z2n)
        half = z / (1.0 + z2n) * np.sqrt(p_ * (1.0 - p_) / n_ + z * z / (4.0 * n_ * n_))
        lo, hi = np.maximum(0.0, centre - half), np.minimum(1.0, centre + half)
    else:
        alpha = 1.0 - params.confidence
        x = p_ * n_
        lo = special.betaincinv(x + 0.5, n_ - x + 0.5, alpha / 2.0)
        hi = special.betaincinv(x + 0.5, n_ - x + 0.5, 1.0 - alpha / 2.0)
    return np.where(empty, 0.0, lo), np.where(empty, 1.0, hi)


def effective_size(w: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """`intervals.effective_size` per row: n_eff from sum w and the sum of scaled squares."""
    ws = np.ldexp(np.asarray(w, np.float64), W2_SHIFT)
    normal = w2 >= np.finfo(np.float64).tiny
    m, e = np.frexp(ws)
    exact = m * m / np.ldexp(np.where(normal, w2, 1.0), np.where(normal, -2 * e, 0))
    lower = np.where(w > 0, np.maximum(1.0, np.ldexp(np.where(normal, 0.0, ws), 511)), 0.0)
    return np.where(normal, exact, lower)


def _tau_star(state: np.ndarray, layout: StateLayout, tau: np.ndarray, params: StatsParams):
    """tau*, the saving per labelled decision and its lower bound (`CostOptimalThreshold.get`)."""
    b = layout.n_bins
    neg = state[:, layout.hist_neg : layout.hist_neg + b]
    pos = state[:, layout.hist_pos : layout.hist_pos + b]
    zeros = np.zeros((state.shape[0], 1))
    # cost at edge j < B: c_fp * (negatives in bins >= j) + c_fn * (positives in bins < j)
    neg_above = np.cumsum(neg[:, ::-1], axis=1)[:, ::-1]
    pos_below = np.concatenate([zeros, np.cumsum(pos[:, :-1], axis=1)], axis=1)
    costs = params.c_fp * neg_above + params.c_fn * pos_below
    neg_total, pos_total = neg.sum(axis=1), pos.sum(axis=1)
    total = neg_total + pos_total
    # the decisions taken: overrides of act and of hold; deferrals cost nothing
    now = params.c_fp * state[:, w_kd(OVERRIDE, ACT)] + params.c_fn * state[:, w_kd(OVERRIDE, HOLD)]
    best = costs.min(axis=1)
    tol = TIE_TOLERANCE * (1.0 + (params.c_fp + params.c_fn) * total)
    moved = best < now - tol
    x = np.nan_to_num(tau) * b  # tau in edge units
    edges = np.arange(b)
    distance = np.where(costs <= (best + tol)[:, None], np.abs(edges[None, :] - x[:, None]), np.inf)
    j_star = np.argmin(distance, axis=1)  # the first of equal distances: the lower edge
    saved, saved_lo = _saving(state, layout, params, j_star, x, b)
    saved, saved_lo = np.where(moved, saved, 0.0), np.where(moved, saved_lo, 0.0)
    undefined = ~(total > 0) | np.isnan(tau)
    tau_star = np.where(moved, j_star / b, tau)
    return tuple(np.where(undefined, np.nan, v) for v in (tau_star, saved, saved_lo))


def _saving(state: np.ndarray, layout: StateLayout, params: StatsParams, j: np.ndarray, x: np.ndarray, k: int):
    """Saving per labelled decision of acting from edge j (per row) instead of the decisions
    taken, and its lower bound, z one-sided for `k` candidates at once (Bonferroni)."""
    b = layout.n_bins
    neg = state[:, layout.hist_neg : layout.hist_neg + b]
    pos = state[:, layout.hist_pos : layout.hist_pos + b]
    edges = np.arange(b)
    acted = edges[None, :] >= j[:, None]
    cost = params.c_fp * (neg * acted).sum(axis=1) + params.c_fn * (pos * ~acted).sum(axis=1)
    neg_total, pos_total = neg.sum(axis=1), pos.sum(axis=1)
    total = neg_total + pos_total
    now = params.c_fp * state[:, w_kd(OVERRIDE, ACT)] + params.c_fn * state[:, w_kd(OVERRIDE, HOLD)]
    saved = _div(now - cost, total)
    # second moment of the per-label saving: labels in the bins between tau and the edge and
    # deferred labels (histogram labels not on act or hold) as a full +-c
    up = j > x
    lo = np.where(up, np.floor(x), j)
    hi = np.where(up, j, np.ceil(x))
    band = (edges[None, :] >= lo[:, None]) & (edges[None, :] < hi[:, None])
    abstained_neg = neg_total - state[:, w_kd(OVERRIDE, ACT)] - state[:, w_kd(LIKE, HOLD)]
    abstained_pos = pos_total - state[:, w_kd(LIKE, ACT)] - state[:, w_kd(OVERRIDE, HOLD)]
    abstained_neg = np.where(abstained_neg > TIE_TOLERANCE * total, abstained_neg, 0.0)
    abstained_pos = np.where(abstained_pos > TIE_TOLERANCE * total, abstained_pos, 0.0)
    m2 = _div(params.c_fp**2 * ((neg * band).sum(axis=1) + abstained_neg)
              + params.c_fn**2 * ((pos * band).sum(axis=1) + abstained_pos), total)
    var = m2 - saved * saved
    var = np.where(var > TIE_TOLERANCE * m2, var, 0.0)
    n_eff = effective_size(total, state[:, W2_LAB])  # a lower bound: W2_LAB holds every label
    return saved, saved - z_lower(params.confidence, k) * np.sqrt(_div(var, n_eff))


def tau_star(state: np.ndarray, layout: StateLayout, params: StatsParams, tau: np.ndarray) -> np.ndarray:
    """Only `derive(...)["tau_star"]`, for a rule that tunes on part of a window."""
    return _tau_star(state, layout, np.asarray(tau, np.float64), params)[0]


def held_out_saving(state: np.ndarray, layout: StateLayout, params: StatsParams, tau_new: np.ndarray,
                    tau: np.ndarray, candidates: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """`CostOptimalThreshold.saving_of` per row: what acting from the edge `tau_new` would have
    saved on these labels, with a lower bound for `tau_new` chosen on other labels (z one-sided,
    Bonferroni over `candidates` bounds read at once)."""
    b = layout.n_bins
    tau_new, tau = np.asarray(tau_new, np.float64), np.asarray(tau, np.float64)
    j = np.clip(np.round(np.nan_to_num(tau_new) * b), 0, b - 1).astype(np.int64)
    saved, lo = _saving(state, layout, params, j, np.nan_to_num(tau) * b, candidates)
    undefined = np.isnan(tau_new) | np.isnan(tau) | ~(_hist_total(state, layout) > 0)
    return np.where(undefined, np.nan, saved), np.where(undefined, np.nan, lo)


def _hist_total(state: np.ndarray, layout: StateLayout) -> np.ndarray:
    return state[:, layout.hist_neg : layout.hist_neg + 2 * layout.n_bins].sum(axis=1)


def derive(state: np.ndarray, layout: StateLayout, params: StatsParams, tau: np.ndarray | None = None) -> dict:
    """Every statistic for every row of `state` (2-D), as a dict of 1-D arrays.

    `tau` (per row) defaults to the mean threshold of the row's decisions; NaN entries
    of a given `tau` fall back to that default too (a threshold set for some keys only).
    """
    if state.ndim != 2 or state.shape[1] != layout.width:
        raise ValueError(f"state must have shape (rows, {layout.width}), got {state.shape}")
    col = lambda c: state[:, c]  # noqa: E731
    n_dec = state[:, N_DEC : N_DEC + 3].sum(axis=1)
    n_fb = state[:, N_FB : N_FB + 3].sum(axis=1)
    w_like = sum(col(w_kd(LIKE, d)) for d in (ACT, HOLD, ABSTAIN))
    w_ov = {d: col(w_kd(OVERRIDE, d)) for d in (ACT, HOLD, ABSTAIN)}
    wy = w_ov[ACT] + w_ov[HOLD] + w_ov[ABSTAIN]
    w = w_like + wy
    loss = _div(wy, w)
    n_eff = effective_size(w, col(W2_LAB))
    lo, hi = interval(loss, n_eff, params)
    x = np.where(w > 0, np.nan_to_num(loss) * n_eff, 0.0)
    p_exceed = special.betainc(params.a0 + x, params.b0 + n_eff - x, params.l_budget)
    audit_loss = _div(col(AUDIT_WY), col(AUDIT_W))
    audit_neff = effective_size(col(AUDIT_W), col(AUDIT_W2))
    audit_lo, audit_hi = interval(audit_loss, audit_neff, params)
    mean_tau = _div(col(TAU_SUM), n_dec)
    tau = mean_tau if tau is None else np.broadcast_to(np.asarray(tau, dtype=np.float64), (state.shape[0],))
    tau = np.where(np.isnan(tau), mean_tau, tau)
    tau_star, cost_saved, cost_saved_lo = _tau_star(state, layout, tau, params)
    b = layout.n_bins
    pos = state[:, layout.hist_pos : layout.hist_pos + b]
    ws = state[:, layout.hist_ws : layout.hist_ws + b]
    return {
        "n_decisions": n_dec,
        "n_act": col(N_DEC + ACT),
        "n_hold": col(N_DEC + HOLD),
        "n_abstain_decisions": col(N_DEC + ABSTAIN),
        "n_feedback": n_fb,
        "n_like": col(N_FB + LIKE),
        "n_override": col(N_FB + OVERRIDE),
        "n_abstain_feedback": col(N_FB + FB_ABSTAIN),
        "n_labels": col(N_FB + LIKE) + col(N_FB + OVERRIDE),
        "weight_sum": w,
        "override_weight": wy,
        "weight_capped": col(W_CAP),
        "override_weight_capped": col(WY_CAP),
        "loss": loss,
        "loss_cost": _div(params.c_fp * w_ov[ACT] + params.c_fn * w_ov[HOLD], w),
        "loss_lo": lo,
        "loss_hi": hi,
        "n_eff": n_eff,
        "p_exceed": 1.0 - p_exceed,
        "coverage": _div(n_fb, n_dec),
        "abstention_rate": _div(col(N_FB + FB_ABSTAIN), n_fb),
        "deferral_rate": _div(col(N_DEC + ABSTAIN), n_dec),
        "brier": _div(col(BRIER), col(YSTAR_W)),
        "ece": _div(np.abs(pos - ws).sum(axis=1), col(YSTAR_W)),
        "tau": tau,
        "tau_star": tau_star,
        "cost_saved": cost_saved,
        "cost_saved_lo": cost_saved_lo,
        "audit_loss": audit_loss,
        "audit_n": col(AUDIT_N),
        "audit_lo": audit_lo,
        "audit_hi": audit_hi,
        "audit_pairs": col(PAIR_N),
        "audit_pairs_b": col(PAIR_B),
        "audit_pairs_c": col(PAIR_C),
    }
