"""The cost-optimal threshold advice and the effective sample size, at their edge cases.

Each case is checked on the pure-Python reference (`WindowReference`) and on the
kernels (`update` + `derive`), which must agree; the coverage of `cost_saved_lo`
is measured by simulation against a known generating distribution.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.batch import FeedbackBatch, ScoreBatch, apply
from kernels.derive import derive
from kernels.layout import ACT, DECISIONS, HOLD, KINDS, LIKE, OVERRIDE, SOURCES, StateLayout
from kernels.params import StatsParams
from kernels.reference.window import WindowReference

CI = settings(deadline=None, derandomize=True, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow])


def both(events, n_bins=20, params=StatsParams(), tau=None):
    """Stats of one window from the reference and from the kernels.

    events: ("score", decision, tau) or ("feedback", kind, source, decision, preferred, score, weight).
    """
    ref = WindowReference(n_bins)
    sc = [e for e in events if e[0] == "score"]
    fb = [e for e in events if e[0] == "feedback"]
    for e in events:
        if e[0] == "score":
            ref.update_score(e[1], e[2])
        else:
            ref.update_feedback(*e[1:])
    layout = StateLayout(n_bins)
    state = layout.zeros(1)
    apply(state, ScoreBatch(np.zeros(len(sc), np.int64), np.array([DECISIONS.index(e[1]) for e in sc], np.int8),
                            np.array([e[2] for e in sc], np.float64)),
          FeedbackBatch(np.zeros(len(fb), np.int64), np.array([KINDS.index(e[1]) for e in fb], np.int8),
                        np.array([SOURCES.index(e[2]) for e in fb], np.int8),
                        np.array([DECISIONS.index(e[3]) for e in fb], np.int8),
                        np.array([("", "act", "hold").index(e[4]) for e in fb], np.int8),
                        np.array([e[5] for e in fb], np.float64), np.array([e[6] for e in fb], np.float64)))
    got = derive(state, layout, params, tau=None if tau is None else np.array([tau]))
    return ref.get(params, tau=tau), {k: float(v[0]) for k, v in got.items()}


def decided(score, tau, y, weight=1.0, kind_source="human"):
    """A decision by `score >= tau` and its like/override feedback for the human label `y`."""
    d = "act" if score >= tau else "hold"
    kind = "like" if (d == "act") == bool(y) else "override"
    return [("score", d, tau), ("feedback", kind, kind_source, d, "", score, weight)]


# --------------------------------------------------------------------------- tau* semantics


def test_score_of_one_acts_under_every_threshold_so_no_advice():
    """s = 1.0 acts under every tau <= 1: no candidate threshold changes its decision."""
    events = decided(1.0, 0.5, y=0)
    for s in both(events):
        assert s["tau_star"] == 0.5 and s["cost_saved"] == 0.0 and s["cost_saved_lo"] == 0.0, s


def test_saving_is_measured_against_the_tau_in_force_not_its_nearest_edge():
    """tau = 0.58 acted on 0.59 and was overridden: 0.6 holds it, saving c_fp per label."""
    params = StatsParams(c_fp=2.0, c_fn=1.0)
    for s in both(decided(0.59, 0.58, y=0), params=params):
        assert s["tau_star"] == 0.6 and s["cost_saved"] == 2.0, s


def test_no_move_when_no_edge_beats_the_decisions_taken():
    """Edges 0.55 and 0.6 decide these labels as tau = 0.58 did: tau* stays at tau."""
    events = decided(0.59, 0.58, y=1) + decided(0.2, 0.58, y=0) + decided(0.9, 0.58, y=1)
    for s in both(events):
        assert s["tau_star"] == 0.58 and s["cost_saved"] == 0.0, s


def test_tau_star_is_exactly_an_edge_value():
    """tau* is j / B as Python computes it, so |tau* - tau| against tau_eps carries no extra noise."""
    rng = np.random.default_rng(7)
    for n_bins in (5, 10, 20, 49, 100):
        for _ in range(20):
            tau = float(rng.uniform(0.05, 0.95))
            events = [e for s in rng.uniform(0, 1, 30) for e in decided(float(s), tau, y=int(rng.random() < s))]
            for s in both(events, n_bins=n_bins):
                if s["tau_star"] != s["tau"]:
                    j = round(s["tau_star"] * n_bins)
                    assert s["tau_star"] == j / n_bins and 0 <= j < n_bins, (n_bins, s["tau_star"])


def test_abstain_decisions_cost_nothing_now():
    """An overridden deferral (preferred hold) costs nothing under the tau in force; acting on it at
    an edge would cost c_fp, so a deferral alone never makes moving look profitable."""
    events = [("score", "abstain", 0.5), ("feedback", "override", "human", "abstain", "hold", 0.55, 1.0)]
    for s in both(events):
        assert s["tau_star"] == 0.5 and s["cost_saved"] == 0.0, s
    # with a real mistake next to it, the saving counts the deferral's cost at tau*
    events += decided(0.52, 0.5, y=0)
    for s in both(events):
        assert s["tau_star"] == 0.6 and s["cost_saved"] == 0.5, s


# --------------------------------------------------------------------------- effective sample size


def exact_neff(ws):
    f = [Fraction(w) for w in ws]
    return sum(f) ** 2 / sum(x * x for x in f)


log_uniform_weights = st.floats(min_value=math.log(5e-324), max_value=math.log(1000.0)).map(
    lambda u: min(1000.0, max(5e-324, math.exp(u))))
subnormal_or_tiny = st.sampled_from([5e-324, 1e-320, 2.0**-1000, 1e-300, 2.0**-991, 1e-200])


@settings(CI, max_examples=300)
@given(ws=st.lists(log_uniform_weights | subnormal_or_tiny, min_size=1, max_size=12), source=st.sampled_from(["human", "audit"]))
def test_effective_sample_size_for_every_accepted_weight(ws, source):
    """n_eff against exact rational arithmetic over weights in (0, 1000]. When every weight is below
    2**-991 even the scaled squares are not normal floats; n_eff is then max(1, sum w * 2**991),
    a lower bound (each weight is below 2**-991, so sum w^2 < sum w * 2**-991), exact for one label."""
    events = [("feedback", "like" if k % 3 else "override", source, "act", "", 0.5, w) for k, w in enumerate(ws)]
    exact = exact_neff(ws)
    for s in both(events):
        got = s["n_eff"]
        assert 1.0 <= got <= len(ws) * (1 + 1e-12), (got, ws)
        if max(ws) >= 2.0**-991:
            assert got == pytest.approx(float(exact), rel=1e-12), ws
        else:
            assert Fraction(got) <= exact * (1 + Fraction(1, 10**12)), (got, float(exact), ws)
        if len(ws) == 1:
            assert got == 1.0
        if source == "audit":  # every label is an audit label: the audit interval uses the same n_eff
            assert (s["audit_lo"], s["audit_hi"]) == pytest.approx((s["loss_lo"], s["loss_hi"]), rel=1e-12)


def test_single_tiny_weight_is_one_effective_label():
    for w in (1e-200, 1e-300, 5e-324):
        for s in both([("feedback", "override", "audit", "act", "", 0.5, w)]):
            assert s["n_eff"] == 1.0, (w, s["n_eff"])
            assert s["audit_lo"] == s["loss_lo"] > 0.0  # the audit interval uses the same n_eff


# --------------------------------------------------------------------------- the saving's lower bound


def true_saving(tau, t, c_fp, c_fn):
    """Expected saving per label of moving tau -> t when s ~ U(0, 1) and P(y* = 1 | s) = s."""
    return c_fp * (t - tau) - (c_fp + c_fn) * (t * t - tau * tau) / 2.0


def test_cost_saved_lo_coverage_by_simulation():
    """Windows of labels with s ~ U(0, 1), y* ~ Bernoulli(s), weights lognormal, all decided by
    tau = 0.23: the bound must cover the true saving of the tau* each window picks."""
    rng = np.random.default_rng(20240611)
    n_win, n, n_bins, tau = 1500, 400, 20, 0.23
    params = StatsParams(confidence=0.9, c_fp=1.0, c_fn=1.5)
    layout = StateLayout(n_bins)
    state = layout.zeros(n_win)
    slot = np.repeat(np.arange(n_win, dtype=np.int64), n)
    s = rng.uniform(0.0, 1.0, slot.size)
    y = rng.random(slot.size) < s
    w = rng.lognormal(0.0, 0.5, slot.size)
    dec = np.where(s >= tau, ACT, HOLD).astype(np.int8)
    kind = np.where((dec == ACT) == y, LIKE, OVERRIDE).astype(np.int8)
    apply(state, ScoreBatch(slot, dec, np.full(slot.size, tau)),
          FeedbackBatch(slot, kind, np.zeros(slot.size, np.int8), dec, np.zeros(slot.size, np.int8), s, w))
    got = derive(state, layout, params)
    moved = got["tau_star"] != got["tau"]
    truth = np.where(moved, true_saving(got["tau"], got["tau_star"], params.c_fp, params.c_fn), 0.0)
    covered = got["cost_saved_lo"] <= truth
    cov = covered.mean()
    se = math.sqrt(cov * (1 - cov) / n_win)
    msg = (f"coverage {cov:.4f} +- {se:.4f} (MC s.e.) at nominal {params.confidence}; "
           f"{moved.mean():.0%} of windows moved tau*, mean bound {np.mean(got['cost_saved_lo'][moved]):.4f}")
    assert cov >= params.confidence - 3 * se, msg
    assert moved.mean() > 0.5, msg  # the bound is exercised, not only the trivial no-move case
    assert np.all(got["cost_saved_lo"] <= got["cost_saved"]), msg


def test_cost_saved_lo_undefined_without_labels_and_zero_without_a_move():
    for s in both([("score", "act", 0.5)]):
        assert math.isnan(s["cost_saved_lo"]) and math.isnan(s["cost_saved"])
    for s in both(decided(0.9, 0.5, y=1)):
        assert s["cost_saved_lo"] == 0.0


def test_cost_saved_lo_tightens_with_more_labels():
    few = [e for k in range(10) for e in decided(0.59, 0.58, y=k % 5 == 0)]
    many = few * 20
    (a, _), (b, _) = both(few), both(many)
    assert a["cost_saved"] == pytest.approx(b["cost_saved"])
    assert a["cost_saved_lo"] < b["cost_saved_lo"] <= b["cost_saved"]


# --------------------------------------------------------------------------- held-out validation


@CI
@given(data=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.integers(0, 1), st.floats(1e-3, 1000.0)),
                     min_size=1, max_size=60),
       tau_new=st.integers(0, 19), conf=st.sampled_from([0.8, 0.95]))
def test_held_out_saving_kernel_equals_reference(data, tau_new, conf):
    """`derive.held_out_saving` is `CostOptimalThreshold.saving_of` per row."""
    from kernels.derive import held_out_saving

    params = StatsParams(confidence=conf)
    events = [e for s, tau, y, w in data for e in decided(s, round(tau, 2), y, w)]
    ref = WindowReference(20)
    for e in events:
        ref.update_score(e[1], e[2]) if e[0] == "score" else ref.update_feedback(*e[1:])
    tau = ref.rates.decisions.mean_tau
    want = ref.hist.saving_of(tau_new / 20, tau, ref.loss.n_eff, conf, candidates=20)
    layout = StateLayout(20)
    state = layout.zeros(1)
    fb = [e for e in events if e[0] == "feedback"]
    sc = [e for e in events if e[0] == "score"]
    apply(state, ScoreBatch(np.zeros(len(sc), np.int64), np.array([DECISIONS.index(e[1]) for e in sc], np.int8),
                            np.array([e[2] for e in sc])),
          FeedbackBatch(np.zeros(len(fb), np.int64), np.array([KINDS.index(e[1]) for e in fb], np.int8),
                        np.zeros(len(fb), np.int8), np.array([DECISIONS.index(e[3]) for e in fb], np.int8),
                        np.zeros(len(fb), np.int8), np.array([e[5] for e in fb]), np.array([e[6] for e in fb])))
    got = held_out_saving(state, layout, params, np.array([tau_new / 20]), np.array([tau]), candidates=20)
    assert float(got[0][0]) == pytest.approx(want[0], rel=1e-9, abs=1e-12)
    assert float(got[1][0]) == pytest.approx(want[1], rel=1e-9, abs=1e-9)


def test_held_out_bound_covers_the_true_saving_of_a_threshold_chosen_elsewhere():
    """tau* chosen on one sample, its saving bounded on another: the one-sided 95% bound
    (k = 1) covers the true saving at least at its level, by simulation with ground truth."""
    from kernels.derive import held_out_saving, tau_star

    rng = np.random.default_rng(11)
    layout, params, tau, n, reps = StateLayout(20), StatsParams(), 0.7, 300, 400
    covered = 0
    for _ in range(reps):
        halves = []
        for _half in range(2):
            s = rng.random(n)
            y = (rng.random(n) < s).astype(int)  # calibrated: the best threshold is 0.5
            events = [e for si, yi in zip(s, y) for e in decided(float(si), tau, int(yi))]
            state = layout.zeros(1)
            fb = [e for e in events if e[0] == "feedback"]
            apply(state, ScoreBatch(np.zeros(n, np.int64), np.array([DECISIONS.index(e[1]) for e in events
                                                                      if e[0] == "score"], np.int8), np.full(n, tau)),
                  FeedbackBatch(np.zeros(n, np.int64), np.array([KINDS.index(e[1]) for e in fb], np.int8),
                                np.zeros(n, np.int8), np.array([DECISIONS.index(e[3]) for e in fb], np.int8),
                                np.zeros(n, np.int8), np.array([e[5] for e in fb]), np.ones(n)))
            halves.append(state)
        t = float(tau_star(halves[0], layout, params, np.array([tau]))[0])
        true_saving = (tau - 0.5) ** 2 - (t - 0.5) ** 2  # E[cost at tau] - E[cost at t], per label
        lo = float(held_out_saving(halves[1], layout, params, np.array([t]), np.array([tau]))[1][0])
        covered += lo <= true_saving
    rate = covered / reps
    se = math.sqrt(rate * (1 - rate) / reps)
    assert rate >= 0.95 - 3 * se, f"coverage {rate:.3f} ± {se:.3f}"
