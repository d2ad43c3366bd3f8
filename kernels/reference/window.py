"""All statistics of one (key, window), fed one event at a time: the kernels' specification.

`WindowReference.get()` returns exactly the fields `kernels.derive.derive`
returns for a state row, so a batch kernel can be checked against it.
"""
from __future__ import annotations

from kernels.layout import DECISIONS, KINDS, LAG_PANES, PREFERRED, human_label
from kernels.params import StatsParams
from kernels.reference.calibration import BrierScore, CostOptimalThreshold, ExpectedCalibrationError
from kernels.reference.coverage import FeedbackLags
from kernels.reference.intervals import effective_size, exceedance, jeffreys_interval, wilson_interval
from kernels.reference.loss import AlignmentLoss
from kernels.reference.pairs import AuditPairs
from kernels.reference.rates import MonitorRates


class WindowReference:
    """Score and feedback events in, every per-window statistic out.

    >>> w = WindowReference(n_bins=10)
    >>> w.update_score("act", tau=0.5)
    >>> w.update_feedback("override", "human", "act", "", score=0.8)
    >>> s = w.get(StatsParams())
    >>> s["loss"], s["coverage"], s["n_labels"]
    (1.0, 1.0, 1)
    """

    def __init__(self, n_bins: int = 20) -> None:
        self.n_bins = n_bins
        self.rates = MonitorRates()
        self.loss = AlignmentLoss()
        self.audit = AlignmentLoss()
        self.brier = BrierScore()
        self.ece = ExpectedCalibrationError(n_bins)
        self.hist = CostOptimalThreshold(n_bins)
        self.pairs = AuditPairs()
        self.lags = FeedbackLags(LAG_PANES)

    def update_score(self, decision: str, tau: float) -> None:
        self.rates.update_decision(decision, tau)

    def update_feedback(
        self, kind: str, source: str, decision: str, preferred: str, score: float, weight: float = 1.0,
        pair: int = -1, repeat: bool = False, lag: int = -1,
    ) -> None:
        """`pair`: the audit-pair code it completed; `repeat`: its decision was labelled before;
        `lag`: panes since its decision's pane (-1: unknown)."""
        self.rates.update_feedback(kind, decision, weight)
        self.lags.update(-1 if repeat else lag)
        self.pairs.update(pair)
        if kind in ("like", "override"):
            y = int(kind == "override")
            self.loss.update(y, decision, weight, repeat)
            if source == "audit":
                self.audit.update(y, decision, weight)
        y_star = human_label(KINDS.index(kind), DECISIONS.index(decision), PREFERRED.index(preferred))
        if y_star >= 0:
            self.brier.update(score, y_star, weight)
            self.ece.update(score, y_star, weight)
            self.hist.update(score, y_star, weight, decision=decision)

    def merge(self, other: "WindowReference") -> None:
        for name in ("rates", "loss", "audit", "brier", "ece", "hist", "pairs", "lags"):
            getattr(self, name).merge(getattr(other, name))

    def get(self, params: StatsParams, tau: float | None = None) -> dict[str, float]:
        """Statistics under `params`; `tau` (None or NaN) defaults to the mean threshold of the decisions."""
        dec, fb = self.rates.decisions, self.rates.feedback
        loss, n_eff = self.loss.get(), self.loss.n_eff
        interval = wilson_interval if params.interval == "wilson" else jeffreys_interval
        lo, hi = interval(loss, n_eff, params.confidence)
        self.hist.c_fp, self.hist.c_fn = params.c_fp, params.c_fn
        tau = dec.mean_tau if tau is None or tau != tau else tau  # None or NaN: the decisions' mean
        # the histogram's labels are a subset of the labels, so their weight over the squares
        # of all labels bounds their n_eff from below
        hist_neff = effective_size(self.hist.total, self.loss.w2)
        tau_star, cost_saved, cost_saved_lo = self.hist.get(tau, hist_neff, params.confidence)
        return {
            "n_decisions": dec.total,
            "n_act": dec.counts["act"],
            "n_hold": dec.counts["hold"],
            "n_abstain_decisions": dec.counts["abstain"],
            "n_feedback": fb.total,
            "n_like": fb.events["like"],
            "n_override": fb.events["override"],
            "n_abstain_feedback": fb.events["abstain"],
            "n_labels": self.loss.n,
            "weight_sum": self.loss.w,
            "override_weight": self.loss.wy,
            "weight_capped": self.loss.w_cap,
            "override_weight_capped": self.loss.wy_cap,
            "loss": loss,
            "loss_cost": self.loss.cost_weighted(params.c_fp, params.c_fn),
            "loss_lo": lo,
            "loss_hi": hi,
            "n_eff": n_eff,
            "p_exceed": exceedance(self.loss.wy, self.loss.w, self.loss.w2, params.l_budget, params.a0, params.b0),
            **self.rates.get(),
            "brier": self.brier.get(),
            "ece": self.ece.get(),
            "tau": tau,
            "tau_star": tau_star,
            "cost_saved": cost_saved,
            "cost_saved_lo": cost_saved_lo,
            "audit_loss": self.audit.get(),
            "audit_n": self.audit.n,
            "audit_lo": interval(self.audit.get(), self.audit.n_eff, params.confidence)[0],
            "audit_hi": interval(self.audit.get(), self.audit.n_eff, params.confidence)[1],
            **self.pairs.get(),
        }

