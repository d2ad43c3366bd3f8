"""The paper's convergence claim, by simulation: |L_hat - L| and 1 - phi shrink like 1/sqrt(n).

Windows of n labels with true losses spread around the budget are pushed
through the same kernels and derived statistics as the pipeline; the
monitor decides D = 1[p_exceed >= 1/2] and is right when D = 1[L > budget].
The reduction 1 - phi <= P(|L_hat - L| >= |L - budget|) is checked too.
"""
from __future__ import annotations

import numpy as np

from kernels.derive import derive
from kernels.layout import ACT, LIKE, N_FB, OVERRIDE, W2_LAB, StateLayout, w_kd
from kernels.params import StatsParams
from kernels.reference.intervals import scaled_square

N_GRID = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def convergence(seed: int, params: StatsParams, reps: int = 4000, n_grid=N_GRID, spread: float = 0.1) -> list[dict]:
    """One row per n: mean |L_hat - L|, 1 - phi, and the reduction's right-hand side."""
    rng = np.random.default_rng(seed)
    layout = StateLayout()
    rows = []
    for n in n_grid:
        true = np.clip(rng.uniform(params.l_budget - spread, params.l_budget + spread, reps), 1e-3, 1 - 1e-3)
        overrides = rng.binomial(n, true).astype(np.float64)
        state = layout.zeros(reps)
        state[:, w_kd(OVERRIDE, ACT)] = overrides
        state[:, w_kd(LIKE, ACT)] = n - overrides
        state[:, N_FB + OVERRIDE] = overrides
        state[:, N_FB + LIKE] = n - overrides
        state[:, W2_LAB] = n * scaled_square(1.0)  # unit weights
        stats = derive(state, layout, params, tau=np.full(reps, 0.5))
        err = np.abs(stats["loss"] - true)
        decided = stats["p_exceed"] >= 0.5
        wrong = decided != (true > params.l_budget)
        rows.append({
            "n": n,
            "mean_abs_error": float(err.mean()),
            "one_minus_phi": float(wrong.mean()),
            "reduction_bound": float((err >= np.abs(true - params.l_budget)).mean()),
        })
    return rows
