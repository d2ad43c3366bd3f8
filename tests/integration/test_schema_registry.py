"""A real Confluent-compatible Schema Registry (Apicurio Registry, tests/infra/registry.sh) with the
real broker: `npo schemas register` registers each topic's schema once however often it runs, and
the worker reads messages framed with the ids it got as a Confluent serializer frames them,
counting each id; broken frames are dead-lettered with their reasons."""
from __future__ import annotations

import base64
import json
import urllib.request

import orjson
import pytest
from jsonschema import Draft202012Validator

from streams import codec
from streams.cli import main
from streams.config import MonitorConfig
from streams.kafka.registry import TOPIC_SCHEMAS
from tests.integration.harness import WorkerThread, json_values, ordered_producer, read_topic
from tests.services import ServiceUnavailable, _parse_env, _script, _unavailable

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def registry_url():
    """The Confluent-compatible API of a registry started for this module and stopped after it."""
    try:
        url = _parse_env(_script("registry.sh", "start"))["NPO_SCHEMA_REGISTRY_URL"]
    except (ServiceUnavailable, KeyError) as exc:
        _unavailable(f"Schema Registry unavailable ({exc!r}); it needs Java 17+ and Maven (tests/infra/registry.sh)")
    yield url
    try:
        _script("registry.sh", "stop", timeout=60)
    except ServiceUnavailable as exc:  # pragma: no cover - teardown must not mask the test result
        print(f"stopping the registry failed: {exc}")


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _register(url: str, settings, capsys) -> dict[str, int]:
    argv = ["schemas", "register", "--registry-url", url, "--topic-prefix", settings.topic_prefix]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    return {subject: int(schema_id) for subject, schema_id in (line.split(": id ") for line in lines)}


def _frame(schema_id: int, value: dict) -> bytes:
    """What Confluent's JSON Schema serializer writes: magic byte 0, the 4-byte id, the JSON."""
    return b"\x00" + schema_id.to_bytes(4, "big") + orjson.dumps(value)


def test_registered_ids_frame_messages_the_worker_reads(registry_url, cluster, capsys):
    settings = cluster(2)
    ids = _register(registry_url, settings, capsys)
    assert sorted(ids) == sorted(f"{settings.topic(role)}-value" for role in TOPIC_SCHEMAS)
    assert _register(registry_url, settings, capsys) == ids  # idempotent: the same ids, no new versions
    for subject in ids:
        assert _get(f"{registry_url}/subjects/{subject}/versions") == [1]

    scores_id, feedback_id = ids[f"{settings.topic('scores')}-value"], ids[f"{settings.topic('feedback')}-value"]
    stored = _get(f"{registry_url}/schemas/ids/{scores_id}")
    assert stored["schemaType"] == "JSON"
    scores_schema = Draft202012Validator(json.loads(stored["schema"]))  # what a serializer validates with
    scores = [{"type": "score", "v": 1, "event_id": f"s{i}", "scenario_id": f"c{i}", "policy_id": "p",
               "score": 0.7, "tau": 0.5, "decision": "act", "ts": 1767225600.0 + i} for i in range(20)]
    feedback = [{"type": "feedback", "v": 1, "event_id": f"f{i}", "scenario_id": f"c{i}", "ts": 1767225700.0 + i,
                 "kind": "like"} for i in range(20)]
    assert all(scores_schema.is_valid(s) for s in scores)
    assert not scores_schema.is_valid({**scores[0], "score": 2})

    before = dict(codec.schema_ids)
    producer = ordered_producer(settings)
    for s in scores:
        producer.produce(settings.topic("scores"), _frame(scores_id, s), key=s["scenario_id"].encode())
    envelope = {"type": "envelope", "v": 1, "events": feedback}
    producer.produce(settings.topic("feedback"), _frame(feedback_id, envelope), key=b"c0")
    broken = {"truncated_frame": b"\x00\x00\x00", "unknown_magic_byte": b"\x01" + _frame(scores_id, scores[0])[1:],
              "bad_value": _frame(scores_id, {**scores[0], "event_id": "bad", "score": 2})}
    for raw in broken.values():
        producer.produce(settings.topic("scores"), raw, key=b"c0")
    assert producer.flush(30) == 0

    worker = WorkerThread(settings, MonitorConfig()).start()
    worker.wait_for(("events_in", "score"), len(scores))
    worker.wait_for(("events_in", "like"), len(feedback))
    worker.wait_idle()
    worker.stop()

    counts = {i: codec.schema_ids[i] - before.get(i, 0) for i in (scores_id, feedback_id)}
    assert counts == {scores_id: len(scores) + 1, feedback_id: 1}  # + the frame with a bad score
    dead = {d["reason"]: d for d in json_values(read_topic(settings, "deadletters"))}
    assert sorted(dead) == sorted(broken)
    assert {reason: base64.b64decode(d["original_b64"]) for reason, d in dead.items()} == broken  # as sent


def test_confluents_json_serializer_frames_what_the_codec_reads(registry_url, cluster, capsys):
    """Confluent's own serializer (the confluent-kafka[schemaregistry,json] extra, a test
    dependency), looking the schema up as producers do: it validates with the registered
    document and frames with its id."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.json_schema import JSONSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    settings = cluster(1)
    subject = f"{settings.topic('scores')}-value"
    schema_id = _register(registry_url, settings, capsys)[subject]
    client = SchemaRegistryClient({"url": registry_url})
    latest = client.get_latest_version(subject)
    serializer = JSONSerializer(latest.schema.schema_str, client,
                                conf={"auto.register.schemas": False, "use.latest.version": True})
    ctx = SerializationContext(settings.topic("scores"), MessageField.VALUE)
    score = {"type": "score", "v": 1, "event_id": "e", "scenario_id": "c", "policy_id": "p", "score": 0.7,
             "tau": 0.5, "decision": "act", "ts": 1767225600.0}
    envelope = {"type": "envelope", "v": 1, "events": [score, {**score, "event_id": "e2"}]}
    with pytest.raises(Exception, match="score"):
        serializer({**score, "score": 2}, ctx)  # the registered schema is enforced at the producer

    before = codec.schema_ids[schema_id]
    framed = [serializer(score, ctx), serializer(envelope, ctx)]
    assert all(m[:5] == b"\x00" + schema_id.to_bytes(4, "big") for m in framed)
    assert [e.event_id for e in codec.decode_batch(framed)[0]] == ["e", "e", "e2"]
    assert codec.schema_ids[schema_id] - before == 2
