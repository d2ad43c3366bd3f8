"""Event-time windows are exact for any gaps, lateness and batch cuts.

The reference assigns one event at a time: a partition's watermark is the
largest event time it has seen minus the grace period; an event whose pane
ended before that watermark's pane is late and reaches only the cumulative
view; every other event belongs to its pane. Tumbling windows are panes,
hopping windows sums of consecutive panes, the cumulative view everything.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.reference.window import WindowReference
from streams.config import MonitorConfig
from streams.demo.runner import run_partitioned, run_pipeline
from streams.operators.windows import WindowSpec

T0 = 1_767_225_600.0
DAY = 86_400.0
MAX_TS = 253_402_300_800.0  # the schemas' exclusive upper bound on event time


def _score(i, ts, key, s, tau=0.5):
    return {"type": "score", "v": 1, "event_id": f"s{i}", "scenario_id": f"c{i}", "policy_id": key[0],
            "segment": key[1], "score": s, "tau": tau, "decision": "act" if s >= tau else "hold", "ts": ts}


def _feedback(i, ts, key, s, kind, weight, source="human", tau=0.5):
    """Feedback carrying its decision's context: scorable without a join."""
    return {"type": "feedback", "v": 1, "event_id": f"f{i}", "scenario_id": f"x{i}", "ts": ts, "kind": kind,
            "source": source, "weight": weight, "policy_id": key[0], "segment": key[1], "score": s, "tau": tau,
            "decision": "act" if s >= tau else "hold"}


def reference_windows(by_partition: list[list[dict]], spec: WindowSpec):
    """Final tumbling, hopping and cumulative statistics, one event at a time."""
    panes: dict = defaultdict(WindowReference)  # (key, pane) -> on-time events of that pane
    cumulative: dict = defaultdict(WindowReference)
    late = 0
    for events in by_partition:
        max_ts, closed = -math.inf, None
        for e in events:
            key, ts = (e["policy_id"], e["segment"]), e["ts"]
            if closed is None:
                closed = math.floor((ts - spec.grace_s) / spec.tumbling_s)
            pane = math.floor(ts / spec.tumbling_s)
            refs = [cumulative[key]]
            if pane >= closed:
                refs.append(panes[key, pane])
            else:
                late += 1
            for ref in refs:
                if e["type"] == "score":
                    ref.update_score(e["decision"], e["tau"])
                else:
                    ref.update_feedback(e["kind"], e["source"], e["decision"], "", e["score"], e["weight"])
            max_ts = max(max_ts, ts)
            closed = max(closed, math.floor((max_ts - spec.grace_s) / spec.tumbling_s))
    hopping: dict = {}
    for key, pane in list(panes):
        # every hopping window [q + 1 - hop, q] (q + 1 a multiple of the advance) holding this pane
        for q in range(pane, pane + spec.hop_panes):
            if (q + 1) % spec.advance_panes == 0 and (key, q) not in hopping:
                total = WindowReference()
                for p in range(q + 1 - spec.hop_panes, q + 1):
                    if (key, p) in panes:
                        total.merge(panes[key, p])
                hopping[key, q] = total
    return panes, hopping, cumulative, late


def _assert_same(row: dict, ref: WindowReference, config: MonitorConfig, where: str) -> None:
    for name, want in ref.get(config.stats).items():
        assert row[name] == pytest.approx(want, rel=1e-9, abs=1e-9, nan_ok=True), f"{where}: {name}"


def check_against_reference(by_partition: list[list[dict]], config: MonitorConfig, batch: int) -> None:
    spec = config.windows
    got = run_partitioned([[orjson.dumps(e) for e in events] for events in by_partition], config, batch=batch)
    panes, hopping, cumulative, late = reference_windows(by_partition, spec)
    tumbling = {((w["policy_id"], w["segment"]), round(w["start"] / spec.tumbling_s)): w
                for w in got.windows if w["kind"] == "tumbling"}
    assert sorted(tumbling) == sorted(panes), "tumbling windows emitted"
    for (key, pane), ref in panes.items():
        _assert_same(tumbling[key, pane], ref, config, f"tumbling {key} pane {pane}")
    hop = {((w["policy_id"], w["segment"]), round(w["end"] / spec.tumbling_s) - 1): w
           for w in got.windows if w["kind"] == "hopping"}
    assert sorted(hop) == sorted(hopping), "hopping windows emitted"
    for (key, q), ref in hopping.items():
        _assert_same(hop[key, q], ref, config, f"hopping {key} ending {q}")
    last_cumulative = {}
    for w in got.windows:
        if w["kind"] == "cumulative":
            last_cumulative[w["policy_id"], w["segment"]] = w
    assert sorted(last_cumulative) == sorted(cumulative)
    for key, ref in cumulative.items():
        _assert_same(last_cumulative[key], ref, config, f"cumulative {key}")
    assert got.counters.get("late_events", 0) == late


