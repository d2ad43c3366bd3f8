"""The pure-Python references against independent implementations.

statsmodels (Wilson / Jeffreys intervals), scipy (Beta CDF / quantile /
survival), scikit-learn (Brier score) and plain numpy (ECE, brute-force
cost-optimal threshold), plus the doctests of every reference module.
"""
from __future__ import annotations

import doctest
import importlib
import math
import pkgutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import brier_score_loss
from statsmodels.stats.proportion import proportion_confint

import kernels.layout
import kernels.reference
from kernels.derive import interval as derive_interval
from kernels.params import StatsParams
from kernels.reference.calibration import (
    TIE_TOLERANCE,
    BrierScore,
    CostOptimalThreshold,
    ExpectedCalibrationError,
    LabelHistogram,
)
from kernels.reference.intervals import (
    ExceedanceProbability,
    beta_cdf,
    beta_ppf,
    exceedance,
    jeffreys_interval,
    wilson_interval,
)
from kernels.reference.loss import AlignmentLoss

CI = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _grid():
    """(count, n) pairs including count = 0 and count = n, small and large n."""
    out = []
    for n in (1, 2, 3, 5, 10, 17, 50, 100, 1000):
        counts = sorted({0, 1, 2, n // 10, n // 4, n // 3, n // 2, n - 2, n - 1, n} & set(range(n + 1)))
        out += [(x, n) for x in counts]
    return out


GRID = _grid()
CONFIDENCES = (0.8, 0.9, 0.95, 0.99)


# --------------------------------------------------------------------------- intervals


@pytest.mark.parametrize("confidence", CONFIDENCES)
def test_wilson_matches_statsmodels(confidence):
    for x, n in GRID:
        want = proportion_confint(x, n, alpha=1.0 - confidence, method="wilson")
        got = wilson_interval(x / n, n, confidence)
        assert np.allclose(got, want, rtol=1e-10, atol=1e-13), (x, n, got, want)


@pytest.mark.parametrize("confidence", CONFIDENCES)
def test_jeffreys_matches_statsmodels(confidence):
    for x, n in GRID:
        want = proportion_confint(x, n, alpha=1.0 - confidence, method="jeffreys")
        got = jeffreys_interval(x / n, n, confidence)
        assert np.allclose(got, want, rtol=1e-9, atol=1e-14), (x, n, got, want)


@pytest.mark.parametrize("method", ["wilson", "jeffreys"])
@pytest.mark.parametrize("confidence", CONFIDENCES)
def test_vectorised_interval_matches_statsmodels(method, confidence):
    x = np.array([g[0] for g in GRID], dtype=np.float64)
    n = np.array([g[1] for g in GRID], dtype=np.float64)
    lo, hi = derive_interval(x / n, n, StatsParams(confidence=confidence, interval=method))
    want_lo, want_hi = proportion_confint(x, n, alpha=1.0 - confidence, method=method)
    assert np.allclose(lo, want_lo, rtol=1e-9, atol=1e-14)
    assert np.allclose(hi, want_hi, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("method", ["wilson", "jeffreys"])
def test_empty_interval_is_the_unit_interval(method):
    ref = wilson_interval if method == "wilson" else jeffreys_interval
    assert ref(math.nan, 0.0) == (0.0, 1.0)
    assert ref(0.3, 0.0) == (0.0, 1.0)
    lo, hi = derive_interval(np.array([math.nan, 0.3, 0.3]), np.array([0.0, 0.0, -1.0]), StatsParams(interval=method))
    assert lo.tolist() == [0.0, 0.0, 0.0] and hi.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("method", ["wilson", "jeffreys"])
def test_interval_on_fractional_effective_sizes(method):
    """Weighted data give non-integer (x, n_eff); the vectorised and scalar versions agree."""
    rng = np.random.default_rng(7)
    n = rng.uniform(0.3, 400.0, size=60)
    p = rng.uniform(0.0, 1.0, size=60)
    p[:5] = 0.0
    p[5:10] = 1.0
    params = StatsParams(interval=method, confidence=0.9)
    lo, hi = derive_interval(p, n, params)
    ref = wilson_interval if method == "wilson" else jeffreys_interval
    for i in range(n.size):
        want = ref(p[i], n[i], 0.9)
        assert np.allclose((lo[i], hi[i]), want, rtol=1e-9, atol=1e-14), (p[i], n[i])
    if method == "jeffreys":
        x = p * n
        assert np.allclose(lo, stats.beta.ppf(0.05, x + 0.5, n - x + 0.5), rtol=1e-9, atol=1e-14)
        assert np.allclose(hi, stats.beta.isf(0.05, x + 0.5, n - x + 0.5), rtol=1e-9, atol=1e-14)


# --------------------------------------------------------------------------- Beta distribution

SHAPES = (0.5, 1.0, 1.5, 2.0, 5.0, 30.0, 200.0, 1000.0)
XS = (0.0, 1e-6, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0 - 1e-6, 1.0)
QS = (1e-4, 0.005, 0.025, 0.05, 0.5, 0.95, 0.975, 0.995, 1.0 - 1e-4)


def test_beta_cdf_matches_scipy():
    for a in SHAPES:
        for b in SHAPES:
            for x in XS:
                assert beta_cdf(x, a, b) == pytest.approx(stats.beta.cdf(x, a, b), rel=1e-9, abs=5e-12), (x, a, b)


def test_beta_ppf_matches_scipy():
    for a in SHAPES:
        for b in SHAPES:
            for q in QS:
                assert beta_ppf(q, a, b) == pytest.approx(stats.beta.ppf(q, a, b), rel=1e-9, abs=1e-15), (q, a, b)


@pytest.mark.parametrize("budget", [0.01, 0.05, 0.1, 0.3, 0.7])
@pytest.mark.parametrize("prior", [(1.0, 1.0), (0.5, 0.5), (2.0, 18.0)])
def test_exceedance_matches_beta_survival(budget, prior):
    a0, b0 = prior
    for x, n in GRID:
        pe = ExceedanceProbability(budget, a0, b0)
        for y in [1] * x + [0] * (n - x):
            pe.update(y)
        want = stats.beta.sf(budget, a0 + x, b0 + n - x)
        assert pe.get() == pytest.approx(want, rel=1e-9, abs=5e-12), (x, n)


def test_exceedance_without_data_is_the_prior():
    assert ExceedanceProbability(0.2, 2.0, 3.0).get() == pytest.approx(stats.beta.sf(0.2, 2.0, 3.0), rel=1e-12)


@settings(CI, max_examples=100)
@given(
    labels=st.lists(
        st.tuples(st.integers(0, 1), st.floats(0.01, 5.0)),
        min_size=1,
        max_size=60,
    ),
    budget=st.floats(0.01, 0.99),
    a0=st.sampled_from([0.5, 1.0, 3.0]),
    b0=st.sampled_from([0.5, 1.0, 7.0]),
)
def test_weighted_exceedance_uses_the_effective_sample_size(labels, budget, a0, b0):
    """n_eff = (sum w)^2 / sum w^2 and x = L * n_eff in the Beta posterior."""
    y = np.array([lab[0] for lab in labels], dtype=np.float64)
    w = np.array([lab[1] for lab in labels], dtype=np.float64)
    n_eff = w.sum() ** 2 / (w**2).sum()
    x = (w * y).sum() / w.sum() * n_eff
    pe = ExceedanceProbability(budget, a0, b0)
    loss = AlignmentLoss()
    for yi, wi in zip(y, w):
        pe.update(int(yi), float(wi))
        loss.update(int(yi), "act", float(wi))
    assert loss.n_eff == pytest.approx(n_eff, rel=1e-12)
    assert loss.get() == pytest.approx((w * y).sum() / w.sum(), rel=1e-12)
    assert 1.0 - 1e-12 <= n_eff <= len(labels) * (1 + 1e-12)
    assert pe.get() == pytest.approx(stats.beta.sf(budget, a0 + x, b0 + n_eff - x), rel=1e-8, abs=5e-12)


def test_effective_sample_size_of_equal_weights_is_the_count():
    for c in (0.25, 1.0, 3.0):
        loss = AlignmentLoss()
        for i in range(40):
            loss.update(i % 4 == 0, "hold", c)
        assert loss.n_eff == pytest.approx(40.0, rel=1e-12)
        assert exceedance(loss.wy, loss.w, loss.w2, 0.2) == pytest.approx(stats.beta.sf(0.2, 1 + 10, 1 + 30), rel=1e-9)


# --------------------------------------------------------------------------- calibration


@st.composite
def scored_labels(draw, min_size=1, max_size=80, quarter_weights=False):
    """(score, y*, weight) triples; scores anywhere in [0, 1] including both ends."""
    n = draw(st.integers(min_size, max_size))
    score = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0))
    weight = st.integers(1, 20).map(lambda k: k / 4.0) if quarter_weights else st.floats(0.01, 5.0)
    return draw(st.lists(st.tuples(score, st.integers(0, 1), weight), min_size=n, max_size=n))


@settings(CI, max_examples=60)
@given(data=scored_labels())
def test_brier_matches_sklearn(data):
    s, y, w = (np.array(col, dtype=np.float64) for col in zip(*data))
    b = BrierScore()
    for si, yi, wi in data:
        b.update(si, yi, wi)
    assert b.get() == pytest.approx(brier_score_loss(y.astype(int), s, sample_weight=w, labels=[0, 1]), rel=1e-10, abs=1e-14)


def test_brier_empty_is_nan():
    assert math.isnan(BrierScore().get())


@st.composite
def off_edge_labels(draw, n_bins, quarter_weights=False, max_size=80):
    """Scores at least 1e-9 (in fact >= 1e-8) away from every bin edge and < 1: binning is unambiguous."""
    n = draw(st.integers(1, max_size))
    weight = st.integers(1, 20).map(lambda k: k / 4.0) if quarter_weights else st.floats(0.01, 5.0)
    out = []
    for _ in range(n):
        b = draw(st.integers(0, n_bins - 1))
        u = draw(st.floats(1e-6, 1.0 - 1e-6))
        s = (b + u) / n_bins
        assert min(abs(s - j / n_bins) for j in range(n_bins + 1)) > 1e-9 and s < 1.0
        out.append((s, draw(st.integers(0, 1)), draw(weight)))
    return out


def numpy_ece(s, y, w, n_bins):
    """ECE written out bin by bin: sum_b (W_b / W) |mean y*_b - mean s_b| with edge-based binning."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, n_bins - 1)
    total, ece = w.sum(), 0.0
    for k in range(n_bins):
        m = b == k
        wb = w[m].sum()
        if wb > 0:
            ece += wb / total * abs(np.average(y[m], weights=w[m]) - np.average(s[m], weights=w[m]))
    return ece


@settings(CI, max_examples=100)
@given(n_bins=st.sampled_from([2, 5, 10, 20, 37]), data=st.data())
def test_ece_matches_numpy_bin_by_bin(n_bins, data):
    triples = data.draw(off_edge_labels(n_bins))
    # plus the exact endpoints: 0 in the first bin, 1 joins the top bin
    triples += data.draw(st.lists(st.tuples(st.sampled_from([0.0, 1.0]), st.integers(0, 1), st.floats(0.01, 5.0)), max_size=4))
    s, y, w = (np.array(col, dtype=np.float64) for col in zip(*triples))
    e = ExpectedCalibrationError(n_bins)
    for si, yi, wi in triples:
        e.update(si, int(yi), wi)
    assert e.get() == pytest.approx(numpy_ece(s, y, w, n_bins), rel=1e-9, abs=1e-13)


def test_histogram_edges():
    h = LabelHistogram(n_bins=4)
    h.update(0.0, 0)
    h.update(1.0, 1)
    h.update(0.25 + 1e-9, 1, weight=2.0)
    assert h.neg == [1.0, 0.0, 0.0, 0.0] and h.pos == [0.0, 2.0, 0.0, 1.0]
    assert math.isnan(ExpectedCalibrationError(4).get())


def brute_force_costs(s, y, w, edges, c_fp, c_fn):
    """Cost of 'act iff s >= t' for each candidate t, straight from the raw scores."""
    return np.array([c_fp * w[(y == 0) & (s >= t)].sum() + c_fn * w[(y == 1) & (s < t)].sum() for t in edges])


@st.composite
def costs(draw, quarter=False):
    c = st.integers(0, 20).map(lambda k: k / 4.0) if quarter else st.floats(0.0, 5.0)
    c_fp, c_fn = draw(c), draw(c)
    if c_fp + c_fn == 0:
        c_fn = 1.0
    return c_fp, c_fn


def decisions_under(draw, s, tau):
    """The decision each label was taken with: mostly by `tau`, sometimes another tau, sometimes deferred."""
    out = []
    for si in s:
        t = draw(st.one_of(st.just(tau), st.just(tau), st.floats(0.0, 1.0)))
        out.append(draw(st.sampled_from(["abstain"]) | st.just("act" if si >= t else "hold")))
    return np.array(out)


def threshold_from(triples, decisions, n_bins, c_fp, c_fn):
    t = CostOptimalThreshold(n_bins, c_fp, c_fn)
    for (si, yi, wi), d in zip(triples, decisions):
        t.update(si, int(yi), wi, decision=d)
    return t


def cost_now(y, w, d, c_fp, c_fn):
    """Cost of the decisions taken: acted y* = 0, held y* = 1; deferrals cost nothing."""
    return c_fp * w[(d == "act") & (y == 0)].sum() + c_fn * w[(d == "hold") & (y == 1)].sum()


@settings(CI, max_examples=150)
@given(
    n_bins=st.sampled_from([2, 4, 5, 10, 20]),
    c=costs(),
    tau=st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0)),
    data=st.data(),
)
def test_cost_optimal_threshold_matches_brute_force(n_bins, c, tau, data):
    c_fp, c_fn = c
    triples = data.draw(off_edge_labels(n_bins))
    s, y, w = (np.array(col, dtype=np.float64) for col in zip(*triples))
    d = decisions_under(data.draw, s, tau)
    t = threshold_from(triples, d, n_bins, c_fp, c_fn)
    edges = np.arange(n_bins) / n_bins  # edge 1 is no candidate
    brute = brute_force_costs(s, y, w, edges, c_fp, c_fn)
    assert np.allclose(t.costs(), brute, rtol=1e-10, atol=1e-10)
    now = cost_now(y, w, d, c_fp, c_fn)
    tau_star, saved, lo = t.get(tau, n_eff=w.sum() ** 2 / (w**2).sum())
    tol = 1e-9 * (1.0 + (c_fp + c_fn) * w.sum())
    if tau_star == tau and saved == 0.0:
        assert brute.min() >= now - tol - 1e-10, "an edge beats the decisions taken, but tau* stays"
        assert lo == 0.0
        return
    j_star = round(tau_star * n_bins)
    assert tau_star == j_star / n_bins and 0 <= j_star < n_bins
    assert brute[j_star] <= brute.min() + tol + 1e-10, "tau* does not achieve the minimal cost"
    assert saved == pytest.approx((now - brute[j_star]) / w.sum(), rel=1e-9, abs=1e-10)
    assert saved > 0 and lo <= saved
    # advice changes a decision: some label taken on act/hold is decided otherwise at tau*
    taken = d != "abstain"
    assert np.any((s[taken] >= tau_star) != (d[taken] == "act"))


@settings(CI, max_examples=150)
@given(
    n_bins=st.sampled_from([2, 4, 5, 10, 20]),
    c=costs(quarter=True),
    tau=st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0)),
    data=st.data(),
)
def test_cost_optimal_threshold_tie_rule(n_bins, c, tau, data):
    """With exactly representable weights and costs, ties are exact: tau* moves only if an edge
    costs less than the decisions taken, and among the edges of minimal cost it is the one
    nearest tau, then the lower one."""
    c_fp, c_fn = c
    triples = data.draw(off_edge_labels(n_bins, quarter_weights=True, max_size=30))
    s, y, w = (np.array(col, dtype=np.float64) for col in zip(*triples))
    d = decisions_under(data.draw, s, tau)
    t = threshold_from(triples, d, n_bins, c_fp, c_fn)
    brute = brute_force_costs(s, y, w, np.arange(n_bins) / n_bins, c_fp, c_fn)
    now = cost_now(y, w, d, c_fp, c_fn)
    tau_star, saved, _ = t.get(tau, n_eff=1.0)
    if not brute.min() < now:
        assert (tau_star, saved) == (tau, 0.0), "must not move when no edge beats the decisions taken"
        return
    ties = np.flatnonzero(brute == brute.min())
    expected = min(ties, key=lambda j: (abs(j - tau * n_bins), j))
    assert tau_star == expected / n_bins
    assert saved == (now - brute[expected]) / w.sum()


def test_cost_saved_lo_by_hand():
    """Ten labels at 0.59, eight wanting hold, all acted on at tau = 0.58: moving to 0.6 saves
    0.6 per label; the bound is 0.6 - z * sqrt(var / n) with z one-sided at 0.95 over 20 edges."""
    t = CostOptimalThreshold(20)
    for k in range(10):
        t.update(0.59, int(k < 2), decision="act")
    tau_star, saved, lo = t.get(0.58, n_eff=10.0, confidence=0.95)
    z = stats.norm.ppf(1 - 0.05 / 20)
    var = (8 * 1.0 + 2 * 1.0) / 10 - 0.6**2
    assert (tau_star, saved) == (0.6, pytest.approx(0.6))
    assert lo == pytest.approx(0.6 - z * math.sqrt(var / 10), rel=1e-12)


def test_cost_optimal_threshold_undefined_without_labels():
    t = CostOptimalThreshold(10)
    assert all(math.isnan(v) for v in t.get(0.5, n_eff=0.0))
    t.update(0.3, 1, decision="hold")
    assert all(math.isnan(v) for v in t.get(math.nan, n_eff=1.0))


def test_tie_tolerance_is_small():
    assert 0 < TIE_TOLERANCE <= 1e-6


# --------------------------------------------------------------------------- doctests

DOCTEST_MODULES = [kernels.layout.__name__, "kernels.detector", "kernels.scenario_index", "kernels.label_states",
                   "kernels.digest_map", "kernels.murmur3", "kernels.held_ids"] + [
    m.name for m in pkgutil.iter_modules(kernels.reference.__path__, prefix="kernels.reference.")
]


def test_doctest_module_list_is_complete():
    for name in ("intervals", "calibration", "sequential", "fidelity", "loss", "rates", "counts", "window"):
        assert f"kernels.reference.{name}" in DOCTEST_MODULES


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, verbose=False, report=True, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"
