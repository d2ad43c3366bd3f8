"""streams.kafka against the real broker: topic creation, the event producer (envelope and
single mode agree on placement with librdkafka and Kafka's partitioner), the trigger
consumer's at-least-once contract, and failing fast on a wrong address or credentials."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
import time
import uuid
from collections import Counter

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from streams import codec, columnar
from streams.events import Evidence, ScoreEvent, TriggerEvent, Window
from streams.kafka.admin import create_topics
from streams.kafka.commands import add_commands, settings_args
from streams.kafka.errors import KafkaAuthError, KafkaUnavailable
from streams.kafka.producer import EventProducer, murmur2, partition_for, produce_file
from streams.kafka.triggers import SeenIds, iter_triggers
from streams.settings import TOPICS, load
from tests.services import delete_topics, unique_prefix

pytestmark = pytest.mark.integration

PARTITIONS = 4


@pytest.fixture
def settings(kafka_bootstrap):
    s = load(overrides={"kafka_bootstrap_servers": kafka_bootstrap, "topic_prefix": unique_prefix("kc")}, env={})
    yield s
    delete_topics(kafka_bootstrap, [s.topic(role) for role in TOPICS])


@pytest.fixture
def topics(settings):
    create_topics(settings, partitions=PARTITIONS)
    return settings


def score(i: int, scenario: str) -> dict:
    return {"type": "score", "v": 1, "event_id": f"s{i}", "scenario_id": scenario, "policy_id": "p1",
            "score": 0.5, "tau": 0.4, "decision": "act", "ts": 1000.0 + i}


def feedback(i: int, scenario: str) -> dict:
    return {"type": "feedback", "v": 1, "event_id": f"f{i}", "scenario_id": scenario, "ts": 2000.0 + i,
            "kind": "like"}


def mixed(n: int) -> list[dict]:
    """Scores and feedback over 97 scenarios whose ids have every length mod 4."""
    return [(score if i % 2 else feedback)(i, f"scn-{i % 97}" + "x" * (i % 4)) for i in range(n)]


def trigger(trigger_id: str) -> TriggerEvent:
    return TriggerEvent(v=1, trigger_id=trigger_id, rule="retrain", reason="cusum", policy_id="p1",
                        segment="default", window=Window(kind="tumbling", start=0.0, end=300.0),
                        evidence=Evidence(n_decisions=10, n_feedback=5, n_labels=5),
                        config_version="v1", emitted_at=1000.0)


def read_back(settings, roles: list[str], timeout: float = 15.0, at_least: int = 0) -> list:
    """Every record of the roles' topics, read from the beginning with aiokafka: up to the end
    offsets, and on until `at_least` records have come or `timeout` passes (once, on a freshly
    started broker, the end offsets read right after a flush were one message short of what
    the producer had acknowledged; a message truly missing still fails here)."""
    metadata = AdminClient(settings.confluent()).list_topics(timeout=10).topics
    tps = [TopicPartition(settings.topic(r), p) for r in roles for p in metadata[settings.topic(r)].partitions]

    async def run():
        consumer = AIOKafkaConsumer(**settings.aiokafka(), enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign(tps)
            end = await consumer.end_offsets(tps)
            nxt = {tp: 0 for tp in tps}  # next offset to see, from the records themselves
            records, deadline = [], time.monotonic() + timeout
            while [tp for tp in tps if nxt[tp] < end[tp]] or len(records) < at_least:
                assert time.monotonic() < deadline, f"records missing: {len(records)} read"  # fail-fast bound
                for tp, batch in (await consumer.getmany(timeout_ms=500)).items():
                    records.extend(batch)
                    nxt[tp] = batch[-1].offset + 1
            return records
        finally:
            await consumer.stop()

    return asyncio.run(run())


# ----------------------------------------------------------------------------- admin
def test_create_topics_is_idempotent_and_as_declared(settings):
    names = [settings.topic(role) for role in TOPICS]
    assert create_topics(settings, partitions=3) == dict.fromkeys(names, "created")
    assert create_topics(settings, partitions=3) == dict.fromkeys(names, "exists")
    assert create_topics(settings, partitions=5) == dict.fromkeys(names, "exists (3 partitions)")

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    metadata = admin.list_topics(timeout=10).topics
    assert all(len(metadata[n].partitions) == 3 for n in names)
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in names])
    for resource, future in futures.items():
        entries = future.result(timeout=10)
        declared = TOPICS[resource.name[len(settings.topic_prefix):]]
        assert {k: entries[k].value for k in declared} == declared


# ----------------------------------------------------------------------------- placement
def test_murmur2_matches_the_java_client():
    vectors = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
               b"a-little-bit-longer-string": -1486304829, b"abc": 479470107, b"": 275646681,
               b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971}
    assert {k: murmur2(k) for k in vectors} == vectors
    assert partition_for(b"foobar", 50) == 16 and partition_for(b"foobar", 10) == 6


def test_partition_for_matches_librdkafka(settings):
    create_topics(settings, partitions=7)
    events = [score(i, f"k{i}" + "y" * (i % 5)) for i in range(300)]
    with EventProducer(settings, envelope=False) as producer:
        for ev in events:
            producer.send(ev)
    records = read_back(settings, ["scores"])
    assert len(records) == 300
    assert all(r.partition == partition_for(r.key, 7) for r in records)
    assert len({r.partition for r in records}) == 7


# ----------------------------------------------------------------------------- producer
@pytest.mark.parametrize("envelope,fmt", [(True, "columnar"), (True, "json"), (False, "columnar")],
                         ids=["columnar-envelope", "json-envelope", "single"])
def test_producer_delivers_every_event_once_on_its_partition(topics, envelope, fmt):
    events = mixed(2500)
    settings = dataclasses.replace(topics, envelope_format=fmt)
    with EventProducer(settings, envelope=envelope, max_events=100, linger_ms=60_000) as producer:
        for ev in events:
            producer.send(ev)
    assert (producer.events, producer.errors) == (2500, 0)

    records = read_back(topics, ["scores", "feedback"], at_least=producer.messages)
    assert len(records) == producer.messages
    seen = Counter()
    for r in records:
        decoded = codec.decode(r.value)
        assert not decoded.errors
        assert len(decoded.events) <= (100 if envelope else 1)
        assert columnar.is_columnar(r.value) == (envelope and fmt == "columnar")
        assert r.value.startswith(b'{"type":"envelope"') == (envelope and fmt == "json")
        assert r.key == decoded.events[0].scenario_id.encode()
        for ev in decoded.events:
            assert r.topic == topics.topic("scores" if isinstance(ev, ScoreEvent) else "feedback")
            assert r.partition == partition_for(ev.scenario_id.encode(), PARTITIONS)
            seen[ev.event_id] += 1
    assert seen == Counter(ev["event_id"] for ev in events)
    if envelope:
        assert producer.messages < 2500 / 50


def test_linger_sends_a_partial_envelope(topics):
    with EventProducer(topics, linger_ms=50) as producer:
        for i in range(3):
            producer.send(score(i, "same"))
        assert producer.messages == 0
        time.sleep(0.1)
        producer.poll()
        assert producer.messages == 1
    assert len(codec.decode(read_back(topics, ["scores"])[0].value).events) == 3


def test_invalid_events_raise_and_nothing_is_sent(topics):
    good = score(1, "a")
    bad = [(dict(good, score=1.5), "bad_value"), (dict(good, v=2), "unknown_version"),
           ({k: v for k, v in good.items() if k != "tau"}, "schema"),
           ({"type": "envelope", "v": 1, "events": [good, dict(good, decision="maybe")]}, "bad_decision")]
    with EventProducer(topics) as producer:
        for event, reason in bad:
            with pytest.raises(ValueError, match=reason):
                producer.send(event)
        with pytest.raises(ValueError, match="bad_value"):
            producer.send(ScoreEvent(**{k: v for k, v in good.items() if k != "type"} | {"score": 2.0}))
        assert producer.events == 0
    assert producer.messages == 0
    assert read_back(topics, ["scores", "feedback"]) == []


def test_produce_file_sends_valid_lines_and_reports_invalid_ones(topics, tmp_path, capsys):
    envelope = {"type": "envelope", "v": 1, "events": [score(2, "sc"), feedback(2, "sc")]}
    lines = [orjson.dumps(score(1, "sc")), b"", b"not json", orjson.dumps(feedback(1, "sc")),
             orjson.dumps(envelope), orjson.dumps(dict(score(3, "sc"), tau=-1))]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    assert produce_file(topics, path) == {"lines": 5, "events": 4, "messages": 2, "invalid": 2}
    err = capsys.readouterr().err
    assert f"{path}:3: not_json" in err and f"{path}:6: bad_value" in err
    ids = [ev.event_id for r in read_back(topics, ["scores", "feedback"]) for ev in codec.decode(r.value).events]
    assert sorted(ids) == ["f1", "f2", "s1", "s2"]

    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b'not json\n\n{"type":"score","v":7}\n')
    assert produce_file(topics, raw, raw_topic="feedback") == {"lines": 2, "events": 0, "messages": 2, "invalid": 0}
    envelopes = (lambda value: value.startswith(b'{"type":"env') or columnar.is_columnar(value))
    assert sorted(r.value for r in read_back(topics, ["feedback"]) if not envelopes(r.value)) == [
        b"not json", b'{"type":"score","v":7}']


# ----------------------------------------------------------------------------- triggers
def send_triggers(settings, ids: list[str]) -> None:
    with EventProducer(settings) as producer:
        for trigger_id in ids:  # one key: one partition, so the order is kept
            producer.send_raw("triggers", codec.encode(trigger(trigger_id)), key=b"p1|default")


def test_seen_ids_is_bounded_and_forgets_the_oldest():
    seen = SeenIds(capacity=2)
    for item in "abca":
        seen.add(item)
    assert "a" in seen and "c" in seen and "b" not in seen and len(seen) == 2


def test_iter_triggers_skips_repeats_and_undecodable(topics):
    a, b, c = (uuid.uuid4().hex for _ in range(3))
    send_triggers(topics, [a, b, a, c, a])
    with EventProducer(topics) as producer:
        producer.send_raw("triggers", b'{"type":"trigger","v":1}', key=b"p1|default")
    got = [t.trigger_id for t in iter_triggers(topics, f"g-{uuid.uuid4().hex}", idle_timeout=2)]
    assert got == [a, b, c]


def test_iter_triggers_redelivers_what_was_not_committed(topics):
    t1, t2, t3 = (uuid.uuid4().hex for _ in range(3))
    send_triggers(topics, [t1, t2, t3])
    group = f"g-{uuid.uuid4().hex}"

    crashed = iter_triggers(topics, group, idle_timeout=5)
    assert next(crashed).trigger_id == t1
    assert next(crashed).trigger_id == t2  # resuming committed t1
    crashed.close()  # "crash" while processing t2: its offset is not committed

    assert [t.trigger_id for t in iter_triggers(topics, group, limit=1)] == [t2]  # limit commits the last
    assert [t.trigger_id for t in iter_triggers(topics, group, idle_timeout=1.5)] == [t3]
    assert list(iter_triggers(topics, group, idle_timeout=1.5)) == []


# ----------------------------------------------------------------------------- failures
@pytest.mark.parametrize("client", ["admin", "producer", "triggers"])
def test_wrong_address_fails_fast(client):
    s = load(overrides={"kafka_bootstrap_servers": "127.0.0.1:1"}, env={})
    start = time.monotonic()
    with pytest.raises(KafkaUnavailable, match="127.0.0.1:1"):
        if client == "admin":
            create_topics(s, timeout=4)
        elif client == "producer":
            EventProducer(s, timeout=4)
        else:
            next(iter_triggers(s, "g", timeout=4))
    assert time.monotonic() - start < 15  # fail-fast bound: the contract, not a speed (retries would take minutes)


def test_rejected_credentials_name_mechanism_and_user_not_password(kafka_bootstrap):
    s = load(overrides={"kafka_bootstrap_servers": kafka_bootstrap, "kafka_security_protocol": "SASL_PLAINTEXT",
                        "kafka_sasl_mechanism": "SCRAM-SHA-256", "kafka_sasl_username": "alice",
                        "kafka_sasl_password": "pw-s3cr3t"}, env={})
    start = time.monotonic()
    with pytest.raises(KafkaAuthError) as info:
        create_topics(s, timeout=10)
    assert time.monotonic() - start < 5  # fail-fast bound: a refusal is final, not retried
    assert "SCRAM-SHA-256" in str(info.value) and "'alice'" in str(info.value)
    assert "pw-s3cr3t" not in str(info.value)


# ----------------------------------------------------------------------------- commands
def test_commands_end_to_end(settings, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="npo")
    add_commands(parser.add_subparsers(dest="command", required=True), settings_args)

    def npo(*argv: str) -> int:
        args = parser.parse_args([*argv, "--bootstrap-servers", settings.kafka_bootstrap_servers,
                                  "--topic-prefix", settings.topic_prefix])
        return args.run(args)

    assert npo("topics", "create", "--partitions", "2") == 0
    assert capsys.readouterr().out.count(": created") == len(TOPICS)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(ev) for ev in mixed(10)))
    assert npo("produce", str(path), "--single") == 0
    assert "10 events in 10 messages" in capsys.readouterr().out
    sent = {}
    for fmt in ("json", "columnar"):  # envelopes: one a topic-partition
        assert npo("produce", str(path), "--envelope-format", fmt) == 0
        sent[fmt] = int(re.search(r"10 events in (\d+) messages", capsys.readouterr().out)[1])
    records = read_back(settings, ["scores", "feedback"], at_least=10 + sent["json"] + sent["columnar"])
    assert len(records) == 10 + sent["json"] + sent["columnar"]
    assert sum(map(columnar.is_columnar, (r.value for r in records))) == sent["columnar"]
    assert sum(r.value.startswith(b'{"type":"envelope"') for r in records) == sent["json"]

    send_triggers(settings, ["a" * 32, "b" * 32])
    assert npo("triggers", "tail", "--from-beginning", "--max", "2", "--idle-timeout", "10") == 0
    printed = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [t["trigger_id"] for t in printed] == ["a" * 32, "b" * 32]

    args = parser.parse_args(["topics", "create", "--bootstrap-servers", settings.kafka_bootstrap_servers,
                              "--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN",
                              "--sasl-username", "bob", "--sasl-password", "pw-s3cr3t"])
    assert args.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("npo topics create: ") and err.count("\n") == 1 and "pw-s3cr3t" not in err


def test_a_checkpoint_of_many_chunks_reads_back_whole_and_the_producer_holds_only_a_few(topics):
    """CheckpointStore on the broker: more chunks than may be in flight at once, read back
    byte for byte."""
    import os

    from aiokafka import AIOKafkaProducer

    from streams.kafka.checkpoints import CHUNK_BYTES, IN_FLIGHT_CHUNKS, CheckpointStore, pack, pieces

    blob = os.urandom(CHUNK_BYTES * (IN_FLIGHT_CHUNKS + 3) + 123)  # incompressible: as many chunks

    async def go():
        kw = topics.aiokafka()
        producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **kw)
        reader = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", **kw)
        await producer.start()
        await reader.start()
        try:
            store = CheckpointStore(producer, reader, topics.topic("checkpoints"), PARTITIONS)
            most = 0
            send = producer.send

            async def counting_send(*args, **kwargs):  # the real send, watching what is unacknowledged
                nonlocal most
                future = await send(*args, **kwargs)
                pending.append(future)
                most = max(most, sum(not f.done() for f in pending))
                return future

            pending: list = []
            producer.send = counting_send
            pointer = await store.write("ingest-0", pack(blob))
            producer.send = send
            assert [p["chunks"] for p in pieces(pointer)] == [IN_FLIGHT_CHUNKS + 4]
            assert 1 <= most <= IN_FLIGHT_CHUNKS
            assert await store.read("ingest-0", pointer) == [blob]
        finally:
            await producer.stop()
            await reader.stop()

    asyncio.run(go())
