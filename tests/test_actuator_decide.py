"""The actuator's pure decisions: each guard rail, the step toward tau*, stable ids, and the
probation verdict, without Kafka or Redis."""
import msgspec
import pytest

import schemas
from streams.actuator.decide import (
    ActuatorConfig,
    KeyState,
    Probation,
    action_id,
    decide_adjust,
    probation_due,
    probation_verdict,
    rollback_trigger,
    settle,
    verdict_action,
)
from streams.events import ActionEvent, TriggerEvent

CONFIG = ActuatorConfig(cooldown_s=3600, probation_s=3600, max_step=0.1)
END = 1_767_229_200.0


def trigger(tau=0.5, tau_star=0.65, lo=0.05, end=END, tid="a" * 32) -> TriggerEvent:
    return msgspec.convert({
        "type": "trigger", "v": 1, "trigger_id": tid, "rule": "threshold_adjust", "reason": "advice",
        "policy_id": "pol", "segment": "seg", "window": {"kind": "hopping", "start": end - 3600, "end": end},
        "evidence": {"n_decisions": 100, "n_feedback": 100, "n_labels": 100, "tau": tau, "tau_star": tau_star,
                     "heldout_saving_lo": lo},
        "config_version": "cfg-1", "emitted_at": end + 1}, TriggerEvent)


def valid(action: dict) -> dict:
    schemas.validator("action").validate({**action, "emitted_at": END})
    msgspec.convert({**action, "emitted_at": END}, ActionEvent)
    return action


def test_a_validated_advice_moves_at_most_max_step_and_starts_probation():
    d = decide_adjust(trigger(), KeyState(), 0.5, CONFIG)
    assert valid(d.action)["decision"] == "applied" and d.write_tau == pytest.approx(0.6)
    assert d.action["tau_before"] == 0.5 and d.action["tau_after"] == pytest.approx(0.6)
    assert d.state.last_change_at == END
    assert d.state.probation == Probation(action_id("a" * 32, "applied"), "a" * 32, END, END + 3600, 0.5, 0.6)
    # a small move is taken whole, downward too
    d = decide_adjust(trigger(tau=0.7, tau_star=0.65), KeyState(), 0.7, CONFIG)
    assert d.write_tau == pytest.approx(0.65)


@pytest.mark.parametrize("lo,tau_star", [(None, 0.65), (0.019, 0.65), (0.05, None), (float("nan"), 0.65)])
def test_advice_without_a_passed_validation_is_skipped(lo, tau_star):
    d = decide_adjust(trigger(lo=lo, tau_star=tau_star), KeyState(), 0.5, CONFIG)
    assert (d.action["decision"], d.action["skip_reason"], d.write_tau) == ("skipped", "not_validated", None)
    assert d.state == KeyState()


def test_probation_then_cooldown_block_changes():
    applied = decide_adjust(trigger(), KeyState(), 0.5, CONFIG)
    later = decide_adjust(trigger(tau=0.6, end=END + 7200, tid="b" * 32), applied.state, 0.6, CONFIG)
    assert later.action["skip_reason"] == "probation" and later.write_tau is None
    kept = KeyState(last_change_at=END, probation=None)
    soon = decide_adjust(trigger(tau=0.6, end=END + 1800, tid="b" * 32), kept, 0.6, CONFIG)
    assert valid(soon.action)["skip_reason"] == "cooldown"
    late = decide_adjust(trigger(tau=0.6, end=END + 3600, tid="b" * 32), kept, 0.6, CONFIG)
    assert late.action["decision"] == "applied"


def test_stale_advice_and_advice_that_changes_nothing_are_skipped():
    stale = decide_adjust(trigger(tau=0.55), KeyState(), 0.6, CONFIG)
    assert stale.action["skip_reason"] == "stale"
    same = decide_adjust(trigger(tau=0.65, tau_star=0.65), KeyState(), 0.65, CONFIG)
    assert same.action["skip_reason"] == "no_change"
    # no threshold in Redis yet: the one the decisions were taken with is in force
    assert decide_adjust(trigger(), KeyState(), None, CONFIG).write_tau == pytest.approx(0.6)


def test_advisory_decides_but_writes_nothing_and_watches_nothing():
    d = decide_adjust(trigger(), KeyState(), 0.5, ActuatorConfig(advisory=True))
    assert valid(d.action)["decision"] == "advised" and d.write_tau is None
    assert d.action["tau_after"] == 0.5 and d.action["tau_target"] == pytest.approx(0.6)
    assert d.state.probation is None and d.state.last_change_at == END  # cool-down as if applied


def test_ids_are_stable_per_trigger_and_decision():
    a, b = decide_adjust(trigger(), KeyState(), 0.5, CONFIG), decide_adjust(trigger(), KeyState(), 0.5, CONFIG)
    assert a.action["action_id"] == b.action["action_id"] == action_id("a" * 32, "applied")
    skipped = decide_adjust(trigger(lo=0.0), KeyState(), 0.5, CONFIG)
    assert skipped.action["action_id"] != a.action["action_id"]


