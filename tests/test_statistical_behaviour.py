"""Statistical behaviour of the monitor, by seeded numpy simulation (fast, reproducible).

* 95% Wilson intervals cover the true loss about 95% of the time;
* the CUSUM retrain rule keeps its false-alarm guarantee over a day of windows
  when the loss sits exactly at the budget, where a naive per-window
  "p_exceed >= 0.95" rule almost surely raises a false alarm;
* the CUSUM detects a step drift within a few windows;
* bad input is rejected with a clear error before any kernel sees it.

Run with `-s` to see the coverage table and the detection delays.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from kernels.batch import BatchError, FeedbackBatch, ScoreBatch, apply
from kernels.derive import derive, interval
from kernels.layout import StateLayout
from kernels.params import StatsParams
from kernels.reference.intervals import ExceedanceProbability, wilson_interval
from kernels.reference.sequential import MixtureSR, alternatives, llr_weights, sr_threshold
from kernels.sequential import first_alarms

SEED = 20_240_601

# --------------------------------------------------------------------------- interval coverage

COVERAGE_NS = (50, 200, 1000)
COVERAGE_LS = (0.05, 0.1, 0.3)
COVERAGE_REPS = 4000


def exact_wilson_coverage(n: int, loss: float, params: StatsParams) -> float:
    """P(L in interval) summed over the binomial distribution of the override count."""
    x = np.arange(n + 1, dtype=np.float64)
    lo, hi = interval(x / n, np.full(n + 1, float(n)), params)
    return float(stats.binom.pmf(x, n, loss)[(lo <= loss) & (loss <= hi)].sum())


def test_wilson_coverage_is_nominal():
    params = StatsParams(confidence=0.95, interval="wilson")
    rng = np.random.default_rng(SEED)
    rows, failures = [], []
    for n in COVERAGE_NS:
        for loss in COVERAGE_LS:
            x = rng.binomial(n, loss, size=COVERAGE_REPS).astype(np.float64)
            lo, hi = interval(x / n, np.full(COVERAGE_REPS, float(n)), params)
            covered = (lo <= loss) & (loss <= hi)
            cov = float(covered.mean())
            exact = exact_wilson_coverage(n, loss, params)
            rows.append((n, loss, cov, exact))
            # the simulation agrees with the exact coverage (checks the draws and the vectorised interval) ...
            se = math.sqrt(exact * (1 - exact) / COVERAGE_REPS)
            if abs(cov - exact) > 4 * se:
                failures.append(f"n={n} L={loss}: simulated {cov:.4f} vs exact {exact:.4f}")
            # ... and is within 93%..97%, wherever the exact coverage itself is (Wilson coverage
            # oscillates with n*L because x is discrete; exact values outside the band are reported).
            if 0.93 <= exact <= 0.97 and not 0.93 <= cov <= 0.97:
                failures.append(f"n={n} L={loss}: coverage {cov:.4f} outside [0.93, 0.97]")
    # spot-check the vectorised interval against the scalar reference on one replication set
    for x in (0, 3, 17, 50):
        lo, hi = interval(np.array([x / 50]), np.array([50.0]), params)
        assert (lo[0], hi[0]) == pytest.approx(wilson_interval(x / 50, 50, 0.95), rel=1e-12, abs=1e-15)

    print(f"\n95% Wilson interval coverage ({COVERAGE_REPS} binomial replications per cell)")
    print(f"{'n':>6} {'L':>6} {'simulated':>10} {'exact':>8}")
    for n, loss, cov, exact in rows:
        note = "" if 0.93 <= exact <= 0.97 else "   (exact coverage outside [0.93, 0.97])"
        print(f"{n:>6} {loss:>6.2f} {cov:>10.4f} {exact:>8.4f}{note}")
    assert not failures, "\n".join(failures)
    assert sum(0.93 <= exact <= 0.97 for *_, exact in rows) >= len(rows) - 1


# --------------------------------------------------------------------------- CUSUM false alarms

LABELS_PER_WINDOW = 50
HORIZON = 288  # a day of 5-minute windows
FA_REPS = 2000


def p_exceed_table(m: int, params: StatsParams) -> np.ndarray:
    """p_exceed of a window with x overrides among m unit-weight labels, x = 0..m,
    computed by the real pipeline: one state row per x, built by `apply`, read by `derive`."""
    layout = StateLayout()
    state = layout.zeros(m + 1)
    slots = np.repeat(np.arange(m + 1), m)
    kind = np.concatenate([np.r_[np.ones(x), np.zeros(m - x)] for x in range(m + 1)]).astype(np.int8)
    n = slots.size
    z = np.zeros(n, dtype=np.int8)
    apply(state, ScoreBatch.empty(), FeedbackBatch(slots, kind, z, z, z, np.full(n, 0.5), np.ones(n)))
    out = derive(state, layout, params)
    assert out["n_labels"].tolist() == [float(m)] * (m + 1)
    assert out["override_weight"].tolist() == [float(x) for x in range(m + 1)]
    return out["p_exceed"]


def test_naive_per_window_rule_alarms_within_a_day_at_the_budget():
    """Why the rules are sequential: checking p_exceed >= 0.95 in every window while the
    loss sits exactly at the budget alarms within a day in most runs."""
    budget = 0.10
    rng = np.random.default_rng([SEED, 100])
    x = rng.binomial(LABELS_PER_WINDOW, budget, size=(FA_REPS, HORIZON))
    params = StatsParams(l_budget=budget, a0=1.0, b0=1.0)
    table = p_exceed_table(LABELS_PER_WINDOW, params)
    for k in (0, 5, 12, 50):  # the pipeline agrees with the scalar reference
        pe = ExceedanceProbability(budget, 1.0, 1.0)
        for y in [1] * k + [0] * (LABELS_PER_WINDOW - k):
            pe.update(y)
        assert table[k] == pytest.approx(pe.get(), rel=1e-9, abs=1e-12)
    naive_rate = float((table[x] >= 0.95).any(axis=1).mean())
    se = math.sqrt(naive_rate * (1 - naive_rate) / FA_REPS)
    assert naive_rate > 0.5, f"naive rule: P(false alarm within a day) {naive_rate:.3f} ± {se:.3f}"


def brute_force_sr(p0: float, p1s: list[float], windows: list[tuple[float, float]]) -> list[float]:
    """The Shiryaev-Roberts statistic from its definition, R_n = sum_k prod_{j=k..n} LR_j,
    mixed over the alternatives with equal weights: log R after each window."""
    out = []
    for n in range(1, len(windows) + 1):
        total = 0.0
        for p1 in p1s:
            up, down = llr_weights(p0, p1)
            for k in range(n):
                total += math.exp(sum(x * up + (m - x) * down for x, m in windows[k:n])) / len(p1s)
        out.append(math.log(total))
    return out


def test_mixture_sr_is_the_shiryaev_roberts_statistic_of_its_definition():
    rng = np.random.default_rng(SEED + 3)
    windows = [(float(x), float(m)) for m, x in zip(rng.integers(0, 30, 25), rng.integers(0, 8, 25)) if x <= m]
    d = MixtureSR(0.1, log_threshold=1e9)
    got = []
    for x, m in windows:
        d.update(x, m)
        got.append(d.get())
    want = brute_force_sr(0.1, alternatives(0.1), windows)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert d.peek([(3.0, 10.0), (1.0, 4.0)]) == pytest.approx(
        brute_force_sr(0.1, alternatives(0.1), windows + [(3.0, 10.0), (1.0, 4.0)])[-1], rel=1e-9)


@pytest.mark.parametrize("rate, poisson, upper", [(1.0, False, True), (0.0, False, True), (0.0, True, False)])
def test_batch_detector_alarms_where_the_reference_does(rate, poisson, upper):
    """`kernels.sequential.first_alarms` is the batch version of `MixtureSR`: on streams
    whose draws are certain (rates 0 or 1) both alarm at the same window, or neither."""
    p0 = 0.3
    d = MixtureSR(p0, sr_threshold(HORIZON, 0.05), upper=upper, poisson=poisson)
    want = -1
    for t in range(HORIZON):
        if d.update(rate * 20, 20.0):
            want = t
            break
    got = first_alarms(p0, np.array(d.p1), d.log_threshold, np.full(HORIZON, rate), 20, 3, 0, poisson=poisson)
    assert got.tolist() == [want] * 3
    if rate == 0.0 and upper:
        assert want == -1
    else:
        assert want >= 0


def test_capped_weights_keep_every_label_at_most_one_observation():
    """Per window the detector reads sum min(w, 1) y and sum min(w, 1): a label of weight
    1000 moves it exactly as a label of weight 1 does."""
    layout = StateLayout()
    state = layout.zeros(2)
    kind = np.array([1, 0, 0, 1, 0, 0], np.int8)
    z = np.zeros(6, np.int8)
    weights = np.array([1000.0, 1000.0, 1000.0, 1.0, 1.0, 1.0])
    apply(state, ScoreBatch.empty(), FeedbackBatch(np.repeat([0, 1], 3), kind, z, z, z, np.full(6, 0.5), weights))
    out = derive(state, layout, StatsParams())
    assert out["weight_capped"].tolist() == [3.0, 3.0]
    assert out["override_weight_capped"].tolist() == [1.0, 1.0]
    assert out["weight_sum"].tolist() == [3000.0, 3.0]


# --------------------------------------------------------------------------- bad input


N_SLOTS = 3


def good_scores(n: int = 3) -> dict:
    return dict(slot=np.arange(n) % N_SLOTS, decision=np.zeros(n, np.int8), tau=np.full(n, 0.5))


def good_feedback(n: int = 3) -> dict:
    z = np.zeros(n, np.int8)
    return dict(
        slot=np.arange(n) % N_SLOTS, kind=z, source=z, decision=z, preferred=z, score=np.full(n, 0.5), weight=np.ones(n)
    )


def _rejected(column: str, scores=None, feedback=None):
    """apply() must raise BatchError naming `column` and leave the state untouched."""
    state = StateLayout(5).zeros(N_SLOTS)
    with pytest.raises(BatchError, match=rf"^{column}\["):
        apply(
            state,
            ScoreBatch(**(scores or good_scores())),
            FeedbackBatch(**(feedback or good_feedback())),
        )
    assert not state.any(), "a rejected batch must not reach the kernel"


def test_good_batches_are_accepted():
    state = StateLayout(5).zeros(N_SLOTS)
    apply(state, ScoreBatch(**good_scores()), FeedbackBatch(**good_feedback()))
    assert state.sum() > 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -0.1, 1.1])
def test_bad_score_rejected(bad):
    fb = good_feedback()
    fb["score"] = np.array([0.5, bad, 0.5])
    _rejected("score", feedback=fb)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan, -0.0])
def test_bad_weight_rejected(bad):
    fb = good_feedback()
    fb["weight"] = np.array([1.0, 1.0, bad])
    _rejected("weight", feedback=fb)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.1, 1.1])
def test_bad_tau_rejected(bad):
    sc = good_scores()
    sc["tau"] = np.array([bad, 0.5, 0.5])
    _rejected("tau", scores=sc)


@pytest.mark.parametrize("column,bad", [("kind", 3), ("kind", -1), ("source", 4), ("source", -1), ("decision", 3), ("decision", -1), ("preferred", 3)])
def test_unknown_feedback_code_rejected(column, bad):
    fb = good_feedback()
    fb[column] = np.array([0, 0, bad], dtype=np.int8)
    _rejected(column, feedback=fb)


@pytest.mark.parametrize("bad", [3, -1, 7])
def test_unknown_decision_code_in_scores_rejected(bad):
    sc = good_scores()
    sc["decision"] = np.array([0, bad, 0])
    _rejected("decision", scores=sc)


@pytest.mark.parametrize("bad", [N_SLOTS, N_SLOTS + 10, -2])
def test_slot_beyond_state_rejected(bad):
    sc, fb = good_scores(), good_feedback()
    sc["slot"] = np.array([0, 1, bad])
    _rejected("slot", scores=sc)
    fb["slot"] = np.array([bad, 1, 0])
    _rejected("slot", feedback=fb)


def test_error_message_names_row_and_value():
    fb = good_feedback()
    fb["score"] = np.array([0.5, 0.5, 1.5])
    with pytest.raises(BatchError, match=r"score\[2\].*1\.5"):
        FeedbackBatch(**fb).check(N_SLOTS)


@pytest.mark.parametrize("column", ["slot", "decision", "tau"])
def test_score_columns_of_different_lengths_rejected(column):
    sc = good_scores()
    sc[column] = sc[column][:2]
    with pytest.raises(BatchError, match=r"differ in length.*" + column):
        ScoreBatch(**sc)


@pytest.mark.parametrize("column", ["slot", "kind", "source", "decision", "preferred", "score", "weight"])
def test_feedback_columns_of_different_lengths_rejected(column):
    fb = good_feedback()
    fb[column] = np.r_[fb[column], fb[column][:1]]
    with pytest.raises(BatchError, match=r"differ in length.*" + column):
        FeedbackBatch(**fb)


@pytest.mark.parametrize("column,bad", [("kind", 256), ("kind", 259), ("source", 260), ("decision", 257), ("preferred", 513)])
def test_out_of_range_code_is_not_silently_wrapped(column, bad):
    """Codes arrive as int64 from the decoder; 256 must not wrap to the valid int8 code 0."""
    fb = good_feedback()
    fb[column] = np.array([0, 0, bad], dtype=np.int64)
    state = StateLayout(5).zeros(N_SLOTS)
    with pytest.raises((BatchError, OverflowError, ValueError)):
        apply(state, ScoreBatch.empty(), FeedbackBatch(**fb))
    assert not state.any()


@pytest.mark.parametrize("column", ["kind", "source", "decision", "preferred"])
def test_non_integer_codes_are_not_truncated(column):
    """1.7 must not silently become code 1."""
    fb = good_feedback()
    fb[column] = np.array([0.0, 1.7, 0.0])
    with pytest.raises(BatchError, match=column):
        FeedbackBatch(**fb)


def test_bad_input_is_a_value_error():
    assert issubclass(BatchError, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(l_budget=0.0),
        dict(l_budget=1.0),
        dict(l_budget=-0.1),
        dict(l_budget=math.nan),
        dict(confidence=0.0),
        dict(confidence=1.0),
        dict(confidence=math.nan),
        dict(interval="agresti"),
        dict(interval="WILSON"),
        dict(a0=0.0),
        dict(b0=-1.0),
        dict(c_fp=-1.0),
        dict(c_fn=-0.5),
        dict(c_fp=0.0, c_fn=0.0),
    ],
)
def test_bad_stats_params_rejected(kwargs):
    with pytest.raises(ValueError):
        StatsParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [dict(a0=math.nan), dict(b0=math.nan), dict(c_fp=math.nan), dict(c_fn=math.nan), dict(a0=math.inf), dict(c_fn=math.inf)]
)
def test_non_finite_stats_params_rejected(kwargs):
    """A NaN/inf prior or cost would silently make p_exceed / tau* meaningless."""
    with pytest.raises(ValueError):
        StatsParams(**kwargs)


def test_state_layout_rejects_bad_bins():
    for b in (0, 1, 1001):
        with pytest.raises(ValueError):
            StateLayout(b)


def test_derive_rejects_wrong_shape():
    layout = StateLayout(5)
    with pytest.raises(ValueError, match="shape"):
        derive(np.zeros((2, layout.width + 1)), layout, StatsParams())
    with pytest.raises(ValueError, match="shape"):
        derive(np.zeros(layout.width), layout, StatsParams())
