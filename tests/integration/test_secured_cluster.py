"""A secured deployment (issue 4, item 7): Kafka accepting clients only over SASL/SCRAM-SHA-256 on
TLS (tests/infra/kafka_secure.sh: a keytool-made test CA, a SCRAM user created at format time) and
Redis with a password. The producer client, topic creation, the worker (with its Redis sink) and
the trigger consumer are configured through the documented ``NPO_*`` settings only, and the
statistics they produce equal the in-process reference. A wrong Kafka password fails within
seconds with an error naming the mechanism and the user, never the password. (The wrong Redis
password for the store and the CLI: tests/integration/test_redis_state.py
``test_password_right_works_wrong_or_missing_fails_fast``; here, the worker's sink.)"""
from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import pytest
from confluent_kafka.admin import AdminClient

from streams.config import MonitorConfig
from streams.demo.runner import run_partitioned
from streams.kafka.admin import create_topics
from streams.kafka.errors import KafkaAuthError
from streams.kafka.producer import EventProducer
from streams.kafka.triggers import iter_triggers
from streams.settings import TOPICS, load
from streams.simulate import SimConfig, simulate
from streams.state.redis_store import RedisSink, RedisStore
from streams.worker.outputs import window_stats_events
from streams.worker.worker import Worker
from tests.integration.harness import WorkerThread, json_values, merged_by_partition, read_topic
from tests.integration.test_worker_e2e import FLUSH_KEY, _flush_events
from tests.services import ServiceUnavailable, _parse_env, _script, _unavailable, unique_prefix

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = MonitorConfig()
PREFIX = "NPO_SECURE_"
SECURITY = ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM",
            "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CAFILE")
WRONG = "wrong-" + uuid.uuid4().hex[:12]
FAST = 30.0  # seconds: "fails fast", generous for a loaded 2-core CI machine


# ----------------------------------------------------------------------------- services
@pytest.fixture(scope="module")
def secure_env():
    """The secured broker's documented client settings, as ``NPO_*`` environment variables."""
    try:
        printed = _parse_env(_script("kafka_secure.sh", "start"))
    except ServiceUnavailable as exc:
        _unavailable(f"secured Kafka unavailable ({exc}); it needs a JDK (java, keytool), Python "
                     "confluent_kafka and the Kafka jars of tests/infra/kafka.sh")
    env = {"NPO_" + k[len(PREFIX):]: v for k, v in printed.items() if k.startswith(PREFIX)}
    missing = [name for name in SECURITY if not env.get("NPO_" + name)]
    if missing:
        _unavailable(f"tests/infra/kafka_secure.sh start printed no {[PREFIX + m for m in missing]}")
    yield env
    try:
        _script("kafka_secure.sh", "stop", timeout=60)
    except ServiceUnavailable as exc:  # pragma: no cover - teardown must not mask the test result
        print(f"stopping the secured broker failed: {exc}")


@pytest.fixture
def secure_settings(secure_env, password_redis, tmp_path):
    """Settings read from the environment (``load(env=...)``), as a deployment would get them;
    the job's topics are created and deleted afterwards."""
    url, password = password_redis
    settings = load(env={**secure_env, "NPO_TOPIC_PREFIX": unique_prefix("sec"), "NPO_TOPIC_PARTITIONS": "2",
                         "NPO_GROUP_ID": unique_prefix("g").rstrip("."), "NPO_REDIS_URL": url,
                         "NPO_REDIS_PASSWORD": password, "NPO_REDIS_NAMESPACE": f"sec:{uuid.uuid4().hex[:8]}:",
                         "NPO_STATE_DIR": str(tmp_path / "state"), "NPO_METRICS_PORT": "0"})
    assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")
    assert settings.kafka_ssl_cafile and settings.kafka_ssl_certfile is None
    assert set(create_topics(settings).values()) == {"created"}
    yield settings
    admin = AdminClient({**settings.confluent(), "log_level": 0})
    for future in admin.delete_topics([settings.topic(r) for r in TOPICS], operation_timeout=15).values():
        try:
            future.result(timeout=15)
        except Exception:  # noqa: BLE001 - best effort
            pass


