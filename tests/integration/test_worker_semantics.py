"""Each input case of the pipeline issue, one by one, through the Kafka worker: feedback before
its score, feedback after it, duplicates, a late event, feedback that never meets its score.
The expected numbers are worked out by hand from the events below."""
from __future__ import annotations

import base64
import time

import orjson
import pytest

from streams.config import MonitorConfig
from tests.integration.harness import WorkerThread, json_values, ordered_producer, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = MonitorConfig(join_horizon_s=1800.0)
T0 = 1_767_225_600.0  # pane 0 is [T0, T0 + 300)
KEY = {"policy_id": "pol", "segment": "seg"}


def score(sid: str, dt: float, decision: str, s: float, key: dict = KEY) -> dict:
    return {"type": "score", "v": 1, "event_id": f"s-{sid}", "scenario_id": sid, **key, "score": s,
            "tau": 0.5, "decision": decision, "ts": T0 + dt}


def feedback(sid: str, dt: float, kind: str) -> dict:
    return {"type": "feedback", "v": 1, "event_id": f"f-{sid}", "scenario_id": sid, "ts": T0 + dt, "kind": kind}


ARRIVALS = [  # in this order (Kafka timestamps increase along the list)
    feedback("A", 10, "override"),   # before its score: parked on disk
    score("A", 5, "act", 0.8),       # releases it
    score("B", 20, "hold", 0.3),
    feedback("B", 30, "like"),       # after its score: joined at once
    score("B", 20, "hold", 0.3),     # duplicate
    feedback("B", 30, "like"),       # duplicate
    feedback("Z", 40, "like"),       # its score never comes
    score("C", 700, "act", 0.9),     # the watermark passes pane 0's end + grace: pane 0 closes
    score("D", 50, "act", 0.6),      # late for pane 0: the cumulative view only
    score("E", 5000, "act", 0.5, {"policy_id": "zz-flush", "segment": "flush"}),  # closes the rest; Z expires
]


@pytest.fixture
def settings(cluster):
    return cluster(1)  # fresh topics, deleted afterwards (tests/integration/conftest.py)


def test_each_input_case_is_handled_as_stated(settings):
    producer = ordered_producer(settings)
    # strictly increasing message timestamps near now (old ones would fall to the topics' retention)
    base_ms = int(time.time() * 1000)
    for i, e in enumerate(ARRIVALS):
        topic = settings.topic("scores" if e["type"] == "score" else "feedback")
        producer.produce(topic, orjson.dumps(e), key=e["scenario_id"].encode(), timestamp=base_ms + i)
    assert producer.flush(30) == 0

    worker = WorkerThread(settings, CONFIG).start()
    worker.wait_idle()
    assert worker.alive()
    worker.stop()

    c = worker.worker.counters
    assert c["duplicates"] == 2
    assert c["waiting_for_score"] == 2  # A's feedback (until its score) and Z's (for ever)
    assert c["joined_late"] == 1
    assert c["late_events"] == 1
    assert c["events_in", "score"] == 5 and c["events_in", "override"] == 1 and c["events_in", "like"] == 2
    assert c["dead_letters", "join_expired"] == 1

    stats = [e for e in json_values(read_topic(settings, "stats")) if e["final"] and e["policy_id"] == "pol"]
    pane0 = [e for e in stats if e["window"] == {"kind": "tumbling", "start": T0, "end": T0 + 300}]
    assert len(pane0) == 1
    s = pane0[0]["stats"]
    assert (s["n_decisions"], s["n_act"], s["n_hold"]) == (2, 1, 1)  # A and B; D came late, B's copy is a duplicate
    assert (s["n_feedback"], s["n_override"], s["n_like"]) == (2, 1, 1)  # A's released feedback and B's
    assert s["loss"] == 0.5 and s["coverage"] == 1.0
    cumulative = [e for e in stats if e["window"]["kind"] == "cumulative"]
    last = max(cumulative, key=lambda e: e["window"]["end"])
    assert last["stats"]["n_decisions"] == 4 and last["late_events"] == 1  # A, B, C and the late D

    dead = json_values(read_topic(settings, "deadletters"))
    assert [d["reason"] for d in dead] == ["join_expired"]
    assert "within 1800 s" in dead[0]["detail"] and dead[0]["source"]["offset"] == -1
    original = orjson.loads(base64.b64decode(dead[0]["original_b64"]))
    assert (original["scenario_id"], original["event_id"], original["kind"]) == ("Z", "f-Z", "like")


def test_early_results_for_an_open_window(settings):
    events = [score(f"o{i}", 10 * i, "act", 0.7) for i in range(25)]  # T0 .. T0+240: pane 0 stays open
    producer = ordered_producer(settings)
    for e in events:
        producer.produce(settings.topic("scores"), orjson.dumps(e), key=e["scenario_id"].encode())
    assert producer.flush(30) == 0

    worker = WorkerThread(settings, CONFIG).start()
    worker.wait_idle()
    worker.stop()

    stats = [e for e in json_values(read_topic(settings, "stats")) if e["policy_id"] == "pol"]
    assert stats and all(e["final"] is False for e in stats)  # nothing final: the window is open
    pane0 = [e for e in stats if e["window"] == {"kind": "tumbling", "start": T0, "end": T0 + 300}]
    counts = [e["stats"]["n_decisions"] for e in pane0]
    assert counts and counts == sorted(counts) and 0 < counts[-1] <= 25
