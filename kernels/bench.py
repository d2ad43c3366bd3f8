"""`npo bench kernels`: the jitted batch update against the best plain-numpy formulation.

Both update every statistic for the same events (default 1,000,000 over
10,000 keys, the simulator's mix: ~75% decisions, ~25% feedback); the
numpy baseline uses `np.bincount` per accumulator, the fastest vectorised
form we know. Both results are checked equal before any figure is printed.
"""
from __future__ import annotations

import time

import numpy as np

from kernels.layout import (
    AUDIT,
    AUDIT_N,
    AUDIT_W,
    AUDIT_W2,
    AUDIT_WY,
    BRIER,
    FB_ABSTAIN,
    FB_LAG,
    LAG_PANES,
    N_DEC,
    N_FB,
    N_SCALARS,
    OVERRIDE,
    PAIR_AUDIT_OVERRIDES,
    PAIR_B,
    PAIR_C,
    PAIR_CHANNEL_OVERRIDES,
    PAIR_N,
    TAU_SUM,
    W2_LAB,
    W_CAP,
    W_KD,
    WY_CAP,
    YSTAR_W,
    StateLayout,
)
from kernels.update import LABELS, W2_SCALE, update


def make_events(n: int, keys: int, seed: int = 0, feedback_share: float = 0.25):
    """Random but realistic columns: score events then feedback events, slots uniform over keys."""
    rng = np.random.default_rng(seed)
    nf = int(n * feedback_share)
    ns = n - nf
    scores = (rng.integers(0, keys, ns), rng.choice(3, ns, p=[0.48, 0.49, 0.03]).astype(np.int8), rng.random(ns))
    feedback = (
        rng.integers(0, keys, nf),
        rng.choice(3, nf, p=[0.80, 0.13, 0.07]).astype(np.int8),
        rng.choice(4, nf, p=[0.73, 0.2, 0.05, 0.02]).astype(np.int8),
        rng.choice(3, nf, p=[0.48, 0.49, 0.03]).astype(np.int8),
        rng.integers(0, 3, nf).astype(np.int8),
        rng.random(nf),
        np.ones(nf),
        rng.choice(4, nf, p=[0.97, 0.02, 0.007, 0.003]).astype(np.int8) - 1,
        rng.random(nf) < 0.03,  # repeats: second labels of a decision
        np.minimum(rng.geometric(0.5, nf) - 1, 20),  # panes after the decision's
    )
    return scores, feedback


def numpy_update(state: np.ndarray, scores, feedback) -> None:
    """The same update as `kernels.update.update`, with one np.bincount per accumulator."""
    rows, width = state.shape
    n_bins = (width - N_SCALARS) // 3
    s_slot, s_dec, s_tau = scores
    f_slot, kind, source, dec, pref, score, w, pair, repeat, lag = feedback

    def add(col, idx, weights=None):
        state[:, col] += np.bincount(idx, weights, minlength=rows)[:rows]

    for d in range(3):
        add(N_DEC + d, s_slot[s_dec == d])
    add(TAU_SUM, s_slot, s_tau)
    kd = kind.astype(np.int64) * 3 + dec
    flat = np.bincount(f_slot * 9 + kd, w, minlength=rows * 9).reshape(rows, 9)
    state[:, W_KD:W_KD + 9] += flat
    state[:, N_FB:N_FB + 3] += np.bincount(f_slot * 3 + kind, minlength=rows * 3).reshape(rows, 3)
    near = (lag >= 0) & (lag < LAG_PANES) & ~repeat
    state[:, FB_LAG:FB_LAG + LAG_PANES] += np.bincount(f_slot[near] * LAG_PANES + lag[near],
                                                       minlength=rows * LAG_PANES).reshape(rows, LAG_PANES)
    lab = kind != FB_ABSTAIN
    ws = w * W2_SCALE
    add(W2_LAB, f_slot[lab], (ws * ws)[lab])
    wc = np.minimum(w, 1.0)
    first = lab & ~repeat
    add(W_CAP, f_slot[first], wc[first])
    ov = first & (kind == OVERRIDE)
    add(WY_CAP, f_slot[ov], wc[ov])
    add(PAIR_N, f_slot[pair >= 0])
    add(PAIR_B, f_slot[pair == PAIR_AUDIT_OVERRIDES])
    add(PAIR_C, f_slot[pair == PAIR_CHANNEL_OVERRIDES])
    aud = lab & (source == AUDIT)
    add(AUDIT_N, f_slot[aud])
    add(AUDIT_W, f_slot[aud], w[aud])
    add(AUDIT_W2, f_slot[aud], (ws * ws)[aud])
    aud_ov = aud & (kind == OVERRIDE)
    add(AUDIT_WY, f_slot[aud_ov], w[aud_ov])
    y = LABELS[kind, dec, pref]
    has = y >= 0
    ys, ss, ws, sl = y[has].astype(np.int64), score[has], w[has], f_slot[has]
    add(YSTAR_W, sl, ws)
    add(BRIER, sl, ws * (ss - ys) ** 2)
    b = np.minimum((ss * n_bins).astype(np.int64), n_bins - 1)
    hist = np.bincount(sl * (2 * n_bins) + ys * n_bins + b, ws, minlength=rows * 2 * n_bins)
    state[:, N_SCALARS:N_SCALARS + 2 * n_bins] += hist.reshape(rows, 2 * n_bins)
    ws_hist = np.bincount(sl * n_bins + b, ws * ss, minlength=rows * n_bins)
    state[:, N_SCALARS + 2 * n_bins:] += ws_hist.reshape(rows, n_bins)


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_kernels(n: int = 1_000_000, keys: int = 10_000, repeats: int = 5, seed: int = 0) -> dict:
    """Time both formulations on the same events; return the figures (events/s, best of `repeats`)."""
    layout = StateLayout()
    scores, feedback = make_events(n, keys, seed)
    a, b = layout.zeros(keys), layout.zeros(keys)
    update(a, *scores, *feedback)  # compile (or load from cache) outside the timing
    numpy_update(b, scores, feedback)
    if not np.allclose(a, b, rtol=1e-9, atol=1e-9):
        raise AssertionError("numba kernel and numpy baseline disagree; refusing to report figures")
    kernel_s = _best(lambda: update(a, *scores, *feedback), repeats)
    numpy_s = _best(lambda: numpy_update(b, scores, feedback), repeats)
    return {
        "events": n,
        "keys": keys,
        "feedback_share": 0.25,
        "repeats": repeats,
        "events_per_s": n / kernel_s,
        "baseline_events_per_s": n / numpy_s,
        "speedup": numpy_s / kernel_s,
        "kernel_ms": kernel_s * 1e3,
        "baseline_ms": numpy_s * 1e3,
        "baseline": "numpy bincount per accumulator",
    }