def _store(settings) -> RedisStore:
    """The worker command's store: URL, password and namespace from the settings."""
    return RedisStore.from_url(settings.redis_url, password=settings.redis_password,
                               namespace=settings.redis_namespace)


# ----------------------------------------------------------------------------- reference
def _final_windows(events, cut: float) -> dict:
    """(policy_id, segment, kind, start, end) -> window_stats event, simulated keys, closed by ``cut``."""
    out = {}
    for e in events:
        w = e["window"]
        if e["final"] and (e["policy_id"], e["segment"]) != FLUSH_KEY and w["end"] <= cut:
            out[(e["policy_id"], e["segment"], w["kind"], w["start"], w["end"])] = e
    return out


# ----------------------------------------------------------------------------- tests
def test_the_whole_job_runs_on_sasl_ssl_and_password_redis_from_documented_settings(secure_settings):
    settings = secure_settings
    sim = simulate(SimConfig(seed=5, n_windows=36, decisions_per_window=60))
    events = sim.events + _flush_events(sim.events, settings.topic_partitions)
    with EventProducer(settings, envelope=True, max_events=500) as producer:
        for e in events:
            producer.send(e)
    assert producer.events == len(events) and producer.errors == 0

    sink = RedisSink(lambda: _store(settings), flush_every_s=0.5)
    sink.start_background(0.5)
    worker = WorkerThread(settings, CONFIG, sink=sink).start()
    try:
        worker.wait_idle()
    finally:
        worker.stop()
        sink.stop()
    assert sink.errors == 0 and sink.written > 0, sink.last_error

    # the reference: the in-process pipeline on the same messages, read back over SASL_SSL,
    # in the order the worker merges them (as test_worker_e2e does on the plaintext broker)
    reference = run_partitioned(merged_by_partition(settings, settings.topic_partitions), CONFIG)
    events_in = {"/".join(k): v for k, v in worker.worker.counters.items()
                 if isinstance(k, tuple) and k[0] == "events_in"}
    assert events_in == {k: v for k, v in reference.counters.items() if k.startswith("events_in/")}
    assert events_in["events_in/score"] == sum(e["type"] == "score" for e in events)

    cut = max(e["ts"] for e in sim.events) + 300.0
    want = _final_windows((ev for res in reference.results if res.kind != "early"
                           for _, ev in window_stats_events(res, CONFIG.version)), cut)
    published = json_values(read_topic(settings, "stats"))
    got = _final_windows(published, cut)
    assert len(want) > 100 and set(got) == set(want)
    for key, event in want.items():
        for name, value in event["stats"].items():
            assert got[key]["stats"][name] == (pytest.approx(value, rel=1e-9, abs=1e-12)
                                               if isinstance(value, float) else value), (key, name)

    # triggers: on the topic, and through the documented consumer, each once
    published_triggers = json_values(read_topic(settings, "triggers"))
    ids = {t["trigger_id"] for t in published_triggers}
    assert ids and len(ids) == len(published_triggers)

    def simulated(triggers) -> set[str]:  # same ids as the reference's (the flush key aside)
        return {t["trigger_id"] for t in triggers
                if (t["policy_id"], t["segment"]) != FLUSH_KEY and t["window"]["end"] <= cut}

    assert simulated(published_triggers) == simulated(reference.triggers) != set()
    consumed = [t.trigger_id for t in iter_triggers(settings, unique_prefix("retrain"), idle_timeout=5.0)]
    assert sorted(consumed) == sorted(ids)

    # Redis (password from the settings) holds the latest final window of every kind of every key
    store = _store(settings)
    try:
        latest = {}
        for e in published:
            if e["final"]:
                latest[(e["policy_id"], e["segment"], e["window"]["kind"])] = e
        keys = {(p, s) for p, s, _ in latest}
        assert keys >= {(e["policy_id"], e["segment"]) for e in sim.events if e["type"] == "score"}
        for policy_id, segment in keys:
            stats = store.get_stats(policy_id, segment)
            assert stats is not None, (policy_id, segment)
            for kind in ("tumbling", "hopping", "cumulative"):
                if (policy_id, segment, kind) in latest:
                    e = latest[policy_id, segment, kind]
                    assert stats[kind]["window"] == e["window"], (policy_id, segment, kind)
                    assert stats[kind]["n_decisions"] == e["stats"]["n_decisions"]
    finally:
        store.close()


