"""Batch update: one jitted call adds a batch of score and feedback events to their slots.

The batch version of `WindowReference.update_score` / `update_feedback`:
each event adds exactly the same quantities to the state row of its slot.
Score and feedback events come as separate column batches (the decoder
produces them that way), which keeps each loop short and branch-free.
The window assigner picks the slot: an open pane for on-time events, the
key's cumulative row for late ones (closed panes are folded into the
cumulative row once, when they close, not once per event).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from kernels.layout import (
    AUDIT,
    AUDIT_N,
    AUDIT_W,
    AUDIT_W2,
    AUDIT_WY,
    BRIER,
    DECISIONS,
    FB_ABSTAIN,
    FB_LAG,
    KINDS,
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
    PREFERRED,
    TAU_SUM,
    W2_LAB,
    W_CAP,
    W_KD,
    WY_CAP,
    YSTAR_W,
    human_label,
)
from kernels.reference.intervals import W2_SHIFT

#: Squares of weights are summed scaled by 2**(2 * W2_SHIFT) (exact), so none underflows.
W2_SCALE = 2.0**W2_SHIFT

#: y* for every (kind, decision, preferred) code triple, -1 where undefined.
LABELS = np.array(
    [[[human_label(k, d, p) for p in range(len(PREFERRED))] for d in range(len(DECISIONS))] for k in range(len(KINDS))],
    dtype=np.int8,
)


@njit(nogil=True, cache=True)
def update(state, s_slot, s_decision, s_tau, f_slot, f_kind, f_source, f_decision, f_preferred, f_score, f_weight,
           f_pair, f_repeat, f_lag):
    """Add score events (s_*) and feedback events (f_*) to `state` in place.

    Column arrays of equal length per event type, codes of `kernels.layout`,
    already validated (`kernels.validate`). A slot of -1 skips the event. A repeat (a
    label on a decision labelled before) counts everywhere but in the capped sums, which
    count one label a decision. `f_lag`: panes between the feedback's decision and its own
    pane (counted, unless a repeat, where 0 <= lag < LAG_PANES).
    """
    n_bins = (state.shape[1] - N_SCALARS) // 3
    for i in range(s_slot.shape[0]):
        r = s_slot[i]
        if r >= 0:
            state[r, N_DEC + s_decision[i]] += 1.0
            state[r, TAU_SUM] += s_tau[i]
    for i in range(f_slot.shape[0]):
        r = f_slot[i]
        if r < 0:
            continue
        k, d, w = f_kind[i], f_decision[i], f_weight[i]
        state[r, N_FB + k] += 1.0
        lag = f_lag[i]
        if 0 <= lag < LAG_PANES and not f_repeat[i]:
            state[r, FB_LAG + lag] += 1.0
        state[r, W_KD + 3 * k + d] += w
        if k != FB_ABSTAIN:
            ws = w * W2_SCALE
            state[r, W2_LAB] += ws * ws
            if not f_repeat[i]:
                wc = min(w, 1.0)
                state[r, W_CAP] += wc
                if k == OVERRIDE:
                    state[r, WY_CAP] += wc
            if f_source[i] == AUDIT:
                state[r, AUDIT_N] += 1.0
                state[r, AUDIT_W] += w
                state[r, AUDIT_W2] += ws * ws
                if k == OVERRIDE:
                    state[r, AUDIT_WY] += w
        p = f_pair[i]
        if p >= 0:
            state[r, PAIR_N] += 1.0
            if p == PAIR_AUDIT_OVERRIDES:
                state[r, PAIR_B] += 1.0
            elif p == PAIR_CHANNEL_OVERRIDES:
                state[r, PAIR_C] += 1.0
        y = LABELS[k, d, f_preferred[i]]
        if y >= 0:
            s = f_score[i]
            e = s - y
            state[r, YSTAR_W] += w
            state[r, BRIER] += w * e * e
            b = min(int(s * n_bins), n_bins - 1)
            state[r, N_SCALARS + y * n_bins + b] += w
            state[r, N_SCALARS + 2 * n_bins + b] += w * s


@njit(nogil=True, cache=True)
def merge_rows(dst, dst_rows, src, src_rows):
    """dst[dst_rows[i]] += src[src_rows[i]]: fold panes into the cumulative row, or
    merge partial states whose key indexes differ (partitions, workers, restarts)."""
    for i in range(dst_rows.shape[0]):
        d, s = dst_rows[i], src_rows[i]
        for c in range(dst.shape[1]):
            dst[d, c] += src[s, c]


@njit(nogil=True, cache=True)
def sum_rows(state, rows, out):
    """out[c] = sum over `rows` of state[row, c]: a hopping window from its tumbling panes."""
    out[:] = 0.0
    for r in rows:
        for c in range(state.shape[1]):
            out[c] += state[r, c]