def windows(losses_before, losses_after, n=200, start=END, pane=300.0) -> dict:
    """Final tumbling windows: as many before `start` as after, unit weights."""
    out = {}
    for k, loss in enumerate(losses_before):
        s = start - (len(losses_before) - k) * pane
        out[s] = {"end": s + pane, "loss": loss, "weight_sum": float(n), "n_eff": float(n), "n_labels": n,
                  "n_decisions": n, "n_feedback": n}
    for k, loss in enumerate(losses_after):
        s = start + k * pane
        out[s] = {"end": s + pane, "loss": loss, "weight_sum": float(n), "n_eff": float(n), "n_labels": n,
                  "n_decisions": n, "n_feedback": n}
    return out


PROB = Probation("c" * 32, "a" * 32, END, END + 3600, 0.5, 0.6)


def test_probation_is_due_once_a_window_reaches_its_end():
    assert not probation_due(windows([0.1] * 12, [0.1] * 11), PROB)
    assert probation_due(windows([0.1] * 12, [0.1] * 12), PROB)


def test_a_worse_loss_is_reverted_with_a_rollback_trigger():
    v = probation_verdict(windows([0.10] * 12, [0.14] * 12), PROB, CONFIG)
    assert v.decision == "reverted" and v.z > 1.645
    assert v.before.loss == pytest.approx(0.10) and v.after.loss == pytest.approx(0.14)
    assert v.before.n_eff == pytest.approx(2400) and v.after.n_eff == pytest.approx(2400)
    action = valid({**verdict_action(v, PROB, "pol", "seg", CONFIG)})
    assert action["decision"] == "reverted" and action["tau_after"] == 0.5 and action["change_id"] == "c" * 32
    rb = rollback_trigger(v, PROB, "pol", "seg", CONFIG)
    assert rb["trigger_id"] == action["rollback_trigger_id"] and "reverted change " + "c" * 32 in rb["reason"]
    schemas.validator("trigger").validate({**rb, "emitted_at": END})
    msgspec.convert({**rb, "emitted_at": END}, TriggerEvent)


def test_settle_reverts_a_worse_change_once_due_and_leaves_a_replaced_threshold_alone():
    state = KeyState(last_change_at=END, probation=PROB)
    assert settle(windows([0.10] * 12, [0.14] * 11), state, 0.6, "pol", "seg", CONFIG) is None  # not due yet
    worse = windows([0.10] * 12, [0.14] * 12)
    done = settle(worse, state, 0.6, "pol", "seg", CONFIG)
    assert done.action["decision"] == "reverted" and done.write_tau == 0.5
    assert done.state == KeyState(last_change_at=PROB.end, probation=None)
    assert done.rollback["trigger_id"] == done.action["rollback_trigger_id"]
    replaced = settle(worse, state, 0.55, "pol", "seg", CONFIG)  # someone else set 0.55 meanwhile
    assert replaced.action["decision"] == "kept" and "left alone" in replaced.action["reason"]
    assert (replaced.write_tau, replaced.rollback) == (None, None)
    assert replaced.state == KeyState(last_change_at=END, probation=None)
    assert settle(worse, KeyState(last_change_at=END), 0.6, "pol", "seg", CONFIG) is None  # nothing on probation


@pytest.mark.parametrize("after", [[0.10] * 12, [0.105] * 12, [0.05] * 12])
def test_a_loss_not_worse_with_confidence_is_kept(after):
    v = probation_verdict(windows([0.10] * 12, after), PROB, CONFIG)
    assert v.decision == "kept"
    assert valid(verdict_action(v, PROB, "pol", "seg", CONFIG))["tau_after"] == 0.6


def test_too_few_labels_keep_the_change():
    v = probation_verdict(windows([0.0] * 12, [1.0] * 12, n=2), PROB, CONFIG)
    assert v.decision == "kept" and "too few labels" in v.reason


def test_only_the_same_length_before_and_the_probation_after_count():
    w = windows([0.9] * 12 + [0.1] * 12, [0.1] * 12 + [0.9] * 12)  # far windows either side are noise
    v = probation_verdict(w, PROB, CONFIG)
    assert (v.before.windows, v.after.windows) == (12, 12) and v.decision == "kept"


def test_weights_pool_as_effective_sample_sizes():
    w = windows([0.1] * 12, [0.2] * 12)
    for s in w.values():  # weights of 10 each: the same n_eff, ten times the weight
        s["weight_sum"] *= 10
    v = probation_verdict(w, PROB, CONFIG)
    assert v.after.n_eff == pytest.approx(2400) and v.after.loss == pytest.approx(0.2)


def test_config_reads_the_environment_and_flags_win():
    c = ActuatorConfig.load({"max_step": 0.2, "cooldown_s": None},
                            env={"NPO_ACTUATOR_MAX_STEP": "0.05", "NPO_ACTUATOR_COOLDOWN_S": "60",
                                 "NPO_ACTUATOR_ADVISORY": "true"})
    assert (c.max_step, c.cooldown_s, c.advisory) == (0.2, 60.0, True)
    assert c.version != ActuatorConfig().version
    with pytest.raises(ValueError):
        ActuatorConfig.load(env={"NPO_ACTUATOR_ADVISORY": "maybe"})
    with pytest.raises(ValueError):
        ActuatorConfig(max_step=0)