def _bad(settings):
    return dataclasses.replace(settings, kafka_sasl_password=WRONG)


def _assert_clear(exc: BaseException, settings) -> None:
    text = str(exc)
    assert "SCRAM-SHA-256" in text and f"'{settings.kafka_sasl_username}'" in text, text
    assert WRONG not in text and settings.kafka_sasl_password not in text, text


@pytest.mark.parametrize("client", ["admin", "producer", "triggers"])
def test_a_wrong_kafka_password_fails_fast_naming_mechanism_and_user(secure_settings, client):
    bad = _bad(secure_settings)
    started = time.monotonic()
    with pytest.raises(KafkaAuthError) as info:
        if client == "admin":
            create_topics(bad, timeout=FAST)
        elif client == "producer":
            EventProducer(bad, timeout=FAST)
        else:
            next(iter_triggers(bad, unique_prefix("retrain"), timeout=FAST))
    assert time.monotonic() - started < FAST / 2  # fail-fast bound: a client that retried would wait out FAST
    _assert_clear(info.value, secure_settings)


def test_the_broker_certificate_is_verified(secure_settings):
    """Without the test CA (``kafka_ssl_cafile``) the TLS handshake is refused at once: the
    clients verify the broker, they do not merely encrypt."""
    started = time.monotonic()
    with pytest.raises(KafkaAuthError, match="(?i)certificate verify failed"):
        create_topics(dataclasses.replace(secure_settings, kafka_ssl_cafile=None), timeout=FAST)
    assert time.monotonic() - started < FAST / 2  # fail-fast bound: refused at once, not retried until FAST


def _worker_start_error(settings) -> tuple[BaseException | None, float]:
    """What ``Worker.start()`` raises (None if it started), and after how long."""

    async def attempt() -> BaseException | None:
        worker = Worker(settings, CONFIG)
        try:
            await asyncio.wait_for(worker.start(), FAST)
        except asyncio.TimeoutError:
            pytest.fail(f"Worker.start() with a wrong password still waiting after {FAST:g} s")
        except Exception as exc:  # noqa: BLE001 - the subject of the test
            return exc
        finally:
            await worker.stop()
        return None

    started = time.monotonic()
    error = asyncio.run(attempt())
    return error, time.monotonic() - started


def test_a_wrong_kafka_password_stops_the_worker_fast_without_leaking_it(secure_settings):
    error, elapsed = _worker_start_error(_bad(secure_settings))
    assert error is not None, "the worker started with a wrong password"
    assert elapsed < FAST  # fail-fast bound: a client that retried a refused login would run far past it
    assert WRONG not in str(error) and secure_settings.kafka_sasl_password not in str(error)


def test_a_wrong_kafka_password_stops_the_worker_naming_mechanism_and_user(secure_settings):
    error, _ = _worker_start_error(_bad(secure_settings))
    assert isinstance(error, KafkaAuthError), repr(error)
    _assert_clear(error, secure_settings)


def test_a_wrong_redis_password_shows_at_once_in_the_worker_sink(secure_settings):
    """The sink the worker command builds from the settings: the first threshold poll (at
    start) reports the rejected password, without the password; it never blocks the worker."""
    bad = dataclasses.replace(secure_settings, redis_password=WRONG)
    sink = RedisSink(lambda: _store(bad))
    started = time.monotonic()
    sink.start_background(0.5)
    try:
        while sink.errors == 0 and time.monotonic() - started < FAST:
            time.sleep(0.05)
        # fail-fast bound: a refused password is reported at the first poll, not after retries
        assert time.monotonic() - started < 5.0, "no Redis error reported within 5 s"  # fail-fast bound
        assert "rejected the password" in (sink.last_error or ""), sink.last_error
        assert WRONG not in sink.last_error and secure_settings.redis_password not in sink.last_error
    finally:
        sink.stop()
