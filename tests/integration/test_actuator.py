"""`npo actuator` on the real broker and Redis: closing the loop on a drifting stream whose
decisions use the threshold in Redis, and SIGKILLs mid-stream that neither apply a change
twice nor lose one."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import orjson
import pytest

from streams.actuator.decide import ActuatorConfig
from streams.actuator.service import Actuator
from streams.actuator.store import ActuatorStore
from streams.config import MonitorConfig
from streams.settings import TOPICS
from streams.state.redis_store import RedisSink, RedisStore
from tests.integration.harness import (WorkerThread, json_values, ordered_producer, read_topic, redis_cluster_settings,
                                       redis_store)
from tests.integration.processes import _spawned, log_tail, wait_for
from tests.services import delete_topics, unique_prefix

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = MonitorConfig()
PANE = CONFIG.windows.tumbling_s
T0 = 1_767_225_600.0  # a multiple of the pane


@pytest.fixture
def settings(kafka_bootstrap, redis_url, tmp_path):
    s = redis_cluster_settings(kafka_bootstrap, redis_url, str(tmp_path / "state"), "act")
    yield s
    delete_topics(kafka_bootstrap, [s.topic(role) for role in TOPICS])


def _until(condition, timeout: float = 60.0, what: str = "condition") -> None:
    """`wait_for` with this module's usual bound."""
    wait_for(condition, timeout, what)


class ActuatorThread:
    """The actuator's loop in a background thread; `stop()` closes it cleanly."""

    def __init__(self, settings, config: ActuatorConfig) -> None:
        self.actuator = Actuator(settings, config)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            self.actuator.start()
            self.actuator.run(self.stop_event)
        except BaseException as e:  # noqa: BLE001 - surfaced to the test
            self.error = e
        finally:
            self.actuator.close()

    def start(self) -> ActuatorThread:
        self.thread.start()
        _until(lambda: self.actuator.assigned.is_set() or self.error is not None, what="the actuator's assignment")
        assert self.error is None, repr(self.error)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)
        assert self.error is None, repr(self.error)


# ---------------------------------------------------------------- the closed loop

KEY = ("credit", "eu")
DECISIONS = 150  # a pane, each labelled
DRIFT, PANES = 12, 46  # the person's optimum moves from 0.5 to 0.65 at pane DRIFT


def _wants_act(score: np.ndarray, optimum: float) -> np.ndarray:
    """P(person wants act | s): 1/2 at the optimum, steep around it, so moving from 0.5 to
    0.65 saves about 0.09 a labelled decision."""
    return np.clip(0.5 + 4.0 * (score - optimum), 0.0, 1.0)


def _pane_events(pane: int, tau: float, rng: np.random.Generator) -> list[dict]:
    """One pane of decisions taken at threshold `tau` and their labels."""
    scores = rng.uniform(0.0, 1.0, DECISIONS)
    wants = rng.uniform(0.0, 1.0, DECISIONS) < _wants_act(scores, 0.5 if pane < DRIFT else 0.65)
    out = []
    for i, (s, want) in enumerate(zip(scores, wants)):
        sid, ts = f"{pane}-{i}", T0 + pane * PANE + i * (PANE - 10) / DECISIONS
        act = bool(s >= tau)
        out.append({"type": "score", "v": 1, "event_id": f"s-{sid}", "scenario_id": sid, "policy_id": KEY[0],
                    "segment": KEY[1], "score": float(s), "tau": tau, "decision": "act" if act else "hold",
                    "ts": ts})
        out.append({"type": "feedback", "v": 1, "event_id": f"f-{sid}", "scenario_id": sid, "ts": ts + 5,
                    "kind": "like" if act == bool(want) else "override"})
    return out


def _closed_pane(store: RedisStore) -> float:
    latest = store.get_stats(*KEY)
    return -1.0 if not latest or "tumbling" not in latest else latest["tumbling"]["window"]["start"]


