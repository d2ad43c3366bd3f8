"""The in-process pipeline: order-only determinism, join in either order, duplicates, lateness, dead letters."""
from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from kernels.reference.window import WindowReference
from streams.config import MonitorConfig
from streams.demo.runner import encode_messages, run_pipeline
from streams.operators.windows import WindowSpec
from streams.simulate import SimConfig, simulate

T0 = 1_767_225_600.0


@pytest.fixture(scope="module")
def sim():
    return simulate(SimConfig(seed=3, n_windows=36, decisions_per_window=120))


def _score(sid, ts, s=0.8, tau=0.5, decision=None, key=("p", "seg")):
    decision = decision or ("act" if s >= tau else "hold")
    return {"type": "score", "v": 1, "event_id": f"s-{sid}", "scenario_id": sid, "policy_id": key[0],
            "segment": key[1], "score": s, "tau": tau, "decision": decision, "ts": ts}


def _fb(sid, ts, kind="override", n=0, **extra):
    return {"type": "feedback", "v": 1, "event_id": f"f-{sid}-{n}", "scenario_id": sid, "ts": ts, "kind": kind, **extra}


def _run(events, config=MonitorConfig(), batch=1):
    return run_pipeline([orjson.dumps(e) for e in events], config, batch=batch)


def _tumbling(result):
    return {(w["policy_id"], w["segment"], w["start"]): w for w in result.windows if w["kind"] == "tumbling"}


def test_results_do_not_depend_on_batching_or_envelopes(sim):
    config = MonitorConfig()
    runs = [run_pipeline(encode_messages(sim.events, 1), config, batch=b) for b in (7, 997)]
    runs.append(run_pipeline(encode_messages(sim.events, 500), config, batch=3))
    ids = [sorted(t["trigger_id"] for t in r.triggers) for r in runs]
    assert ids[0] == ids[1] == ids[2] and ids[0], "trigger ids must not depend on batching"
    for other in runs[1:]:
        assert len(other.windows) == len(runs[0].windows)
        for a, b in zip(runs[0].windows, other.windows):
            assert a.keys() == b.keys()
            for k in a:
                assert a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])), k


def test_tumbling_windows_match_reference_fed_event_by_event():
    rng = np.random.default_rng(5)
    events, ref = [], {}
    for i in range(400):
        ts = T0 + i * 3.0  # in order: nothing late
        s = float(rng.random())
        events.append(_score(f"c{i}", ts, s=s))
        pane = math.floor(ts / 300)
        ref.setdefault(pane, WindowReference()).update_score("act" if s >= 0.5 else "hold", 0.5)
        if i % 3 == 0:
            kind = ["like", "override", "abstain"][i % 2]
            events.append(_fb(f"c{i}", ts + 1.0, kind=kind, weight=0.5))
            ref[pane].update_feedback(kind, "human", "act" if s >= 0.5 else "hold", "", s, 0.5)
    config = MonitorConfig()
    got = _tumbling(_run(events, config, batch=37))
    assert len(got) == len(ref)
    for pane, r in ref.items():
        row = got[("p", "seg", pane * 300.0)]
        expected = r.get(config.stats)
        for k, v in expected.items():
            assert row[k] == pytest.approx(v, nan_ok=True, rel=1e-9, abs=1e-12), k


def test_feedback_joins_to_its_score_in_either_order_and_across_batches():
    events = [
        _fb("a", T0 + 10, "override"),  # before its score
        _score("a", T0 + 5, s=0.9),
        _score("b", T0 + 20, s=0.2),
        _fb("b", T0 + 30, "like"),  # after its score
        _fb("c", T0 + 31, "override", policy_id="p", segment="seg", score=0.7, tau=0.5, decision="act"),  # context
    ]
    for batch in (1, 2, 5):
        result = _run(events, batch=batch)
        w = _tumbling(result)[("p", "seg", math.floor(T0 / 300) * 300.0)]
        assert (w["n_override"], w["n_like"], w["n_decisions"]) == (2, 1, 2)
        assert result.counters.get("joined_late", 0) == (1 if batch >= 2 else 1)


