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
from kernels.reference.sequential import BernoulliCUSUM, cusum_threshold, llr_weights

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


def vectorised_cusum(x: np.ndarray, m: int, p0: float, p1: float, h: float):
    """Bernoulli CUSUM over windows, all replications at once.

    x: (reps, windows) override counts out of m unit-weight labels per window.
    Returns the per-window alarm matrix and the statistic after each window,
    with the same floating-point operations, in the same order, as
    `BernoulliCUSUM.update` (so the results are bit-identical).
    """
    up, down = llr_weights(p0, p1)
    reps, windows = x.shape
    s = np.zeros(reps)
    alarms = np.zeros((reps, windows), dtype=bool)
    trace = np.zeros((reps, windows))
    for t in range(windows):
        wy = x[:, t]
        s = np.maximum(0.0, s + wy * up + (m - wy) * down)
        hit = s >= h
        s = np.where(hit, 0.0, s)
        alarms[:, t] = hit
        trace[:, t] = s
    return alarms, trace


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


@pytest.mark.parametrize("budget", [0.05, 0.10, 0.20])
def test_cusum_false_alarm_rate_at_the_budget(budget):
    """Loss exactly at the budget (the worst case under H0): the CUSUM false-alarm
    probability over the horizon is at most alpha = 0.05, whereas checking
    p_exceed >= 0.95 in every window almost surely alarms."""
    alpha = 0.05
    p0, p1 = budget, 2 * budget
    h = cusum_threshold(HORIZON, alpha)
    assert h == pytest.approx(math.log(HORIZON / alpha))
    rng = np.random.default_rng([SEED, int(budget * 1000)])
    x = rng.binomial(LABELS_PER_WINDOW, budget, size=(FA_REPS, HORIZON)).astype(np.float64)

    alarms, trace = vectorised_cusum(x, LABELS_PER_WINDOW, p0, p1, h)
    cusum_rate = float(alarms.any(axis=1).mean())

    # the vectorised loop is the reference CUSUM, bit for bit, on a few replications
    # (including ones that alarmed, if any did)
    check = sorted(set(range(5)) | set(np.flatnonzero(alarms.any(axis=1))[:3].tolist()))
    for r in check:
        c = BernoulliCUSUM(p0, p1, h)
        for t in range(HORIZON):
            assert c.update(wy=x[r, t], w=float(LABELS_PER_WINDOW)) == alarms[r, t]
            assert c.get() == trace[r, t]

    params = StatsParams(l_budget=budget, a0=1.0, b0=1.0)
    table = p_exceed_table(LABELS_PER_WINDOW, params)
    for k in (0, 5, 12, 50):  # the pipeline agrees with the scalar reference
        pe = ExceedanceProbability(budget, 1.0, 1.0)
        for y in [1] * k + [0] * (LABELS_PER_WINDOW - k):
            pe.update(y)
        assert table[k] == pytest.approx(pe.get(), rel=1e-9, abs=1e-12)
    naive = table[x.astype(np.int64)] >= 0.95
    naive_rate = float(naive.any(axis=1).mean())
    per_window = float(naive.mean())

    print(
        f"\nbudget {budget:.2f}: P(false alarm within {HORIZON} windows) "
        f"CUSUM(h={h:.2f}) {cusum_rate:.4f} (bound {HORIZON * math.exp(-h):.3f}); "
        f"naive p_exceed>=0.95 {naive_rate:.4f} (per window {per_window:.4f})"
    )
    assert cusum_rate <= alpha
    assert naive_rate > 0.5


def test_cusum_reference_matches_vectorised_on_weighted_sums():
    """Non-integer window sums (weighted labels) also match bit for bit."""
    rng = np.random.default_rng(SEED + 1)
    w = rng.uniform(20.0, 60.0, size=(4, 200))
    wy = w * rng.uniform(0.0, 0.4, size=w.shape)
    p0, p1, h = 0.1, 0.2, cusum_threshold(288, 0.05)
    up, down = llr_weights(p0, p1)
    for r in range(4):
        c = BernoulliCUSUM(p0, p1, h)
        s = np.zeros(1)
        for t in range(w.shape[1]):
            alarm = c.update(wy=wy[r, t], w=w[r, t])
            s = np.maximum(0.0, s + wy[r, t] * up + (w[r, t] - wy[r, t]) * down)
            assert alarm == bool(s[0] >= h)
            s = np.where(s >= h, 0.0, s)
            assert c.get() == s[0]


# --------------------------------------------------------------------------- CUSUM detection delay


def test_cusum_detects_step_drift_quickly():
    budget, before, after = 0.10, 0.05, 0.20
    change, extra, reps = 100, 50, 500
    h = cusum_threshold(HORIZON, 0.05)
    rng = np.random.default_rng(SEED + 2)
    loss = np.r_[np.full(change, before), np.full(extra, after)]
    x = rng.binomial(LABELS_PER_WINDOW, loss, size=(reps, change + extra)).astype(np.float64)
    alarms, _ = vectorised_cusum(x, LABELS_PER_WINDOW, budget, 2 * budget, h)
    post = alarms[:, change:]
    detected = post.any(axis=1)
    # delay in windows: 1 = alarm at the first window after the step
    delay = np.where(detected, post.argmax(axis=1) + 1, np.inf)
    mean_delay = float(delay.mean())
    p90 = float(np.percentile(delay, 90))
    pre_alarms = float(alarms[:, :change].any(axis=1).mean())
    print(
        f"\nstep drift {before} -> {after} at window {change} ({LABELS_PER_WINDOW} labels/window, h={h:.2f}): "
        f"detection delay mean {mean_delay:.2f} windows, 90th percentile {p90:.0f}, max {delay.max():.0f}; "
        f"detected {detected.mean():.1%}; runs with an alarm before the step {pre_alarms:.1%}"
    )
    assert detected.all(), f"{(~detected).sum()} replications not detected within {extra} windows"
    assert np.isfinite(mean_delay) and mean_delay < 10


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