def test_event_after_a_quiet_spell_gets_its_own_window():
    """A score at T0+910 after a quiet spell belongs to [T0+900, T0+1200), not to [T0, T0+300)."""
    key = ("p", "seg")
    events = [_score(1, T0 + 10, key, 0.8), _feedback(1, T0 + 20, key, 0.8, "override", 1.0),
              _score(2, T0 + 910, key, 0.8), _feedback(2, T0 + 920, key, 0.8, "like", 1.0)]
    for batch in (1, 4):
        got = run_pipeline([orjson.dumps(e) for e in events], MonitorConfig(), batch=batch)
        tumbling = {w["start"]: w for w in got.windows if w["kind"] == "tumbling"}
        assert sorted(tumbling) == [T0, T0 + 900]
        assert tumbling[T0]["n_decisions"] == 1 and tumbling[T0]["n_override"] == 1
        assert tumbling[T0 + 900]["n_decisions"] == 1 and tumbling[T0 + 900]["n_like"] == 1


def test_a_jump_of_millennia_closes_quickly_and_exactly():
    """One event near the end of the accepted time range closes everything before it at
    once (no loop over billions of empty panes)."""
    key = ("p", "seg")
    events = [_score(1, T0, key, 0.7), _score(2, MAX_TS - 1.0, key, 0.2), _feedback(3, T0 + 5, key, 0.7, "like", 2.0)]
    check_against_reference([events], MonitorConfig(), batch=1)


GAPS = st.one_of(
    st.floats(0, 30), st.floats(0, 900), st.floats(0, 3 * DAY), st.sampled_from([0.0, 119.999, 120.0, 300.0, 481.0]),
    st.floats(0, 400 * 365 * DAY),
)
# Normal floats only: below 2.2e-308 a weight's products underflow in the calibration sums
# (Brier, ECE), whatever the windowing; the statistics' own tests cover those weights.
WEIGHTS = st.one_of(st.floats(1e-290, 1000.0), st.sampled_from([1e-290, 1e-200, 1.0, 2.5, 1000.0]))


@st.composite
def streams_of_events(draw):
    """Events of a few keys with arbitrary event-time gaps, some of them back in time."""
    n = draw(st.integers(1, 60))
    keys = [("p", "a"), ("p", "b"), ("q", "a")][: draw(st.integers(1, 3))]
    ts, events = T0, []
    for i in range(n):
        if draw(st.booleans()) or i == 0:
            ts = min(ts + draw(GAPS), MAX_TS - 1.0)
        back = draw(st.one_of(st.just(0.0), st.floats(0, 1500)))  # late, or merely out of order
        t = max(0.0, ts - back)
        key = draw(st.sampled_from(keys))
        s = draw(st.floats(0, 1))
        if draw(st.booleans()):
            events.append(_score(i, t, key, s))
        else:
            kind = draw(st.sampled_from(["like", "override", "abstain"]))
            source = draw(st.sampled_from(["human", "audit"]))
            events.append(_feedback(i, t, key, s, kind, draw(WEIGHTS), source))
    return events


SPECS = st.sampled_from([
    WindowSpec(),
    WindowSpec(tumbling_s=60.0, hopping_s=180.0, advance_s=120.0, grace_s=0.0, early_s=30.0),
    WindowSpec(tumbling_s=300.0, hopping_s=900.0, advance_s=300.0, grace_s=700.0, early_s=45.0),
])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=streams_of_events(), spec=SPECS, batch=st.integers(1, 70), partitions=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_windows_match_one_event_at_a_time_reference(events, spec, batch, partitions, seed):
    rng = np.random.default_rng(seed)
    by_partition: list[list[dict]] = [[] for _ in range(partitions)]
    for e in events:
        by_partition[int(rng.integers(partitions))].append(e)
    check_against_reference(by_partition, MonitorConfig(windows=spec), batch)


@pytest.mark.parametrize("bad", [
    {"tumbling_s": 1e-9, "hopping_s": 1e-9, "advance_s": 1e-9},  # pane numbers past int64 for late dates
    {"early_s": 0.001},
    {"grace_s": 1e9},  # a ring of millions of open panes per key
    {"grace_s": float("inf")},
    {"tumbling_s": float("nan")},
    {"hopping_s": 450.0},  # not whole panes
])
def test_window_specs_whose_panes_or_ring_would_not_fit_are_refused(bad):
    with pytest.raises(ValueError):
        WindowSpec(**bad)


def test_the_smallest_panes_number_the_latest_event_time_inside_int64():
    from streams.events import MAX_EPOCH_S
    spec = WindowSpec(tumbling_s=WindowSpec.MIN_STEP_S, hopping_s=WindowSpec.MIN_STEP_S,
                      advance_s=WindowSpec.MIN_STEP_S, early_s=WindowSpec.MIN_STEP_S)
    assert MAX_EPOCH_S / spec.tumbling_s < 2**40 and spec.open_panes <= WindowSpec.MAX_OPEN_PANES