def test_duplicates_count_once_and_are_counted():
    events = [_score("a", T0), _fb("a", T0 + 1), _fb("a", T0 + 1), _score("a", T0)]
    result = _run(events)
    w = next(iter(_tumbling(result).values()))
    assert (w["n_decisions"], w["n_override"]) == (1, 1)
    assert result.counters["duplicates"] == 2


def test_late_events_reach_only_the_cumulative_view():
    spec = WindowSpec(grace_s=60.0)
    config = MonitorConfig(windows=spec)
    events = [_score("a", T0 + 10), _score("b", T0 + 400), _score("late", T0 + 20)]  # watermark passed pane 0
    result = _run(events, config)
    tumbling = _tumbling(result)
    first = tumbling[("p", "seg", T0)]
    assert first["n_decisions"] == 1
    assert result.counters["late_events"] == 1
    cumulative = [w for w in result.windows if w["kind"] == "cumulative"]
    assert cumulative[-1]["n_decisions"] == 3


def test_bad_messages_go_to_dead_letters_and_good_ones_still_count():
    good = orjson.dumps(_score("a", T0))
    messages = [b"not json", good, b'{"type":"score","v":9}', orjson.dumps({**_score("b", T0), "score": 1.5})]
    result = run_pipeline(messages, MonitorConfig(), batch=2)
    reasons = sorted(d.reason for d in result.dead_letters)
    assert reasons == ["bad_value", "not_json", "unknown_version"]
    assert {(d.source.partition, d.source.offset) for d in result.dead_letters} == {(0, 0), (0, 2), (0, 3)}
    assert next(iter(_tumbling(result).values()))["n_decisions"] == 1


def test_unmatched_feedback_expires_to_a_dead_letter():
    config = MonitorConfig(join_horizon_s=600.0)
    events = [_fb("orphan", T0)] + [_score(f"s{i}", T0 + 100.0 * i) for i in range(1, 30)]
    result = _run(events, config, batch=5)
    assert [d.reason for d in result.dead_letters] == ["join_expired"]
    assert result.counters["dead_letters/join_expired"] == 1


def test_trigger_ids_are_deterministic_and_carry_the_config_version(sim):
    a = run_pipeline(encode_messages(sim.events), MonitorConfig())
    b = run_pipeline(encode_messages(sim.events), MonitorConfig())
    assert [t["trigger_id"] for t in a.triggers] == [t["trigger_id"] for t in b.triggers]
    other = MonitorConfig(n_bins=10)
    c = run_pipeline(encode_messages(sim.events), other)
    assert {t["config_version"] for t in c.triggers} == {other.version} != {MonitorConfig().version}
    assert not {t["trigger_id"] for t in a.triggers} & {t["trigger_id"] for t in c.triggers}


def test_a_partition_far_ahead_of_another_changes_nothing(sim):
    """One input partition processed to the end before the other starts (a lagging consumer):
    the aggregator keeps every pane that is not final yet, so the windows equal the run with
    the partitions taking turns."""
    from streams.demo.runner import run_partitioned
    from streams.kafka.producer import partition_for
    from streams.pipeline import InProcessPipeline
    from streams.demo.runner import window_rows

    config = MonitorConfig()
    by_partition = [[], []]
    for e in sim.events:
        by_partition[partition_for(e["scenario_id"].encode(), 2)].append(orjson.dumps(e))
    turns = run_partitioned(by_partition, config, batch=50)

    pipe = InProcessPipeline(config, partitions=2)
    windows = []
    try:
        for p in (0, 1):  # all of partition 0 (36 windows ahead), then all of partition 1
            for i in range(0, len(by_partition[p]), 50):
                out = pipe.process(by_partition[p][i:i + 50], first_offset=i, now=0.0, partition=p)
                windows.extend(row for res in out.windows for row in window_rows(res))
        windows.extend(row for res in pipe.finish().windows for row in window_rows(res))
    finally:
        pipe.close()

    def final(rows):
        return {(w["kind"], w["policy_id"], w["segment"], w["start"], w["end"]): w for w in rows if w["kind"] != "cumulative"}

    want, got = final(turns.windows), final(windows)
    assert len(want) > 300 and set(got) == set(want)
    for key, w in want.items():
        assert got[key]["n_decisions"] == w["n_decisions"] and got[key]["n_feedback"] == w["n_feedback"], key
        assert got[key]["loss"] == w["loss"] or (math.isnan(got[key]["loss"]) and math.isnan(w["loss"])), key


