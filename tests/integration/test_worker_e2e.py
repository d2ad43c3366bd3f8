"""The Kafka worker end to end, on the real broker: same statistics and trigger ids as the
in-process run, dead letters for every kind of bad input, a retraining consumer reading each
trigger once."""
from __future__ import annotations

import base64
import time
from collections import Counter

import orjson
import pytest

from streams.codec import MAX_ORIGINAL_BYTES
from streams.config import MonitorConfig
from streams.demo.runner import encode_messages, run_partitioned, run_pipeline
from streams.kafka.producer import EventProducer, partition_for
from streams.kafka.triggers import iter_triggers
from streams.worker.outputs import window_stats_events
from tests.integration.harness import WorkerThread, json_values, merged_by_partition, ordered_producer, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = MonitorConfig()
FLUSH_KEY = ("zz-flush", "flush")


def _flush_events(events: list[dict], partitions: int) -> list[dict]:
    """One far-later score per partition, so every window holding simulated events closes."""
    ts = max(e["ts"] for e in events) + 900.0
    out, i = [], 0
    while len(out) < partitions:
        sid = f"flush-{i}"
        if partition_for(sid.encode(), partitions) == len(out):
            out.append({"type": "score", "v": 1, "event_id": f"s-{sid}", "scenario_id": sid,
                        "policy_id": FLUSH_KEY[0], "segment": FLUSH_KEY[1], "score": 0.5, "tau": 0.5,
                        "decision": "act", "ts": ts})
        i += 1
    return out


def _cut(events: list[dict]) -> float:
    return max(e["ts"] for e in events) + 300.0


def _expected(results, cut: float) -> dict:
    """Final window statistics the in-process run produced, keyed like the worker's output."""
    out = {}
    for res in results:
        if res.kind == "early":
            continue
        for _, event in window_stats_events(res, CONFIG.version):
            w = event["window"]
            if (event["policy_id"], event["segment"]) != FLUSH_KEY and w["end"] <= cut:
                out[(event["policy_id"], event["segment"], w["kind"], w["start"], w["end"])] = event
    return out


def _published(settings, cut: float) -> dict:
    out = {}
    for event in json_values(read_topic(settings, "stats")):
        w = event["window"]
        if event["final"] and (event["policy_id"], event["segment"]) != FLUSH_KEY and w["end"] <= cut:
            out[(event["policy_id"], event["segment"], w["kind"], w["start"], w["end"])] = event
    return out


def _assert_same_windows(got: dict, want: dict) -> None:
    assert set(got) == set(want), (sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5])
    for key, event in want.items():
        a, b = got[key]["stats"], event["stats"]
        for name, value in b.items():
            if isinstance(value, float):  # pytest.approx(rel=1e-9, abs=1e-12), written out: 100k of them a test
                assert abs(a[name] - value) <= max(1e-9 * abs(value), 1e-12), (key, name, a[name], value)
            else:
                assert a[name] == value, (key, name)
        assert got[key]["late_events"] == event["late_events"], key


def _trigger_ids(triggers, cut: float) -> set[str]:
    return {t["trigger_id"] for t in triggers
            if (t["policy_id"], t["segment"]) != FLUSH_KEY and t["window"]["end"] <= cut}


def assert_same_as_in_process(settings, simulated: list[dict], partitions: int) -> None:
    """What the worker(s) published equals the in-process run on the same messages, taken in
    the order the worker merges them: every final window's statistics, and the trigger ids."""
    reference = run_partitioned(merged_by_partition(settings, partitions), CONFIG)
    cut = _cut(simulated)
    want = _expected(reference.results, cut)
    assert len(want) > 100
    _assert_same_windows(_published(settings, cut), want)
    published = json_values(read_topic(settings, "triggers"))
    assert _trigger_ids(published, cut) == _trigger_ids(reference.triggers, cut) != set()


def test_single_events_give_exactly_the_demo_statistics_and_trigger_ids(cluster, sim):
    settings = cluster(1)
    events = sim.events + _flush_events(sim.events, 1)
    producer = ordered_producer(settings, **{"linger.ms": 5})
    # strictly increasing message timestamps near now (old ones would fall to the topics' retention)
    base_ms = int(time.time() * 1000)
    for i, e in enumerate(events):  # strictly increasing timestamps: the merged order is the arrival order
        topic = settings.topic("scores" if e["type"] == "score" else "feedback")
        producer.produce(topic, orjson.dumps(e), key=e["scenario_id"].encode(), timestamp=base_ms + i)
        if i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    assert merged_by_partition(settings, 1) == [[orjson.dumps(e) for e in events]], "the log holds the sent order"

    worker = WorkerThread(settings, CONFIG).start()
    worker.wait_idle()
    worker.stop()

    demo = run_pipeline(encode_messages(events, 1), CONFIG)  # what `npo demo` runs, in process
    cut = _cut(sim.events)
    want = _expected(demo.results, cut)
    assert len(want) > 100
    _assert_same_windows(_published(settings, cut), want)
    published = json_values(read_topic(settings, "triggers"))
    assert _trigger_ids(published, cut) == _trigger_ids(demo.triggers, cut) != set()
    assert worker.worker.counters["events_in", "score"] == sum(e["type"] == "score" for e in events)


