"""Tests for the seeded scenario simulator and its exact ground truth."""

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from streams.simulate import SimConfig, scenario_names, simulate, simulate_labels

CFG = SimConfig(n_windows=48, seed=11)
SCORE_KEYS = {"type", "v", "event_id", "scenario_id", "policy_id", "segment", "score", "tau", "decision", "ts"}
FB_KEYS = {"type", "v", "event_id", "scenario_id", "ts", "kind", "source", "weight"}
CONTEXT = {"policy_id", "segment", "score", "tau", "decision"}


@pytest.fixture(scope="module")
def run():
    return simulate(CFG)


@pytest.fixture(scope="module")
def scores(run):
    return {e["scenario_id"]: e for e in run.events if e["type"] == "score"}


@pytest.fixture(scope="module")
def feedback(run):
    """Unique feedback events (first copy of each event_id)."""
    out = {}
    for e in run.events:
        if e["type"] == "feedback":
            out.setdefault(e["event_id"], e)
    return list(out.values())


def window(ts):
    return int((ts - CFG.start_ts) // CFG.window_s)


def truth_by(run, scenario):
    return [t for t in run.truth if t["scenario"] == scenario]


def in_episode(w):
    """Drought and abstention spike last for horizon fraction u in [0.4, 0.7)."""
    return 0.4 <= (w + 0.5) / CFG.n_windows < 0.7


def test_deterministic_per_seed(run):
    again = simulate(CFG)
    assert again.events == run.events and again.truth == run.truth
    other = simulate(SimConfig(n_windows=48, seed=12))
    assert other.events != run.events


def test_all_scenarios_interleaved_in_one_run(run):
    assert len(scenario_names()) == 7 and set(CFG.scenarios) == set(scenario_names())
    first = [e["policy_id"] for e in run.events[:2000] if e["type"] == "score"]
    assert len(set(first)) == 7
    assert len(run.truth) == 7 * CFG.n_windows
    assert len({(t["policy_id"], t["segment"]) for t in run.truth}) == 7


def test_event_schema_and_ranges(run):
    json.dumps(run.events)
    for e in run.events:
        assert e["v"] == 1 and isinstance(e["ts"], float)
        if e["type"] == "score":
            assert set(e) == SCORE_KEYS
            assert e["event_id"] == "s-" + e["scenario_id"]
            assert 0.0 <= e["score"] <= 1.0 and 0.0 <= e["tau"] <= 1.0
            assert e["decision"] in ("act", "hold", "abstain")
            if e["decision"] != "abstain":
                assert (e["decision"] == "act") == (e["score"] >= e["tau"])
        else:
            extra = set(e) - FB_KEYS
            assert FB_KEYS <= set(e) and extra <= CONTEXT | {"preferred"}
            assert extra & CONTEXT in (set(), CONTEXT)
            assert e["event_id"].startswith("f-" + e["scenario_id"] + "-")
            assert e["kind"] in ("like", "override", "abstain")
            assert e["source"] in ("human", "reviewer", "audit", "llm_judge")
            assert 0.0 < e["weight"] <= 1.0
            if "preferred" in e:
                assert e["preferred"] in ("act", "hold") and e["kind"] == "override"


def test_feedback_refers_to_its_score(scores, feedback):
    for e in feedback:
        s = scores[e["scenario_id"]]
        assert e["ts"] > s["ts"]
        if "decision" in e:
            assert all(e[k] == s[k] for k in CONTEXT)
        if "preferred" in e:
            assert s["decision"] == "abstain"


def test_feedback_proportions(scores, feedback):
    n = len(feedback)
    assert 0.4 < sum("policy_id" in e for e in feedback) / n < 0.6
    src = Counter(e["source"] for e in feedback)
    assert src["audit"] / len(scores) == pytest.approx(0.02, abs=0.005)
    assert 0 < src["llm_judge"] < src["reviewer"] < src["human"]
    assert all(e["weight"] == 1.0 for e in feedback)
    assert 0.005 < sum(s["decision"] == "abstain" for s in scores.values()) / len(scores) < 0.06


def test_duplicates_are_exact_copies_of_earlier_events(run):
    first, dups = {}, 0
    for e in run.events:
        if e["event_id"] in first:
            assert e == first[e["event_id"]] and e["type"] == "feedback"
            dups += 1
        else:
            first[e["event_id"]] = e
    assert dups / sum(e["type"] == "feedback" for e in first.values()) == pytest.approx(0.02, abs=0.008)


def test_arrival_mostly_in_event_time_order(run, scores, feedback):
    ts = np.array([e["ts"] for e in run.events])
    behind = np.maximum.accumulate(ts) - ts
    assert np.mean(behind > 60) < 0.08 and np.mean(behind > 300) > 0.001 and behind.max() < 1000
    delay = np.array([e["ts"] - scores[e["scenario_id"]]["ts"] for e in feedback])
    assert np.median(delay) < 3600 and np.mean(delay > CFG.window_s) > 0.2 and delay.max() > 86400


def test_empirical_override_rate_matches_exact_truth(run, scores, feedback):
    """Given the labels per decision window, overrides ~ sum of Bernoulli(L_w), L_w what the labels
    measure (the true loss, except on the biased channel, whose reviewers hide overrides)."""
    loss = {(t["policy_id"], window(t["window_start"])): t["apparent_loss"] for t in run.truth}
    obs, mean, var = Counter(), Counter(), Counter()
    for e in feedback:
        if e["kind"] == "abstain":
            continue
        s = scores[e["scenario_id"]]
        lw = loss[(s["policy_id"], window(s["ts"]))]
        obs[s["policy_id"]] += e["kind"] == "override"
        mean[s["policy_id"]] += lw
        var[s["policy_id"]] += lw * (1 - lw)
    assert len(obs) == 7
    for key in obs:
        assert abs(obs[key] - mean[key]) < 4 * np.sqrt(var[key]), key


def test_stationary_below_budget(run):
    losses = [t["true_loss"] for t in truth_by(run, "stationary")]
    assert max(losses) == min(losses) == pytest.approx(0.05, abs=0.005)
    assert not any(t["over_budget"] for t in truth_by(run, "stationary"))


def test_step_drift_jumps_at_forty_percent(run):
    rows = truth_by(run, "step_drift")
    step = int(np.ceil(0.4 * CFG.n_windows - 0.5))  # first window whose midpoint is at u >= 0.4
    assert all(t["true_loss"] == pytest.approx(0.05, abs=0.005) for t in rows[:step])
    assert all(t["true_loss"] == pytest.approx(0.20, abs=0.01) and t["over_budget"] for t in rows[step:])


def test_gradual_drift_rises_monotonically(run):
    losses = np.array([t["true_loss"] for t in truth_by(run, "gradual_drift")])
    assert np.all(np.diff(losses) >= -1e-12)
    assert losses[0] == pytest.approx(0.05, abs=0.005) and losses[-1] == pytest.approx(0.25, abs=0.01)


def test_miscalibrated_threshold(run):
    for t in truth_by(run, "miscalibrated_threshold"):
        assert abs(t["true_tau_star"] - t["tau"]) > 0.1 and t["over_budget"]
    for name in ("stationary", "feedback_drought"):
        assert all(abs(t["true_tau_star"] - t["tau"]) < 0.05 for t in truth_by(run, name))


def test_feedback_drought_coverage_drops(run, scores, feedback):
    rows = truth_by(run, "feedback_drought")
    assert all((t["coverage"] < 0.05) == in_episode(w) for w, t in enumerate(rows))
    got, n = Counter(), Counter()
    for s in scores.values():
        if s["policy_id"] == rows[0]["policy_id"]:
            n[in_episode(window(s["ts"]))] += 1
    covered = {e["scenario_id"] for e in feedback}
    for sid in covered:
        s = scores[sid]
        if s["policy_id"] == rows[0]["policy_id"]:
            got[in_episode(window(s["ts"]))] += 1
    assert got[True] / n[True] < 0.05 < 0.25 < got[False] / n[False]


def test_abstention_spike_rate_rises(run, scores, feedback):
    rows = truth_by(run, "abstention_spike")
    assert all((t["abstention_rate"] > 0.4) == in_episode(w) for w, t in enumerate(rows))
    kinds = defaultdict(Counter)
    for e in feedback:
        s = scores[e["scenario_id"]]
        if s["policy_id"] == rows[0]["policy_id"]:
            kinds[in_episode(window(s["ts"]))][e["kind"]] += 1
    rate = {k: c["abstain"] / sum(c.values()) for k, c in kinds.items()}
    assert rate[True] > 0.4 and rate[False] < 0.1


def test_biased_channel_reviewers_hide_overrides_that_audits_of_the_same_decisions_show(run, scores, feedback):
    rows = truth_by(run, "biased_channel")
    assert all(t["apparent_loss"] < CFG.l_budget < t["true_loss"] for t in rows)
    labels, ts = defaultdict(dict), defaultdict(dict)
    for e in feedback:
        if scores[e["scenario_id"]]["policy_id"] == rows[0]["policy_id"]:
            labels[e["scenario_id"]][e["source"]] = e["kind"]
            ts[e["scenario_id"]][e["source"]] = e["ts"]
    assert {src for d in labels.values() for src in d} == {"reviewer", "audit"}
    assert all("reviewer" in d for d in labels.values())  # every audit is of a reviewed decision
    both = [sid for sid, d in labels.items() if len(d) == 2 and d["reviewer"] != "abstain"]
    assert len(both) > 200
    overridden = [labels[sid]["reviewer"] for sid in both if labels[sid]["audit"] == "override"]
    hidden = overridden.count("like") / len(overridden)
    assert 0.35 < hidden < 0.7  # half of the overrides, plus the reviewers' label noise
    over_reported = sum(labels[sid] == {"reviewer": "override", "audit": "like"} for sid in both)
    assert overridden.count("like") > 3 * over_reported
    assert np.median([ts[sid]["audit"] - ts[sid]["reviewer"] for sid in both]) > 3600  # audits come hours later
    for name in ("stationary", "step_drift"):  # honest channels elsewhere
        assert all(t["apparent_loss"] == t["true_loss"] for t in truth_by(run, name))


def test_random_weights_option():
    run = simulate(SimConfig(n_windows=4, random_weights=True, scenarios=("stationary",)))
    w = {e["source"]: [] for e in run.events if e["type"] == "feedback"}
    for e in run.events:
        if e["type"] == "feedback":
            w[e["source"]].append(e["weight"])
    assert min(w["human"]) > 0 and len(set(w["human"])) > 10
    assert set(w["reviewer"]) == {1.0}


def test_simulate_labels():
    rng = np.random.Generator(np.random.PCG64(0))
    y, w = simulate_labels(rng, 100_000, 0.2)
    assert set(np.unique(y)) == {0.0, 1.0} and np.all(w == 1.0)
    assert y.mean() == pytest.approx(0.2, abs=4 * np.sqrt(0.2 * 0.8 / 1e5))
    y, w = simulate_labels(rng, 1000, np.linspace(0, 1, 1000), weights="random")
    assert np.all((w > 0) & (w <= 1)) and y[:50].sum() < y[-50:].sum()
