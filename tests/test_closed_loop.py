"""The closed-loop simulator: common random numbers, when a change takes effect, what a retrain
learns, and ground truth under the policy in force."""
import hashlib

import msgspec
import numpy as np
import orjson
import pytest

from streams.config import MonitorConfig
from streams.events import TriggerEvent
from streams.simulate import SimConfig, simulate
from streams.simulate.closed_loop import OPEN, KeySystem, LoopConfig, decisions_only, run_loop
from streams.simulate.draws import ABSTAIN
from streams.simulate.generator import key_draws
from streams.simulate.retrain import fit_indifference, realigning_shift
from streams.simulate.scenarios import AUDIT_RATE, SCENARIOS, ground_truth, scenario, sigmoid

SMALL = SimConfig(seed=5, n_windows=24, decisions_per_window=60)


def _rounded(value):
    """`value` with every float to 6 significant digits: numpy's exp and log have one
    implementation per instruction set (AVX-512 or not), which may differ in the last bit, so
    the same draws give the same digest on any CPU; a changed draw moves far more than that."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def _digest(cfg: SimConfig) -> str:
    run = simulate(cfg)
    h = hashlib.sha256()
    for e in run.events + run.truth:
        h.update(orjson.dumps(_rounded(e), option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()[:16]


@pytest.mark.parametrize("cfg,digest", [
    (SimConfig(n_windows=48, seed=11, decisions_per_window=120), "6c989cb9983ba386"),
    (SimConfig(n_windows=30, seed=3, decisions_per_window=80, random_weights=True, include_audit=False),
     "547d640a86eaa406"),
])
def test_the_generator_draws_as_before_the_common_random_numbers(cfg, digest):
    """Digests of the generator's output, its floats to 6 significant digits: every event and
    truth row is as it was when its draws moved to draws.py. (A deliberate change of the
    generator changes these.)"""
    assert _digest(cfg) == digest


def test_the_open_loop_is_the_generator_up_to_the_horizon():
    loop = run_loop(SMALL, MonitorConfig(), OPEN)
    gen = simulate(SMALL)
    assert 0 < len(loop.events) < len(gen.events)
    assert loop.events == gen.events[:len(loop.events)]  # same events, same arrival order
    horizon = SMALL.start_ts + SMALL.n_windows * SMALL.window_s
    assert all(e["ts"] >= horizon - SMALL.window_s for e in gen.events[len(loop.events):] if e["type"] == "score")
    assert [{k: v for k, v in r.items() if k != "shift"} for r in loop.truth] == gen.truth
    assert loop.actions == [] and all(s.changes == [] for s in loop.systems)


def _system(name: str, cfg: SimConfig, loop: LoopConfig = OPEN) -> KeySystem:
    return KeySystem(scenario(name), cfg, AUDIT_RATE, loop, MonitorConfig().stats)


def test_a_threshold_change_alters_only_the_decisions_at_or_after_it():
    cfg = SimConfig(seed=3, n_windows=12, decisions_per_window=300, scenarios=("stationary",))
    a, b = _system("stationary", cfg), _system("stationary", cfg)
    change = 5
    for w in range(cfg.n_windows):
        if w == change:
            b.tau_set = 0.6
        t = cfg.start_ts + w * cfg.window_s
        a.decide(w, t)
        b.decide(w, t)
    cut = b.d.offsets[change]
    assert np.array_equal(a.decision[:cut], b.decision[:cut])
    early = [p for p in range(len(a.events)) if a.events[p]["scenario_id"] < f"stationary-3-{change:04d}"]
    assert early and all(a.events[p] == b.events[p] for p in early)  # scores, their feedback and its copies
    differ = np.flatnonzero(a.decision != b.decision)
    assert differ.size > 0 and differ.min() >= cut
    s = a.d.s[differ]
    assert np.all((s > 0.5 - 0.02) & (s < 0.6 + 0.02))  # between the thresholds (or deferred near one)
    assert b.changes == [{"window": change, "tau_before": 0.5, "shift_before": 0.0, "tau_after": 0.6,
                          "shift_after": 0.0, "cause": None}]


def test_triggers_act_from_the_window_after_they_are_emitted():
    """Every change lands on the first decision window after its cause: a threshold write at the
    end of the window whose arrivals emitted the advice, a retrain two hours of decisions later."""
    cfg = SimConfig(seed=7, n_windows=48, decisions_per_window=400, scenarios=("miscalibrated_threshold",))
    runs = [run_loop(cfg, MonitorConfig(), LoopConfig(act_on=(rule,))) for rule in ("threshold_adjust", "retrain")]
    changes = [(run, c) for run in runs for c in run.systems[0].changes]
    assert {c["cause"]["decision"] for _, c in changes} == {"applied", "retrained"}
    for run, c in changes:
        system = run.systems[0]
        start = cfg.start_ts + c["window"] * cfg.window_s
        cause = c["cause"]
        if cause["decision"] == "applied":
            assert start == cause["at"]
            emitted = next(t for t in run.triggers if t["trigger_id"] == cause["trigger_id"])
            assert emitted["emitted_at"] == start and emitted["window"]["end"] < start
        else:
            assert cause["decision"] == "retrained" and start == cause["at"] >= cause["emitted_at"] + 7200
        assert system.taus[c["window"] - 1] == c["tau_before"] and system.taus[c["window"]] == c["tau_after"]


@pytest.mark.parametrize("c,weights", [(0.62, None), (0.41, "random")])
def test_the_retrain_fit_recovers_a_known_indifference_point(c, weights):
    """Labels from the people's model (k = 80, 2% label noise), about as many as a retrain gets
    from an hour of a busy key: the fitted indifference point is within 0.01 of the true one."""
    rng = np.random.default_rng(17)
    n = 1000
    s = rng.beta(2.0, 2.0, n)
    y = (rng.random(n) < sigmoid(80.0 * (s - c))) ^ (rng.random(n) < 0.02)
    w = None if weights is None else 1.0 - rng.random(n)
    c_hat, k_hat, se = fit_indifference(s, y, w)
    assert abs(c_hat - c) < 0.01 and k_hat > 5 and 0 < se < 0.01
    assert realigning_shift(c_hat, k_hat, 0.5) == pytest.approx(0.5 - c_hat)
    assert realigning_shift(0.6, 20.0, 0.5, c_fp=3.0, c_fn=1.0) == pytest.approx(0.5 - (0.6 + np.log(3.0) / 20.0))
    assert fit_indifference(s, np.ones(n)) is None  # one label only: nothing to place the curve with
    assert fit_indifference(s[:1], y[:1]) is None


def test_the_fits_standard_error_is_the_spread_of_its_estimates():
    """An hour of a quiet key's labels (280), 300 times: the reported standard error of c is at least
    the estimates' standard deviation and at most half again as large, so the retrain's confidence
    gate is at least as strict as it says."""
    rng = np.random.default_rng(3)
    fits = []
    for _ in range(300):
        s = rng.beta(2.0, 2.0, 280)
        y = (rng.random(280) < sigmoid(80.0 * (s - 0.5))) ^ (rng.random(280) < 0.02)
        fits.append(fit_indifference(s, y))
    c_hat, se = np.array([f[0] for f in fits]), np.array([f[2] for f in fits])
    assert abs(c_hat.mean() - 0.5) < 0.002
    assert c_hat.std() <= np.median(se) <= 1.5 * c_hat.std()  # it errs large (the logistic is too flat), not small


def test_a_retrain_that_cannot_tell_the_people_from_the_current_model_changes_nothing():
    """Stationary: the people's point (0.511) is within a fit's error of the threshold (0.5), so
    the refit is not deployed; the same refit on the miscalibrated key (people at 0.5, threshold
    0.7) is, and maps the fitted point onto the threshold."""
    for name, deployed in (("stationary", False), ("miscalibrated_threshold", True)):
        cfg = SimConfig(seed=4, n_windows=36, decisions_per_window=100, scenarios=(name,))
        system = _system(name, cfg, LoopConfig())
        system.on_trigger({"rule": "retrain", "trigger_id": "r" * 32}, cfg.start_ts)
        assert system.retrains == [(cfg.start_ts + 7200.0, cfg.start_ts, "r" * 32)]
        for w in range(cfg.n_windows):
            system.decide(w, cfg.start_ts + w * cfg.window_s)
        (done,) = [a for a in system.actions if a["rule"] == "retrain"]
        assert done["at"] == cfg.start_ts + 7200.0 and done["labels"] >= 100
        gap = abs(done["c_hat"] - system.par["tau"][0])
        if deployed:
            assert done["decision"] == "retrained" and gap > 2.576 * done["c_se"]
            assert system.shift == pytest.approx(0.7 - done["c_hat"]) and abs(done["c_hat"] - 0.5) < 0.02
            assert [c["window"] for c in system.changes] == [24]
        else:
            assert done["decision"] == "retrain_no_change" and gap <= 2.576 * done["c_se"]
            assert system.shift == 0.0 and system.changes == [] and system.model_watch is None


def test_a_retrain_in_the_loop_learns_the_drifted_indifference_point_from_its_labels():
    cfg = SimConfig(seed=7, n_windows=288, decisions_per_window=400, scenarios=("step_drift",))
    run = run_loop(cfg, MonitorConfig(), LoopConfig(act_on=("retrain",)))
    retrained = [a for a in run.actions if a["decision"] == "retrained"]
    assert retrained
    sc = SCENARIOS["step_drift"]
    for a in retrained:
        u = (a["at"] - cfg.start_ts) / (cfg.n_windows * cfg.window_s)
        assert abs(a["c_hat"] - sc.c(u)) < 0.02 and a["labels"] >= 100
        assert a["shift_after"] == pytest.approx(a["tau"] - a["c_hat"])


@pytest.mark.parametrize("name,tau,shift", [("step_drift", 0.62, -0.03), ("biased_channel", 0.45, 0.04),
                                            ("abstention_spike", 0.5, 0.0)])
def test_ground_truth_follows_the_policy_in_force_against_monte_carlo(name, tau, shift):
    """One window of many decisions under (tau, shift): the share of labels that override, and the
    share that an honest channel would, against the integrated truth (4 standard errors)."""
    cfg = SimConfig(seed=1, n_windows=1, decisions_per_window=120_000, scenarios=(name,), duplicate_rate=0.0)
    system = _system(name, cfg)
    system.tau_set, system.shift = tau, shift
    system.decide(0, cfg.start_ts)
    truth = ground_truth(scenario(name), 0.5, AUDIT_RATE, tau, shift)
    d = system.d
    labelled = ~d.fb_abstain
    over = d.overrides(np.arange(d.m), system.decision[d.fi])[labelled]
    honest = d.overrides(np.arange(d.m), system.decision[d.fi], reported=False)[labelled]
    for got, want in ((over.mean(), truth["apparent_loss"]), (honest.mean(), truth["true_loss"])):
        assert abs(got - want) < 4 * np.sqrt(want * (1 - want) / over.size)
    kinds = [e["kind"] for e in system.events[d.n:] if e is not None]
    assert sum(k == "override" for k in kinds) == over.sum()  # the events say what the arrays say
    scheduled = ground_truth(scenario(name), 0.5)["true_loss"]
    if (tau, shift) != (0.5, 0.0):  # the policy in force matters, far beyond the Monte-Carlo error
        assert abs(truth["true_loss"] - scheduled) > 10 * np.sqrt(scheduled / over.size)
    deferred = system.decision == ABSTAIN
    assert np.all(np.abs(np.clip(d.s[deferred] + shift, 0, 1) - tau) < scenario(name).abstain_band)


def _trigger(rule: str, tau: float, tau_star: float, lo: float, end: float, tid: str) -> dict:
    trig = {"type": "trigger", "v": 1, "trigger_id": tid, "rule": rule, "reason": "test", "policy_id": "p",
            "segment": "s", "window": {"kind": "hopping", "start": end - 3600.0, "end": end},
            "evidence": {"n_decisions": 100, "n_feedback": 100, "n_labels": 100, "tau": tau, "tau_star": tau_star,
                         "heldout_saving": lo + 0.01, "heldout_saving_lo": lo, "cost_saved": 0.05},
            "config_version": "cfg-test", "emitted_at": end}
    msgspec.convert(trig, TriggerEvent)
    return trig


def test_threshold_advice_goes_through_the_actuators_guard_rails_and_rollback_restores_the_validated_policy():
    cfg = SimConfig(seed=2, n_windows=40, decisions_per_window=20, scenarios=("miscalibrated_threshold",))
    system = _system("miscalibrated_threshold", cfg, LoopConfig())
    t0 = cfg.start_ts
    system.decide(0, t0)
    system.on_trigger(_trigger("threshold_adjust", 0.7, 0.5, 0.001, t0 + 300, "a" * 32), t0 + 300)
    assert system.tau == 0.7 and system.actions[-1]["skip_reason"] == "not_validated"
    system.on_trigger(_trigger("threshold_adjust", 0.7, 0.5, 0.05, t0 + 300, "b" * 32), t0 + 300)
    assert system.tau == pytest.approx(0.6) and system.actions[-1]["decision"] == "applied"  # at most max_step
    system.on_trigger(_trigger("threshold_adjust", 0.6, 0.5, 0.05, t0 + 600, "c" * 32), t0 + 600)
    assert system.tau == pytest.approx(0.6) and system.actions[-1]["skip_reason"] == "probation"
    system.shift = 0.05  # a model change that was never validated
    system.on_trigger({**_trigger("rollback", 0.6, 0.6, 0.0, t0 + 900, "d" * 32), "rule": "rollback"}, t0 + 900)
    assert (system.tau, system.shift) == (0.7, 0.0)  # the initial policy: nothing passed probation yet
    system.validated = (0.6, 0.0)
    system.on_trigger({**_trigger("rollback", 0.7, 0.7, 0.0, t0 + 1200, "e" * 32), "rule": "rollback"}, t0 + 1200)
    assert (system.tau, system.shift) == (0.6, 0.0)
    quiet = _system("miscalibrated_threshold", cfg, OPEN)
    quiet.decide(0, t0)
    quiet.on_trigger(_trigger("threshold_adjust", 0.7, 0.5, 0.05, t0 + 300, "f" * 32), t0 + 300)
    assert quiet.tau == 0.7 and quiet.actions == []


def test_unvalidated_advice_stands_on_the_windows_point_saving():
    cfg = SimConfig(seed=2, n_windows=4, decisions_per_window=20, scenarios=("miscalibrated_threshold",))
    system = _system("miscalibrated_threshold", cfg, LoopConfig(unvalidated_advice=True))
    system.decide(0, cfg.start_ts)
    trig = _trigger("threshold_adjust", 0.7, 0.5, 0.0, cfg.start_ts + 300, "a" * 32)
    del trig["evidence"]["heldout_saving_lo"], trig["evidence"]["heldout_saving"]
    system.on_trigger(trig, cfg.start_ts + 300)
    assert system.actions[-1]["decision"] == "applied" and system.actions[-1]["heldout_saving_lo"] == 0.05


def test_decisions_only_is_the_open_loop_without_the_monitor():
    systems = decisions_only(SMALL)
    loop = run_loop(SMALL, MonitorConfig(), OPEN)
    for a, b in zip(systems, loop.systems):
        assert np.array_equal(a.decision, b.decision) and np.array_equal(a.taus, b.taus)
        assert all(e is None for e in a.events)
    draws = key_draws(scenario("stationary"), SMALL, AUDIT_RATE)
    assert np.array_equal(draws.s, loop.systems[0].d.s)