def test_envelopes_on_four_partitions_give_the_same_statistics_as_in_process(cluster, sim):
    settings = cluster(4)
    events = sim.events + _flush_events(sim.events, 4)
    with EventProducer(settings, envelope=True, max_events=500) as producer:
        for e in events:
            producer.send(e)

    worker = WorkerThread(settings, CONFIG).start()
    worker.wait_idle()
    worker.stop()

    assert sum(map(len, merged_by_partition(settings, 4))) < len(events) / 10, "envelopes carry many events each"
    assert_same_as_in_process(settings, sim.events, 4)


BAD_INPUT = [  # (reason, raw message)
    ("not_json", b"{this is not json"),
    ("unknown_version", orjson.dumps({"type": "score", "v": 7, "event_id": "x"})),
    ("bad_value", b'{"type":"score","v":1,"event_id":"n","scenario_id":"n","policy_id":"p","score":NaN,'
                  b'"tau":0.5,"decision":"act","ts":1767225600}'),
    ("bad_value", orjson.dumps({"type": "score", "v": 1, "event_id": "r", "scenario_id": "r", "policy_id": "p",
                                "score": 1.5, "tau": 0.5, "decision": "act", "ts": 1767225600.0})),
    ("unknown_kind", orjson.dumps({"type": "feedback", "v": 1, "event_id": "k", "scenario_id": "k",
                                   "ts": 1767225600.0, "kind": "shrug"})),
    ("schema", orjson.dumps({"type": "score", "v": 1, "event_id": "m"})),
    ("id_too_long", orjson.dumps({"type": "score", "v": 1, "event_id": "x" * 5000, "scenario_id": "s",
                                "policy_id": "p", "score": 0.5, "tau": 0.5, "decision": "act", "ts": 1.0})),
    ("oversized", b'{"type":"envelope","v":1,"events":[' + b",".join([b"{}"] * 10_001) + b"]}"),
    ("too_deep", b'{"type":"score","v":1,"x":' + b"[" * 40 + b"]" * 40 + b"}"),
    ("unknown_type", orjson.dumps({"type": "recipe", "v": 1})),
]


def test_every_kind_of_bad_input_is_dead_lettered_and_the_worker_keeps_going(cluster):
    settings = cluster(2)
    good = [{"type": "score", "v": 1, "event_id": f"s{i}", "scenario_id": f"c{i}", "policy_id": "p",
             "segment": "s", "score": 0.7, "tau": 0.5, "decision": "act", "ts": 1767225600.0 + i} for i in range(50)]
    producer = ordered_producer(settings)
    for i, e in enumerate(good):
        producer.produce(settings.topic("scores"), orjson.dumps(e), key=e["scenario_id"].encode())
        if i % 10 == 0:
            for reason, raw in BAD_INPUT:
                producer.produce(settings.topic("feedback" if i % 20 else "scores"), raw, key=reason.encode())
    assert producer.flush(30) == 0

    worker = WorkerThread(settings, CONFIG).start()
    worker.wait_idle()
    assert worker.alive()
    worker.stop()

    dead = json_values(read_topic(settings, "deadletters"))
    assert sorted({d["reason"] for d in dead}) == sorted({reason for reason, _ in BAD_INPUT})
    assert Counter(d["reason"] for d in dead) == Counter(5 * [reason for reason, _ in BAD_INPUT])
    assert len(dead) == 5 * len(BAD_INPUT)
    for d in dead:
        assert d["source"]["topic"] in (settings.topic("scores"), settings.topic("feedback"))
        assert d["source"]["offset"] >= 0 and d["original_size"] > 0 and d["detail"]
        kept = base64.b64decode(d["original_b64"])
        assert len(kept) <= min(d["original_size"], MAX_ORIGINAL_BYTES)  # bounded, a prefix of the message
    counters = worker.worker.counters
    assert counters["events_in", "score"] == len(good)
    assert sum(v for k, v in counters.items() if isinstance(k, tuple) and k[0] == "dead_letters") == len(dead)


def test_a_retraining_job_reads_each_trigger_once(cluster, sim):
    settings = cluster(1)
    events = sim.events + _flush_events(sim.events, 1)
    with EventProducer(settings, envelope=True) as producer:
        for e in events:
            producer.send(e)
    worker = WorkerThread(settings, CONFIG).start()
    worker.wait_idle()
    worker.stop()
    published = json_values(read_topic(settings, "triggers"))
    assert published
    # the same triggers again, as a worker replaying after a crash would send them
    producer = ordered_producer(settings)
    for t in published:
        producer.produce(settings.topic("triggers"), orjson.dumps(t))
    producer.flush(30)

    seen = [t.trigger_id for t in iter_triggers(settings, group_id="retrainer", idle_timeout=5.0)]
    assert sorted(seen) == sorted({t["trigger_id"] for t in published})
    assert len(seen) == len(set(seen))