def test_the_closed_loop_moves_the_threshold_toward_the_optimum_and_brings_the_loss_under_budget(settings):
    store = redis_store(settings)
    store.set_threshold(*KEY, 0.5)
    sink = RedisSink(lambda: redis_store(settings), flush_every_s=0.5)
    sink.start_background(0.5)
    worker = WorkerThread(settings, CONFIG, sink=sink).start()
    config = ActuatorConfig(cooldown_s=1800, probation_s=1800, max_step=0.1, group=unique_prefix("actg"),
                            from_beginning=True)
    actuator = ActuatorThread(settings, config).start()
    rng, producer, used = np.random.default_rng(11), ordered_producer(settings), []
    try:
        for pane in range(PANES):
            tau = store.get_threshold(*KEY)  # the policy decides with the threshold in force now
            used.append(tau)
            for e in _pane_events(pane, tau, rng):
                topic = settings.topic("scores" if e["type"] == "score" else "feedback")
                producer.produce(topic, orjson.dumps(e), key=e["scenario_id"].encode())
            assert producer.flush(30) == 0
            if pane >= 1:  # event time advances no faster than the worker closes panes
                _until(lambda: _closed_pane(store) >= T0 + (pane - 1) * PANE, what=f"pane {pane - 1} to close")
            time.sleep(0.3)
        worker.wait_idle()
        _until(lambda: not ActuatorStore(store).outbox(), what="the outbox to drain")
        time.sleep(2.0)
    finally:
        actuator.stop()
        worker.stop()
        sink.stop()

    actions = json_values(read_topic(settings, "actions"))
    applied = [a for a in actions if a["decision"] == "applied"]
    assert applied, [a["reason"] for a in actions]
    first = applied[0]
    assert first["tau_before"] == 0.5 and first["tau_after"] == pytest.approx(0.6)  # one max step toward 0.65
    assert first["event_time"] >= T0 + DRIFT * PANE  # advice only once the optimum moved
    assert not [a for a in actions if a["decision"] == "reverted"]
    assert [a["change_id"] for a in actions if a["decision"] == "kept"][:1] == [first["action_id"]]
    final = store.get_threshold(*KEY)
    assert abs(final - 0.65) < abs(0.5 - 0.65) and final == used[-1]

    # the loss (override share) of the final windows before the change vs those decided under it
    changed_at = T0 + next(p for p, tau in enumerate(used) if tau != 0.5) * PANE
    tumbling = [e for e in json_values(read_topic(settings, "stats"))
                if e["final"] and e["window"]["kind"] == "tumbling" and e["stats"]["n_labels"]]

    def share(windows) -> float:
        return sum(e["stats"]["n_override"] for e in windows) / sum(e["stats"]["n_labels"] for e in windows)

    before = [e for e in tumbling if T0 + DRIFT * PANE <= e["window"]["start"] and e["window"]["end"] <= changed_at]
    after = [e for e in tumbling if e["window"]["start"] >= changed_at + PANE]
    assert len(before) >= 4 and len(after) >= 12
    assert share(after) < share(before) - 0.03, (share(before), share(after))
    # the true loss goes from about 0.15 (tau 0.5, optimum 0.65) to about 0.07 (tau 0.6): back under budget
    assert share(after) < CONFIG.triggers.l_budget < share(before), (share(before), share(after))


# ---------------------------------------------------------------- crashes mid-stream

KEYS = [(f"pol-{k}", "seg") for k in range(8)]
HOURS = 8


def _tid(*parts) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def _hour_of_windows(h: int, policy_id: str, segment: str) -> list[tuple[str, dict]]:
    """Final tumbling windows of steady loss over hour `h` of one key."""
    out = []
    for p in range(12):
        start = T0 + h * 3600 + p * PANE
        out.append(("stats", {
            "type": "window_stats", "v": 1, "policy_id": policy_id, "segment": segment,
            "window": {"kind": "tumbling", "start": start, "end": start + PANE}, "final": True,
            "stats": {"n_decisions": 100, "n_act": 50, "n_hold": 50, "n_abstain_decisions": 0,
                      "n_feedback": 100, "n_like": 90, "n_override": 10, "n_abstain_feedback": 0,
                      "n_labels": 100, "weight_sum": 100.0, "loss": 0.1, "n_eff": 100.0},
            "late_events": 0, "config_version": "cfg-test"}))
    return out


def _synthetic_stream(hours: range) -> list[tuple[str, dict]]:
    """(role, event) for the given hours of every key: final tumbling windows of steady loss,
    then a validated threshold_adjust trigger at each hour's end that alternates the
    threshold between 0.5 and 0.6, and every third hour advice that fails validation."""
    out = []
    for h in hours:
        for policy_id, segment in KEYS:
            out.extend(_hour_of_windows(h, policy_id, segment))
            end = T0 + (h + 1) * 3600
            tau, tau_star = (0.5, 0.6) if h % 2 == 0 else (0.6, 0.5)
            out.append(("triggers", {
                "type": "trigger", "v": 1, "trigger_id": _tid(policy_id, h), "rule": "threshold_adjust",
                "reason": "test advice", "policy_id": policy_id, "segment": segment,
                "window": {"kind": "hopping", "start": end - 3600, "end": end},
                "evidence": {"n_decisions": 1200, "n_feedback": 1200, "n_labels": 1200, "tau": tau,
                             "tau_star": tau_star, "heldout_saving_lo": 0.0 if h % 3 == 2 else 0.05},
                "config_version": "cfg-test", "emitted_at": end + 1}))
    return out


def _produce(settings, items) -> None:
    producer = ordered_producer(settings)
    for role, event in items:
        producer.produce(settings.topic(role), orjson.dumps(event),
                         key=f"{event['policy_id']}\x1f{event['segment']}".encode())
    assert producer.flush(30) == 0


