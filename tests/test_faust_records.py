"""The faust.Record models read what the pipeline writes and write what it accepts."""
from __future__ import annotations

import json

import orjson
import pytest

import schemas
from streams import codec
from streams.config import MonitorConfig
from streams.demo.runner import encode_messages, run_pipeline
from streams.faust.records import Envelope, Feedback, Score, Trigger, WindowStats
from streams.simulate import SimConfig, simulate
from streams.worker.outputs import window_stats_events


@pytest.fixture(scope="module")
def run():
    sim = simulate(SimConfig(seed=3, n_windows=36, decisions_per_window=120))
    config = MonitorConfig()
    return sim, config, run_pipeline(encode_messages(sim.events, 1), config, batch=500)


def _written(record) -> dict:
    return json.loads(record.dumps())


def test_triggers_the_pipeline_publishes_read_back_whole_and_validate(run):
    _, _, result = run
    assert result.triggers
    validator = schemas.validator("trigger")
    for trig in result.triggers:
        trig = {**trig, "emitted_at": 1.0}  # set by the host as it publishes
        record = Trigger.loads(orjson.dumps(trig))
        assert (record.trigger_id, record.rule, record.window.start, record.window.end) == (
            trig["trigger_id"], trig["rule"], trig["window"]["start"], trig["window"]["end"])
        assert record.evidence == json.loads(orjson.dumps(trig["evidence"]))
        validator.validate(_written(record))


def test_window_statistics_read_back_whole_and_validate(run):
    _, config, result = run
    validator = schemas.validator("window_stats")
    events = [e for res in result.results if res.kind != "early" for _, e in window_stats_events(res, config.version)]
    assert len(events) > 100
    for event in events[:300]:
        record = WindowStats.loads(orjson.dumps(event))
        assert (record.window.kind, record.final, record.late_events) == (
            event["window"]["kind"], event["final"], event["late_events"])
        assert record.stats == json.loads(orjson.dumps(event["stats"]))
        validator.validate(_written(record))


def test_events_written_with_the_records_are_what_the_pipeline_decodes(run):
    sim, _, _ = run
    scores = [e for e in sim.events if e["type"] == "score"][:50]
    feedback = [e for e in sim.events if e["type"] == "feedback"][:50]
    records = [Score.from_data(e) for e in scores] + [Feedback.from_data(e) for e in feedback]
    for record, original in zip(records, scores + feedback):
        schemas.validator(original["type"]).validate(_written(record))
        decoded, rejected = codec.decode_batch([record.dumps()])
        assert not rejected and codec.decode_batch([orjson.dumps(original)])[0] == decoded
    envelope = Envelope(events=records, producer="faust-app")
    schemas.validator("envelope").validate(_written(envelope))
    decoded, rejected = codec.decode_batch([envelope.dumps()])
    assert not rejected and decoded == codec.decode_batch([orjson.dumps(e) for e in scores + feedback])[0]
    back = Envelope.loads(envelope.dumps()).typed()
    assert [type(r) for r in back] == [Score] * 50 + [Feedback] * 50 and back[0].score == scores[0]["score"]


def test_unknown_fields_of_a_newer_minor_version_are_not_refused():
    raw = orjson.dumps({"type": "score", "v": 1, "event_id": "e", "scenario_id": "c", "policy_id": "p",
                        "score": 0.5, "tau": 0.4, "decision": "act", "ts": 10.0, "added_in_1_1": "x"})
    record = Score.loads(raw)
    assert record.segment == "default" and record.decision == "act"

