"""The numba batch kernels against the pure-Python composite reference.

`kernels.update.update` (through `kernels.batch.apply`) followed by
`kernels.derive.derive` must give, for every state row, exactly what
`kernels.reference.window.WindowReference` gives when fed the same events
one at a time, and states must merge like the references do (addition).
All property tests are derandomized so CI runs are reproducible.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.batch import FeedbackBatch, ScoreBatch, apply
from kernels.derive import derive
from kernels.layout import DECISIONS, FB_LAG, KINDS, LAG_PANES, PREFERRED, SOURCES, StateLayout
from kernels.params import StatsParams
from kernels.reference.window import WindowReference
from kernels.update import merge_rows, sum_rows

CI = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

RTOL, ATOL = 1e-9, 1e-12

# --------------------------------------------------------------------------- strategies

unit_scores = st.one_of(
    st.sampled_from([0.0, 1.0, 0.5, 0.05, 0.15, 0.25, 0.95, 0.999999, 1e-12]),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
)
# Weights in (0, 5], bounded below by 1e-6: with subnormal weights (~1e-323) the kernel's
# (w * e) * e and the reference's w * (e * e) round differently in the last (subnormal) bit,
# e.g. Brier 1.0 vs 0.5 for one feedback of weight 1e-323 -- float underflow, not a kernel bug.
weights = st.one_of(
    st.sampled_from([1.0, 0.25, 0.5, 2.0, 5.0, 1e-6]),
    st.floats(min_value=1e-6, max_value=5.0, allow_nan=False),
)
taus = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 0.3]), st.floats(min_value=0.0, max_value=1.0))


def score_event(n_slots: int):
    # slot -1 means "skip" (the window assigner dropped the event); it must touch nothing.
    slot = st.one_of(st.integers(0, n_slots - 1), st.just(-1)) if n_slots > 1 else st.sampled_from([0, 0, 0, -1])
    return st.tuples(st.just("score"), slot, st.integers(0, len(DECISIONS) - 1), taus)


def feedback_event(n_slots: int):
    slot = st.one_of(st.integers(0, n_slots - 1), st.just(-1)) if n_slots > 1 else st.sampled_from([0, 0, 0, -1])
    return st.tuples(
        st.just("feedback"),
        slot,
        st.integers(0, len(KINDS) - 1),
        st.integers(0, len(SOURCES) - 1),
        st.integers(0, len(DECISIONS) - 1),
        st.integers(0, len(PREFERRED) - 1),  # code 0 is "" (no preference)
        unit_scores,
        weights,
        st.booleans(),  # a repeat: a second label of its decision
        st.integers(-1, LAG_PANES + 2),  # panes since its decision's (-1: unknown)
    )


def event_lists(n_slots: int, max_size: int = 60):
    return st.lists(st.one_of(score_event(n_slots), feedback_event(n_slots)), max_size=max_size)


@st.composite
def stats_params(draw):
    c_fp = draw(st.sampled_from([0.0, 1.0, 2.0, 0.5]) | st.floats(0.0, 5.0))
    c_fn = draw(st.sampled_from([1.0, 3.0, 0.25]) | st.floats(0.01, 5.0))
    return StatsParams(
        l_budget=draw(st.sampled_from([0.1, 0.05, 0.5]) | st.floats(0.001, 0.999)),
        confidence=draw(st.sampled_from([0.95, 0.9, 0.99])),
        interval=draw(st.sampled_from(["wilson", "jeffreys"])),
        a0=draw(st.sampled_from([1.0, 0.5, 2.0])),
        b0=draw(st.sampled_from([1.0, 0.5, 9.0])),
        c_fp=c_fp,
        c_fn=c_fn,
    )


@st.composite
def scenario(draw, max_slots: int = 20, max_events: int = 60):
    n_slots = draw(st.integers(1, max_slots))
    n_bins = draw(st.sampled_from([2, 3, 5, 10, 20]))
    events = draw(event_lists(n_slots, max_events))
    return n_slots, StateLayout(n_bins), events


# --------------------------------------------------------------------------- helpers


def batches(events, slot_map=None):
    """Column batches of an event list (score and feedback events, order kept within each)."""
    m = (lambda s: s) if slot_map is None else (lambda s: -1 if s < 0 else int(slot_map[s]))
    sc = [e for e in events if e[0] == "score"]
    fb = [e for e in events if e[0] == "feedback"]
    s = ScoreBatch(
        np.array([m(e[1]) for e in sc], dtype=np.int64),
        np.array([e[2] for e in sc], dtype=np.int8),
        np.array([e[3] for e in sc], dtype=np.float64),
    )
    f = FeedbackBatch(
        np.array([m(e[1]) for e in fb], dtype=np.int64),
        *(np.array([e[i] for e in fb], dtype=np.int8) for i in (2, 3, 4, 5)),
        np.array([e[6] for e in fb], dtype=np.float64),
        np.array([e[7] for e in fb], dtype=np.float64),
        repeat=np.array([len(e) > 8 and e[8] for e in fb], dtype=np.bool_),
        lag=np.array([e[9] if len(e) > 9 else -1 for e in fb], dtype=np.int64),
    )
    return s, f


def kernel_state(layout, n_slots, events, cuts=(), slot_map=None):
    """State from one `apply` call per chunk of `events` (chunks end at the sorted `cuts`)."""
    state = layout.zeros(n_slots)
    bounds = [0, *sorted(cuts), len(events)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        apply(state, *batches(events[a:b], slot_map))
    return state


def reference_windows(layout, n_slots, events, slot_map=None):
    refs = [WindowReference(layout.n_bins) for _ in range(n_slots)]
    for e in events:
        slot = e[1] if slot_map is None or e[1] < 0 else int(slot_map[e[1]])
        if slot < 0:
            continue
        if e[0] == "score":
            refs[slot].update_score(DECISIONS[e[2]], e[3])
        else:
            _, _, k, src, d, p, s, w, *rest = e
            repeat, lag = (rest + [False, -1])[:2]
            refs[slot].update_feedback(KINDS[k], SOURCES[src], DECISIONS[d], PREFERRED[p], s, w, repeat=repeat, lag=lag)
    return refs


def assert_same(a: float, b: float, what: str) -> None:
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        assert math.isnan(a) and math.isnan(b), f"{what}: kernel {a!r} vs reference {b!r}"
    else:
        assert np.isclose(a, b, rtol=RTOL, atol=ATOL), f"{what}: kernel {a!r} vs reference {b!r} (diff {a - b:.3g})"


def assert_matches_reference(state, layout, params, refs, tau=None):
    got = derive(state, layout, params, tau=tau)
    assert len(refs) == state.shape[0]
    for k, ref in enumerate(refs):
        assert state[k, FB_LAG:FB_LAG + LAG_PANES].tolist() == ref.lags.get(), f"slot {k} feedback by lag"
        # a NaN entry of an explicit `tau` means "no threshold set": both fall back to the mean
        want = ref.get(params, tau=None if tau is None else float(tau[k]))
        assert set(got) == set(want), set(got) ^ set(want)
        for field, value in want.items():
            assert got[field].shape == (state.shape[0],), field
            assert_same(got[field][k], value, f"slot {k} field {field!r} ({params})")


# --------------------------------------------------------------------------- kernel == reference


@settings(CI, max_examples=100)
@given(scn=scenario(), params=stats_params(), data=st.data())
def test_batched_kernel_equals_event_by_event_reference(scn, params, data):
    n_slots, layout, events = scn
    # random interleaving of the same events, and random batch boundaries
    events = data.draw(st.permutations(events), label="interleaving")
    cuts = data.draw(st.lists(st.integers(0, len(events)), max_size=5), label="cuts")
    state = kernel_state(layout, n_slots, events, cuts)
    refs = reference_windows(layout, n_slots, events)
    explicit_tau = data.draw(st.booleans(), label="explicit tau")
    tau = None
    if explicit_tau:
        tau = np.array(data.draw(st.lists(taus | st.just(math.nan), min_size=n_slots, max_size=n_slots), label="tau"))
    assert_matches_reference(state, layout, params, refs, tau)


@settings(CI, max_examples=30)
@given(scn=scenario(max_slots=6), data=st.data())
def test_both_interval_kinds_on_the_same_state(scn, data):
    """Same state derived under Wilson and Jeffreys: both equal their reference."""
    n_slots, layout, events = scn
    state = kernel_state(layout, n_slots, events)
    refs = reference_windows(layout, n_slots, events)
    c_fp = data.draw(st.floats(0.0, 5.0), label="c_fp")
    c_fn = data.draw(st.floats(0.01, 5.0), label="c_fn")
    budget = data.draw(st.floats(0.01, 0.99), label="l_budget")
    for interval in ("wilson", "jeffreys"):
        assert_matches_reference(state, layout, StatsParams(l_budget=budget, interval=interval, c_fp=c_fp, c_fn=c_fn), refs)


def test_nan_entries_of_explicit_tau_fall_back_to_the_mean_threshold():
    layout = StateLayout(5)
    events = [("score", 0, 0, 0.2), ("score", 0, 1, 0.6), ("score", 1, 0, 0.9)]
    events += [("feedback", k % 2, k % 2, 0, 0, 0, (k % 10) / 10, 1.0) for k in range(12)]
    state = kernel_state(layout, 2, events)
    params = StatsParams()
    default = derive(state, layout, params)
    mixed = derive(state, layout, params, tau=np.array([math.nan, 0.0]))
    assert mixed["tau"][0] == pytest.approx(0.4) and mixed["tau"][1] == 0.0
    for field in ("tau", "tau_star", "cost_saved"):
        assert_same(mixed[field][0], default[field][0], field)


def test_empty_state_matches_empty_reference():
    layout = StateLayout(10)
    for interval in ("wilson", "jeffreys"):
        assert_matches_reference(layout.zeros(3), layout, StatsParams(interval=interval), [WindowReference(10) for _ in range(3)])


def test_skipped_events_touch_nothing():
    layout = StateLayout(5)
    events = [("score", -1, 0, 0.5), ("feedback", -1, 1, 2, 0, 0, 0.3, 2.0)]
    assert not kernel_state(layout, 2, events).any()


# --------------------------------------------------------------------------- merging


@settings(CI, max_examples=40)
@given(
    n_slots=st.integers(1, 20),
    n_bins=st.sampled_from([2, 5, 20]),
    data=st.data(),
    params=stats_params(),
)
def test_merge_is_associative_and_order_independent(n_slots, n_bins, data, params):
    layout = StateLayout(n_bins)
    parts = [data.draw(event_lists(n_slots, 40), label=f"events {name}") for name in "ABC"]
    a, b, c = (kernel_state(layout, n_slots, ev) for ev in parts)
    rows = np.arange(n_slots, dtype=np.int64)

    def plus(x, y):
        out = x.copy()
        merge_rows(out, rows, y, rows)
        return out

    ab_c = plus(plus(a, b), c)
    a_bc = plus(a, plus(b, c))
    cba = plus(plus(c, b), a)
    assert np.allclose(ab_c, a_bc, rtol=1e-12, atol=1e-12)
    assert np.allclose(ab_c, cba, rtol=1e-12, atol=1e-12)
    # ... and equals the state of all events in one stream
    assert np.allclose(ab_c, kernel_state(layout, n_slots, parts[0] + parts[1] + parts[2]), rtol=1e-12, atol=1e-12)

    # derive(merged state) == reference after WindowReference.merge
    refs = [reference_windows(layout, n_slots, ev) for ev in parts]
    for k in range(n_slots):
        refs[0][k].merge(refs[1][k])
        refs[0][k].merge(refs[2][k])
    assert_matches_reference(ab_c, layout, params, refs[0])


@settings(CI, max_examples=60)
@given(
    n_src=st.integers(1, 20),
    n_dst=st.integers(1, 20),
    n_bins=st.sampled_from([2, 5, 20]),
    data=st.data(),
)
def test_merge_rows_with_key_remapping_equals_direct_build(n_src, n_dst, n_bins, data):
    """A partial state indexed by local keys, folded into a global index by merge_rows
    (several local rows may map to the same global row), equals building the global state."""
    layout = StateLayout(n_bins)
    events = data.draw(event_lists(n_src, 60), label="events")
    mapping = np.array(data.draw(st.lists(st.integers(0, n_dst - 1), min_size=n_src, max_size=n_src)), dtype=np.int64)
    src = kernel_state(layout, n_src, events)
    # the global state may already hold data
    prior = data.draw(event_lists(n_dst, 20), label="prior events")
    dst = kernel_state(layout, n_dst, prior)
    src_rows = np.array(data.draw(st.permutations(list(range(n_src)))), dtype=np.int64)
    merge_rows(dst, mapping[src_rows], src, src_rows)
    direct = kernel_state(layout, n_dst, prior + [e[:1] + (-1 if e[1] < 0 else int(mapping[e[1]]),) + e[2:] for e in events])
    assert np.allclose(dst, direct, rtol=1e-12, atol=1e-12)
    # the slot_map path of the helpers agrees as well
    assert np.allclose(kernel_state(layout, n_dst, events, slot_map=mapping) + kernel_state(layout, n_dst, prior), dst)


@settings(CI, max_examples=40)
@given(
    n_keys=st.integers(1, 20),
    n_partitions=st.integers(1, 6),
    n_bins=st.sampled_from([2, 5, 20]),
    data=st.data(),
    params=stats_params(),
)
def test_partitioned_stream_merges_to_single_stream(n_keys, n_partitions, n_bins, data, params):
    """Events spread over P partitions, each with its own state and its own local key index
    (keys numbered in order of first appearance), merged into one global state."""
    layout = StateLayout(n_bins)
    events = data.draw(event_lists(n_keys, 80), label="events")
    owner = data.draw(st.lists(st.integers(0, n_partitions - 1), min_size=len(events), max_size=len(events)))
    merged = layout.zeros(n_keys)
    for p in range(n_partitions):
        mine = [e for e, o in zip(events, owner) if o == p]
        local_of: dict[int, int] = {}
        for e in mine:
            if e[1] >= 0:
                local_of.setdefault(e[1], len(local_of))
        local = [e[:1] + (local_of.get(e[1], -1),) + e[2:] for e in mine]
        cuts = data.draw(st.lists(st.integers(0, len(local)), max_size=3), label=f"cuts {p}")
        part_state = kernel_state(layout, max(1, len(local_of)), local, cuts)
        glob = np.array(list(local_of.keys()), dtype=np.int64)
        loc = np.array(list(local_of.values()), dtype=np.int64)
        merge_rows(merged, glob, part_state, loc)
    single = kernel_state(layout, n_keys, events)
    assert np.allclose(merged, single, rtol=1e-12, atol=1e-12)
    assert_matches_reference(merged, layout, params, reference_windows(layout, n_keys, events))


@settings(CI, max_examples=60)
@given(
    n_slots=st.integers(1, 20),
    n_bins=st.sampled_from([2, 5, 20]),
    data=st.data(),
)
def test_sum_rows_equals_numpy_sum(n_slots, n_bins, data):
    layout = StateLayout(n_bins)
    state = kernel_state(layout, n_slots, data.draw(event_lists(n_slots, 60), label="events"))
    rows = np.array(data.draw(st.lists(st.integers(0, n_slots - 1), max_size=25), label="rows"), dtype=np.int64)
    out = np.full(layout.width, 123.0)  # sum_rows must overwrite, not accumulate
    sum_rows(state, rows, out)
    assert np.allclose(out, state[rows].sum(axis=0), rtol=1e-12, atol=1e-12)


@settings(CI, max_examples=30)
@given(n_panes=st.integers(1, 8), n_bins=st.sampled_from([2, 10]), data=st.data(), params=stats_params())
def test_hopping_window_from_panes_equals_reference_of_all_events(n_panes, n_bins, data, params):
    """sum_rows over tumbling panes == one reference fed every event of those panes."""
    layout = StateLayout(n_bins)
    events = data.draw(event_lists(n_panes, 60), label="events")
    state = kernel_state(layout, n_panes, events)
    out = np.empty(layout.width)
    sum_rows(state, np.arange(n_panes, dtype=np.int64), out)
    ref = reference_windows(layout, 1, [e[:1] + (0 if e[1] >= 0 else -1,) + e[2:] for e in events])
    assert_matches_reference(out[None, :], layout, params, ref)


@pytest.mark.parametrize("interval", ["wilson", "jeffreys"])
def test_known_small_window(interval):
    """A hand-checkable window: 4 decisions, like/override/abstain feedback, one audit label."""
    layout = StateLayout(10)
    events = [
        ("score", 0, 0, 0.5),
        ("score", 0, 1, 0.5),
        ("score", 0, 2, 0.7),
        ("score", 0, 0, 0.3),
        ("feedback", 0, 1, 0, 0, 0, 0.8, 1.0),  # override of act by a human: y* = 0
        ("feedback", 0, 0, 2, 1, 0, 0.2, 1.0),  # audit like of hold: y* = 0
        ("feedback", 0, 2, 0, 0, 0, 0.6, 1.0),  # abstain feedback: no label
        ("feedback", 0, 1, 0, 2, 1, 0.4, 2.0),  # override of an abstention, preferred act: y* = 1
    ]
    state = kernel_state(layout, 1, events)
    got = derive(state, layout, StatsParams(interval=interval))
    assert got["n_decisions"][0] == 4 and got["n_feedback"][0] == 4 and got["n_labels"][0] == 3
    assert got["loss"][0] == pytest.approx(3.0 / 4.0)  # override weight 1 + 2 of labelled 4
    assert got["n_eff"][0] == pytest.approx(16.0 / 6.0)
    assert got["coverage"][0] == 1.0 and got["deferral_rate"][0] == 0.25 and got["abstention_rate"][0] == 0.25
    assert got["audit_n"][0] == 1 and got["audit_loss"][0] == 0.0
    assert got["brier"][0] == pytest.approx((0.8**2 + 0.2**2 + 2 * 0.6**2) / 4.0)
    assert_matches_reference(state, layout, StatsParams(interval=interval), reference_windows(layout, 1, events))


# Log-uniform over every weight the schema accepts, (0, 1000]: n_eff and the advice must agree
# (Brier and ECE are left out: their subnormal products round differently, see `weights`).
any_accepted_weight = st.floats(math.log(5e-324), math.log(1000.0)).map(lambda u: min(1000.0, max(5e-324, math.exp(u))))


@settings(CI, max_examples=60)
@given(scn=scenario(max_slots=4), params=stats_params(), data=st.data())
def test_kernel_equals_reference_for_any_accepted_weight(scn, params, data):
    n_slots, layout, events = scn
    events = [e if e[0] == "score" else e[:7] + (data.draw(any_accepted_weight, label="weight"),) for e in events]
    got = derive(kernel_state(layout, n_slots, events), layout, params)
    for k, ref in enumerate(reference_windows(layout, n_slots, events)):
        want = ref.get(params)
        for field in ("n_eff", "loss", "loss_lo", "loss_hi", "p_exceed", "audit_lo", "audit_hi",
                      "tau_star", "cost_saved", "cost_saved_lo"):
            assert_same(got[field][k], want[field], f"slot {k} field {field!r}")