def _spawn_actuator(settings, group: str, log_path, crash_at: str | None = None) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NPO_")}
    environ.update({"NPO_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
                    "NPO_TOPIC_PREFIX": settings.topic_prefix, "NPO_REDIS_URL": settings.redis_url,
                    "NPO_REDIS_NAMESPACE": settings.redis_namespace, "NPO_ACTUATOR_GROUP": group,
                    "NPO_ACTUATOR_COOLDOWN_S": "1800", "NPO_ACTUATOR_PROBATION_S": "1800",
                    # a SIGKILLed actuator's group membership lapses in 6 s (the broker's minimum), not 45
                    "NPO_KAFKA_X_SESSION_TIMEOUT_MS": "6000", "NPO_KAFKA_X_HEARTBEAT_INTERVAL_MS": "1000"})
    if crash_at:
        environ["NPO_ACTUATOR_CRASH_AT"] = crash_at
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "actuator", "--from-beginning",
                                 "--log-level", "WARNING"], env=environ, stdout=out, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    _spawned.append(proc)  # killed by the integration conftest if the test fails
    return proc


def _moved_or_settled(count, by: int, quiet_s: float):
    """A condition: `count()` has risen by `by` since now, or has not changed for `quiet_s`."""
    start = last = count()
    since = time.monotonic()

    def condition() -> bool:
        nonlocal last, since
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        return now >= start + by or time.monotonic() - since >= quiet_s

    return condition


@pytest.mark.parametrize("crash", ["recorded:5", "published:5", "external"])
def test_sigkill_mid_stream_applies_no_change_twice_and_loses_none(settings, tmp_path, crash):
    group, log_path = unique_prefix("actg").rstrip("."), tmp_path / "actuator.log"
    store = redis_store(settings)
    state = ActuatorStore(store)
    stream = _synthetic_stream(range(HOURS))
    triggers = [e for role, e in stream if role == "triggers"]
    half = len(stream) // 2
    _produce(settings, stream[:half])
    proc = _spawn_actuator(settings, group, log_path, crash_at=None if crash == "external" else crash)
    kills = 0
    if crash == "external":  # SIGKILL from outside, twice, while it works through the stream
        for _ in range(2):
            # six more decisions, or none for 3 s (a fast run decided all it could): the kill lands either way
            _until(_moved_or_settled(lambda: len(store.client.hkeys(store.ns + "actuator:done")), 6, 3.0),
                   what="decisions before the kill")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            kills += 1
            proc = _spawn_actuator(settings, group, log_path)
    else:  # it kills itself at the crash point; restarted without one
        assert proc.wait(timeout=120) == -signal.SIGKILL, log_tail(proc)
        kills += 1
        proc = _spawn_actuator(settings, group, log_path)
    rest = stream[half:]
    _produce(settings, rest)
    done_key = store.ns + "actuator:done"
    _until(lambda: len(store.client.hkeys(done_key)) == len(triggers), timeout=120, what="every trigger decided")
    # A probation is settled only when a final window of its key arrives after the change and
    # the windows stored by then reach its end; the two topics are read in no fixed order, so
    # the last change's windows may all have come first. An hour of windows after every
    # decision settles whatever is still open.
    _produce(settings, [w for k in KEYS for w in _hour_of_windows(HOURS, *k)])
    _until(lambda: not state.outbox() and all(state.key_state(*k).probation is None for k in KEYS), timeout=60,
           what="every probation settled and the outbox published")
    assert proc.poll() is None, log_tail(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log_tail(proc)
    assert kills >= 1

    # none lost: every trigger has exactly one decision, and it was published
    decided = {k.decode(): v.decode() for k, v in store.client.hgetall(done_key).items()}
    assert set(decided) == {t["trigger_id"] for t in triggers}
    actions = json_values(read_topic(settings, "actions"))
    by_id: dict[str, dict] = {}
    for a in actions:  # a republished action is the same action
        assert by_id.setdefault(a["action_id"], a) == a
    assert set(decided.values()) <= set(by_id)
    assert {a["trigger_id"] for a in by_id.values() if a["decision"] in ("applied", "skipped")} == set(decided)
    # no change applied twice: one threshold write per applied (or reverted) action, ever
    effects = state.effects()
    ids = [e["action_id"] for e in effects]
    assert len(ids) == len(set(ids))
    assert set(ids) == {i for i, a in by_id.items() if a["decision"] in ("applied", "reverted")}
    assert sum(a["decision"] == "applied" for a in by_id.values()) >= len(KEYS)
    for key in KEYS:  # the threshold in force is the key's last write, in event-time order
        writes = sorted((by_id[e["action_id"]]["event_time"], e["tau"]) for e in effects
                        if (e["policy_id"], e["segment"]) == key)
        assert writes and store.get_threshold(*key) == writes[-1][1]
        applied_at = sorted(a["event_time"] for a in by_id.values()
                      if (a["policy_id"], a["segment"]) == key and a["decision"] == "applied")
        assert all(b - a >= 1800 for a, b in zip(applied_at, applied_at[1:]))  # the cool-down held across restarts
    # skipped triggers (failed validation) changed nothing
    assert {a["skip_reason"] for a in by_id.values() if a["decision"] == "skipped"} >= {"not_validated"}
