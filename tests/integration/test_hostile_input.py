"""Hostile input at a running worker: random bytes, truncated and oversized envelopes (JSON and
columnar), deeply nested JSON, huge strings, wrong types, unknown versions, interleaved with
good records. The
worker stays up, every bad record is dead-lettered once with its reason, the good records
around them are all counted, and memory does not grow with what was thrown at it.
(The decoders alone are fuzzed with hypothesis in tests/test_codec.py and tests/test_columnar.py.)"""
from __future__ import annotations

import random
from collections import Counter

import msgspec
import numpy as np
import orjson
import pytest

from streams.config import MonitorConfig
from tests.integration.harness import WorkerThread, json_values, ordered_producer, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = 1_767_225_600.0


def _score(i: int) -> dict:
    return {"type": "score", "v": 1, "event_id": f"s{i}", "scenario_id": f"c{i}", "policy_id": "p",
            "segment": "s", "score": 0.6, "tau": 0.5, "decision": "act", "ts": T0 + i}


def _envelope(events: list[dict]) -> bytes:
    return orjson.dumps({"type": "envelope", "v": 1, "events": events})


def _columnar(events: list[dict], scores: list[float] | None = None) -> bytes:
    """A columnar envelope of score events (`scores`: their score column, as given)."""
    f8 = (lambda values: np.array(values, "<f8").tobytes())
    return msgspec.msgpack.encode({
        "type": "columns", "v": 1, "is_score": bytes([1] * len(events)), "event_id": [e["event_id"] for e in events],
        "scenario_id": [e["scenario_id"] for e in events], "ts": f8([e["ts"] for e in events]),
        "scores": {"policy_id": [e["policy_id"] for e in events], "segment": [e["segment"] for e in events],
                   "score": f8(scores or [e["score"] for e in events]), "tau": f8([e["tau"] for e in events]),
                   "decision": [e["decision"] for e in events]}})


def _hostile(rnd: random.Random, i: int) -> tuple[bytes, str | None]:
    """One bad message and the reason it must be dead-lettered with (None: any reason)."""
    kind = i % 10
    if kind == 8:
        whole = _columnar([_score(10_000_000 + i * 100 + k) for k in range(50)])
        return whole[: rnd.randint(1, len(whole) - 1)], "not_msgpack"
    if kind == 9:  # a column claiming 2^32 - 1 cells it does not hold
        return _columnar([_score(0)]).replace(b"\xa8event_id\x91", b"\xa8event_id\xdd\xff\xff\xff\xff"), "not_msgpack"
    if kind == 0:
        return rnd.randbytes(rnd.randint(0, 2000)), None
    if kind == 1:
        whole = _envelope([_score(10_000_000 + i * 100 + k) for k in range(50)])
        return whole[: rnd.randint(1, len(whole) - 1)], "not_json"
    if kind == 2:
        depth = rnd.choice([50, 1000, 100_000])
        return b'{"type":"score","v":1,"x":' + b"[" * depth + b"]" * depth + b"}", "too_deep"
    if kind == 3:
        return orjson.dumps({**_score(0), "event_id": "x" * rnd.randint(300, 900_000)}), "id_too_long"
    if kind == 4:
        return orjson.dumps({**_score(0), "score": rnd.choice(["high", None, [], {}, True])}), None
    if kind == 5:
        return orjson.dumps({**_score(0), "v": rnd.choice([0, 2, 99, "1"])}), None
    if kind == 6:
        return b'{"type":"envelope","v":1,"events":[' + b",".join([b"{}"] * 10_001) + b"]}", "oversized"
    return orjson.dumps({"type": rnd.choice(["scores", "", "SCORE", "trigger"]), "v": 1}), None


@pytest.fixture
def settings(cluster):
    return cluster(2)  # fresh topics, deleted afterwards (tests/integration/conftest.py)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_running_worker_survives_hostile_input(settings):
    rnd = random.Random(20261128)
    producer = ordered_producer(settings, **{"message.max.bytes": 1_000_000})
    good_scores, expected_reasons, n_bad = 0, Counter(), 0
    worker = WorkerThread(settings, MonitorConfig()).start()
    rss_after_warmup = None
    for round_ in range(4):
        for i in range(60):
            n = round_ * 1000 + i * 10
            if i % 6 == 3:  # a columnar envelope of good events with one bad row inside
                events = [_score(n + k) for k in range(6)]
                producer.produce(settings.topic("scores"), _columnar(events, [0.6] * 5 + [float("inf")]),
                                 key=f"c{n}".encode())
                good_scores += 5
                n_bad += 1
                expected_reasons["bad_value"] += 1
            elif i % 3 == 0:  # an envelope of good events with one bad event inside
                events = [_score(n + k) for k in range(5)] + [{**_score(n + 5), "score": float("inf")}]
                producer.produce(settings.topic("scores"), _envelope(events[:5]).replace(
                    b"]}", b',{"type":"score","v":1,"event_id":"bad","scenario_id":"b","policy_id":"p",'
                           b'"score":1e999,"tau":0.5,"decision":"act","ts":1}]}'), key=f"c{n}".encode())
                good_scores += 5
                n_bad += 1
                expected_reasons["bad_value"] += 1
            else:
                producer.produce(settings.topic("scores"), orjson.dumps(_score(n)), key=f"c{n}".encode())
                good_scores += 1
            data, reason = _hostile(rnd, round_ * 60 + i)
            producer.produce(settings.topic("feedback" if i % 2 else "scores"), data, key=b"x")
            n_bad += 1
            if reason:
                expected_reasons[reason] += 1
        assert producer.flush(30) == 0
        worker.wait_idle(quiet_s=3.0)
        assert worker.alive()
        if round_ == 0:
            rss_after_warmup = _rss_mb()
    rss_growth = _rss_mb() - rss_after_warmup
    worker.stop()

    dead = json_values(read_topic(settings, "deadletters"))
    assert len(dead) == n_bad  # each bad record once
    got = Counter(d["reason"] for d in dead)
    for reason, n in expected_reasons.items():
        assert got[reason] >= n, (reason, got)
    assert all(d["original_size"] > 0 or d["reason"] == "not_json" for d in dead)
    assert worker.worker.counters["events_in", "score"] == good_scores
    # three more rounds of the same hostile mix cost no lasting memory (generous bound: the
    # test process also holds the broker client buffers)
    assert rss_growth < 100, rss_growth