def test_warm_up_loads_the_kernel_and_scipy_before_the_first_batch():
    """In a fresh interpreter (here, anything may have loaded them already)."""
    import subprocess
    import sys

    code = ("import sys\nfrom kernels import update\nfrom streams.config import MonitorConfig\n"
            "from streams.pipeline import warm_up\nwarm_up(MonitorConfig())\n"
            "print(len(update.update.signatures), 'scipy.special' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["1", "True"], out.stdout


def test_warm_up_loads_the_columnar_slow_path_kernels():
    """In a fresh interpreter: the kernels that take a columnar envelope apart are loaded at
    start, not in the first batch whose envelope fails its typed decode."""
    import subprocess
    import sys

    code = ("from kernels import msgpack_scan as m\nfrom streams.config import MonitorConfig\n"
            "from streams.pipeline import warm_up\nwarm_up(MonitorConfig())\n"
            "print(*(len(k.signatures) for k in (m.value_end, m.map_fields, m.array_items)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["1", "1", "1"], out.stdout


def test_a_biased_feedback_channel_is_caught_end_to_end_and_a_healthy_key_is_left_alone():
    """Reviewers who label like on half the decisions they should override, audited on the same
    decisions: the pipeline pairs the labels and monitor_degraded names the channel; the
    stationary key, fed the same way, gets no monitor_degraded."""
    run = simulate(SimConfig(seed=5, n_windows=288, scenarios=("stationary", "biased_channel")))
    result = run_pipeline(encode_messages(run.events, 1000), MonitorConfig(), batch=20)
    degraded = [t for t in result.triggers if t["rule"] == "monitor_degraded"]
    assert degraded and all("biased" in t["policy_id"] for t in degraded)
    assert "the channel likes where audits override" in degraded[0]["reason"]
    assert degraded[0]["evidence"]["audit_pairs_b"] > degraded[0]["evidence"]["audit_pairs_c"]


def _with_second_looks(events: list[dict]) -> list[dict]:
    """The stream plus, for every like/override, an audit of the same decision an hour later
    that agrees with it, and for every third one a second reviewer's agreeing label too."""
    extra = []  # (arrival index of the original, event time, event)
    labels = [(i, e) for i, e in enumerate(events) if e["type"] == "feedback" and e["kind"] != "abstain"]
    for n, (i, e) in enumerate(labels):
        extra.append((i, e["ts"] + 3600.0, {**e, "source": "audit", "event_id": e["event_id"] + "-audit",
                                            "ts": e["ts"] + 3600.0}))
        if n % 3 == 0:
            extra.append((i, e["ts"] + 60.0, {**e, "source": "reviewer", "event_id": e["event_id"] + "-rev",
                                              "ts": e["ts"] + 60.0}))
    # each goes in after its original, before the first event of the stream (kept in its arrival
    # order) that shows a later event time, so it arrives on time as the rest do
    reached = np.maximum.accumulate([e["ts"] for e in events])
    at = np.searchsorted(reached, [ts for _, ts, _ in extra], side="right")
    merged = [(i, 0, e) for i, e in enumerate(events)] + [(max(int(j), i + 1), 1, e)
                                                          for j, (i, _, e) in zip(at, extra)]
    merged.sort(key=lambda item: item[:2])
    return [e for *_, e in merged]


def test_the_sequential_rules_count_one_label_a_decision():
    """Agreeing second looks at a decision (an audit, a second reviewer) are not independent
    observations: they count in the loss, but the capped sums the retrain and rollback tests
    read, and so those triggers, are exactly those of the stream without them."""
    run = simulate(SimConfig(seed=11, n_windows=48, decisions_per_window=200, scenarios=("stationary", "step_drift"),
                             duplicate_rate=0.0))
    once = run_pipeline(encode_messages(run.events, 200), MonitorConfig())
    looked = _with_second_looks(run.events)
    assert len(looked) > len(run.events) * 1.2
    twice = run_pipeline(encode_messages(looked, 200), MonitorConfig())
    a, b = _tumbling(once), _tumbling(twice)
    assert a.keys() <= b.keys()
    for k in b:  # windows only the late audits reach hold repeats alone
        assert a.get(k, {}).get("weight_capped", 0.0) == b[k]["weight_capped"], k
        assert a.get(k, {}).get("override_weight_capped", 0.0) == b[k]["override_weight_capped"], k
    more = [k for k in a if b[k]["n_labels"] > a[k]["n_labels"]]
    assert len(more) > len(a) // 2  # the second looks do count as labels
    alarms = {r: [(t["policy_id"], t["window"]["start"]) for t in once.triggers if t["rule"] == r]
              for r in ("retrain", "rollback")}
    first = {r: [(t["policy_id"], t["window"]["start"]) for t in twice.triggers if t["rule"] == r]
             for r in ("retrain", "rollback")}
    assert alarms["retrain"], "the step drift must raise a retrain"
    assert first["retrain"][:1] == alarms["retrain"][:1] and first["rollback"][:1] == alarms["rollback"][:1]


def _hourly_batches(rng, hours: int, coverage, per_batch: int = 600) -> list[dict]:
    """A batch scorer: every hour `per_batch` decisions within a few seconds; each draws
    feedback with probability `coverage(hour)`, half of it carrying its decision's context,
    arriving minutes to an hour later (events in arrival order)."""
    events = []
    for h in range(hours):
        t = T0 + 3600.0 * h
        for k in range(per_batch):
            sid = f"h{h}-{k}"
            s = float(rng.random())
            events.append((t + k * 0.01, _score(sid, t + k * 0.01, s=s)))
            if rng.random() < coverage(h):
                ts = t + k * 0.01 + float(min(rng.exponential(600.0), 3000.0))
                context = {"policy_id": "p", "segment": "seg", "score": s, "tau": 0.5,
                           "decision": "act" if s >= 0.5 else "hold"} if k % 2 else {}
                events.append((ts, _fb(sid, ts, kind="like", **context)))
    return [e for _, e in sorted(events, key=lambda pair: pair[0])]


def test_a_batch_scorer_at_the_coverage_floor_is_not_a_drought_but_a_drought_is():
    """Decisions come in one burst an hour and their feedback over the next hour: a pane's
    feedback is no measure of that pane's decisions, so coverage counts each feedback event
    in its decision's pane (joined, or looked up for feedback that carries its context)."""
    rng = np.random.default_rng(8)
    healthy = _run(_hourly_batches(rng, 72, lambda h: 0.12), batch=500)
    assert not [t for t in healthy.triggers if t["rule"] == "monitor_degraded"]
    dry = _run(_hourly_batches(rng, 72, lambda h: 0.12 if h < 36 else 0.01), batch=500)
    alarms = [t for t in dry.triggers if t["rule"] == "monitor_degraded"]
    assert alarms and "coverage" in alarms[0]["reason"]
    assert T0 + 36 * 3600 <= alarms[0]["window"]["start"] < T0 + 40 * 3600  # the decision pane read
