"""Dense state layout: one row of additive float64 accumulators per (key, window slot).

Every statistic of a window is a function of sums, so a row can be
updated one event at a time, merged by addition (partitions, restarts,
panes into hopping windows) and checkpointed as a plain numpy array.
Event fields arrive as small integer codes, defined here once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Event codes shared by the codec-to-columns step, the kernels and the references.
DECISIONS = ("act", "hold", "abstain")
ACT, HOLD, ABSTAIN = 0, 1, 2
KINDS = ("like", "override", "abstain")
LIKE, OVERRIDE, FB_ABSTAIN = 0, 1, 2
SOURCES = ("human", "reviewer", "audit", "llm_judge")
AUDIT = SOURCES.index("audit")
PREFERRED = ("", "act", "hold")  # code 0: no preference given
PREF_NONE, PREF_ACT, PREF_HOLD = 0, 1, 2
SCORE_EVENT, FEEDBACK_EVENT = 0, 1
# Audit-pair codes of a feedback event: no pair completed, or the pair it completed.
PAIR_NONE, PAIR_AGREE, PAIR_AUDIT_OVERRIDES, PAIR_CHANNEL_OVERRIDES = -1, 0, 1, 2

# Scalar accumulator columns.
N_DEC = 0  # 3 columns: decisions by decision code (unweighted)
TAU_SUM = 3  # sum of tau over decisions: the threshold in force, on average
N_FB = 4  # 3 columns: feedback events by kind (unweighted)
W_KD = 7  # 9 columns: weight by (kind, decision), index W_KD + 3*kind + decision
W2_LAB = 16  # sum of (w * 2**W2_SHIFT)^2 over labelled (like/override) feedback (kernels.reference.intervals)
AUDIT_W = 17  # audit labelled (like/override): sum w, sum w*y, sum of scaled w^2 (as W2_LAB)
AUDIT_WY = 18
AUDIT_W2 = 19
AUDIT_N = 20  # audit labelled: count
YSTAR_W = 21  # sum w over feedback with a defined human-implied label y*
BRIER = 22  # sum w * (s - y*)^2
# A decision's first label, its weight capped at 1: a label counts as at most one
# Bernoulli observation in the sequential rules, whose guarantees need that cap, and a
# second look at the same decision (a repeat) counts not at all.
W_CAP = 23  # sum min(w, 1)
WY_CAP = 24  # sum min(w, 1) * y
# Audit pairs: a decision labelled by an audit and by another channel (`pair` code of
# the feedback that completed the pair). Unweighted counts for the channel-bias test.
PAIR_N = 25  # pairs
PAIR_B = 26  # audit override, channel like (the channel under-reports overrides)
PAIR_C = 27  # audit like, channel override (the channel over-reports overrides)
# Feedback by how many panes after its decision's pane it arrived: column FB_LAG + d counts
# the feedback of this pane whose decision was d panes earlier, d < LAG_PANES (later, before
# the decision, of unknown time, or a second label of its decision: not counted here).
# Summed along the diagonal of LAG_PANES consecutive panes it is the feedback a decision pane
# drew, which the coverage test compares with that pane's decisions, however bursty they
# are. Lags 0 to 12: whatever minute of its pane a decision fell in, its feedback within 12
# panes (an hour of 5-minute panes) counts.
FB_LAG = 28
LAG_PANES = 13
N_SCALARS = FB_LAG + LAG_PANES


@dataclass(frozen=True)
class StateLayout:
    """Column offsets of one state row; the score histogram follows the scalars.

    The histogram has `n_bins` equal-width bins on [0, 1] in three blocks:
    weight of y* = 0, weight of y* = 1, and weighted score sum (for ECE).
    """

    n_bins: int = 20

    def __post_init__(self) -> None:
        if not 2 <= self.n_bins <= 1000:
            raise ValueError(f"n_bins must be in [2, 1000], got {self.n_bins}")

    @property
    def hist_neg(self) -> int:
        return N_SCALARS

    @property
    def hist_pos(self) -> int:
        return N_SCALARS + self.n_bins

    @property
    def hist_ws(self) -> int:
        return N_SCALARS + 2 * self.n_bins

    @property
    def width(self) -> int:
        return N_SCALARS + 3 * self.n_bins

    def zeros(self, n_slots: int) -> np.ndarray:
        return np.zeros((n_slots, self.width), dtype=np.float64)

    def edges(self) -> np.ndarray:
        """Candidate thresholds for tau*: the bin edges 0, 1/B, ..., 1."""
        return np.arange(self.n_bins + 1, dtype=np.float64) / self.n_bins


def w_kd(kind: int, decision: int) -> int:
    """Column of the weight sum for feedback `kind` on a `decision`."""
    return W_KD + 3 * kind + decision


def human_label(kind: int, decision: int, preferred: int) -> int:
    """y* = 1 if the person wants act, 0 if hold, -1 if the feedback implies no label."""
    if kind == LIKE:
        return 1 if decision == ACT else (0 if decision == HOLD else -1)
    if kind == OVERRIDE:
        if decision == ACT:
            return 0
        if decision == HOLD:
            return 1
        return 1 if preferred == PREF_ACT else (0 if preferred == PREF_HOLD else -1)
    return -1


def score_bin(score: float, n_bins: int) -> int:
    """Histogram bin of a score in [0, 1]; a score of exactly 1 joins the top bin."""
    b = int(score * n_bins)
    return n_bins - 1 if b >= n_bins else b
