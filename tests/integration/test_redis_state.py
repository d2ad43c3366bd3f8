"""The Redis state store and sink against a real Redis: round trips, key escaping, coalescing
into one pipeline, surviving an outage (and catching up after it), and fast, clear failures for
a wrong password or an unreachable server, in the API and in the CLI."""
from __future__ import annotations

import argparse
import math
import subprocess
import time
import uuid

import pytest
import redis

from streams.kafka.commands import settings_args
from streams.state.commands import add_commands
from streams.state.redis_store import RedisSink, RedisStore, StateAuthError, StateUnavailable
from tests.services import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def namespace(redis_url):
    """A fresh namespace per test; its keys are deleted at teardown."""
    ns = f"test:{uuid.uuid4().hex[:10]}:"
    yield ns
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=ns + "*"))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # Redis was left down by a failed test; nothing to clean
    finally:
        client.close()


@pytest.fixture
def store(redis_url, namespace):
    s = RedisStore.from_url(redis_url, namespace=namespace)
    yield s
    s.close()


def _keys(store: RedisStore) -> set[str]:
    return {k.decode()[len(store.ns):] for k in store.client.scan_iter(match=store.ns + "*")}


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="npo")
    add_commands(parser.add_subparsers(dest="command", required=True), settings_args)
    args = parser.parse_args(list(argv))
    return args.run(args)


def test_stats_and_threshold_round_trip(store):
    sink = RedisSink(lambda: store)
    tumbling = {"window": {"kind": "tumbling", "start": 0, "end": 300}, "loss": 0.1, "n_eff": 42.0}
    hopping = {"window": {"kind": "hopping", "start": 0, "end": 3600}, "loss": 0.12, "n_eff": 400.0}
    sink.put_stats("pol", "seg", "tumbling", tumbling)
    sink.put_stats("pol", "seg", "hopping", hopping)
    sink.put_cooldown("retrain", "pol", "seg", 3600)
    before = time.time()
    assert sink.flush(force=True)
    stats = store.get_stats("pol", "seg")
    assert stats["tumbling"] == tumbling and stats["hopping"] == hopping and "cumulative" not in stats
    assert before - 5 < stats["updated_at"] <= time.time()
    assert store.get_stats("pol", "other") is None
    assert store.client.get(store.ns + "cooldown:retrain:pol:seg") == b"3600.0"
    assert 0 < store.client.ttl(store.ns + "cooldown:retrain:pol:seg") <= 86_400

    assert store.get_threshold("pol", "seg") is None
    store.set_threshold("pol", "seg", 0.42)
    store.set_threshold("pol", "seg2", 1)
    assert store.get_threshold("pol", "seg") == 0.42
    assert store.thresholds() == {("pol", "seg"): 0.42, ("pol", "seg2"): 1.0}
    assert store.client.get(store.ns + "threshold:pol:seg") == b"0.42"
    assert sink.poll_thresholds() == store.thresholds() == sink.latest_thresholds()


def test_ids_with_colons_and_percent_signs_get_distinct_keys(store):
    ids = [("a:b", "c"), ("a", "b:c"), ("a%3Ab", "c"), ("x%", ":")]
    sink = RedisSink(lambda: store)
    for i, (policy_id, segment) in enumerate(ids):
        sink.put_stats(policy_id, segment, "cumulative", {"i": i})
        store.set_threshold(policy_id, segment, i / 10)
    assert sink.flush(force=True)
    for i, (policy_id, segment) in enumerate(ids):
        assert store.get_stats(policy_id, segment)["cumulative"] == {"i": i}
        assert store.get_threshold(policy_id, segment) == i / 10
    assert store.thresholds() == {key: i / 10 for i, key in enumerate(ids)}
    assert {"stats:a%3Ab:c", "stats:a:b%3Ac", "stats:a%253Ab:c", "stats:x%25:%3A"} <= _keys(store)


@pytest.mark.parametrize("tau", [math.nan, math.inf, -0.1, 1.5])
def test_set_threshold_rejects_values_outside_0_1(store, tau):
    with pytest.raises(ValueError):
        store.set_threshold("pol", "seg", tau)
    assert store.get_threshold("pol", "seg") is None and store.thresholds() == {}


def test_sink_coalesces_puts_into_one_pipeline(store):
    pipelines = []
    make_pipeline = store.client.pipeline

    def counting_pipeline(*args, **kwargs):
        pipe = make_pipeline(*args, **kwargs)
        pipelines.append(pipe)
        return pipe

    store.client.pipeline = counting_pipeline
    sink = RedisSink(lambda: store)
    for i in range(1000):
        sink.put_stats(f"p{i % 3}", "seg", "tumbling", {"i": i})
    assert sink.pending == 3
    assert sink.flush(force=True)
    assert len(pipelines) == 1 and not pipelines[0].transaction
    assert _keys(store) == {"stats:p0:seg", "stats:p1:seg", "stats:p2:seg", "written"}
    assert [store.get_stats(f"p{k}", "seg")["tumbling"]["i"] for k in range(3)] == [999, 997, 998]


def test_sink_rides_out_a_redis_outage_and_catches_up(redis_service, redis_url, namespace):
    sink = RedisSink(lambda: RedisStore.from_url(redis_url, namespace=namespace))
    sink.put_stats("before", "seg", "tumbling", {"v": 0})
    assert sink.flush(force=True)

    redis_service.stop()
    started = time.monotonic()
    for i in range(3000):
        sink.put_stats(f"p{i % 100}", "seg", "tumbling", {"v": i})
        sink.put_cooldown("retrain", f"p{i % 100}", "seg", i)
        if i < 100:
            assert sink.pending == 2 * (i + 1)  # each new key only grows the in-memory dict
    # fail-fast bound: one put waiting on the stopped Redis (a connect timeout) would take
    # longer than all 6,000 here, so this shows no put touched the network
    assert time.monotonic() - started < 1.0  # fail-fast bound (above)
    started = time.monotonic()
    assert sink.flush(force=True) is False
    assert time.monotonic() - started < 3.0  # fail-fast bound: one connect timeout, not retries
    assert sink.errors == 1 and sink.consecutive_errors == 1 and sink.last_error
    assert sink.poll_thresholds() is None and sink.errors == 2
    for i in range(3000, 3100):
        sink.put_stats(f"p{i % 100}", "seg", "tumbling", {"v": i})
    assert sink.flush(force=True) is False and sink.errors == 3 and sink.pending == 200

    redis_service.start()
    assert sink.flush(force=True) is True
    assert sink.consecutive_errors == 0 and sink.pending == 0
    reader = RedisStore.from_url(redis_url, namespace=namespace)
    try:
        # the restarted Redis kept no data (no persistence); the sink noticed (no marker) and wrote
        # back what was there before the outage too
        expected = {f"stats:p{k}:seg" for k in range(100)} | {f"cooldown:retrain:p{k}:seg" for k in range(100)}
        assert _keys(reader) == expected | {"stats:before:seg", "written"}
        assert sink.restores == 1 and reader.get_stats("before", "seg")["tumbling"] == {"v": 0}
        for k in range(100):
            assert reader.get_stats(f"p{k}", "seg")["tumbling"] == {"v": 3000 + k}
            assert reader.client.get(f"{namespace}cooldown:retrain:p{k}:seg") == f"{2900 + k}.0".encode()
    finally:
        reader.close()
        sink.stop()


def test_password_right_works_wrong_or_missing_fails_fast(password_redis, capsys):
    url, password = password_redis
    good = RedisStore.from_url(url, password=password)
    good.set_threshold("pol", "seg", 0.3)
    assert good.get_threshold("pol", "seg") == 0.3
    good.close()

    for wrong in ("not-the-password", None):
        store = RedisStore.from_url(url, password=wrong)
        started = time.monotonic()
        with pytest.raises(StateAuthError, match=r"rejected the password \(NOAUTH/WRONGPASS\)") as info:
            store.get_threshold("pol", "seg")
        assert time.monotonic() - started < 5.0  # fail-fast bound: an answer, not a client timeout
        assert password not in str(info.value) and "not-the-password" not in str(info.value)
        store.close()

    assert _cli("threshold", "get", "pol", "seg", "--redis-url", url) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rejected the password" in err
    url_with_password = url.replace("redis://", f"redis://:{password}@")
    assert _cli("threshold", "get", "pol", "seg", "--redis-url", url_with_password) == 0
    assert capsys.readouterr().out.strip() == "0.3"


def test_unreachable_redis_fails_fast(capsys):
    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisStore.from_url(url)
    started = time.monotonic()
    with pytest.raises(StateUnavailable, match="did not answer"):
        store.thresholds()
    assert time.monotonic() - started < 3.0  # fail-fast bound: one 2 s connect timeout, no retries
    assert _cli("stats", "get", "pol", "seg", "--redis-url", url) == 2
    err = capsys.readouterr().err
    assert err.startswith("npo stats get: ") and err.count("\n") == 1


def test_cli_threshold_and_stats(redis_url, capsys):
    policy_id = f"cli-test-{uuid.uuid4().hex[:8]}:x"
    store = RedisStore.from_url(redis_url)  # the CLI's default namespace
    try:
        assert _cli("threshold", "get", policy_id, "seg", "--redis-url", redis_url) == 1
        assert _cli("stats", "get", policy_id, "seg", "--redis-url", redis_url) == 1
        assert _cli("threshold", "set", policy_id, "seg", "nan", "--redis-url", redis_url) == 2
        assert _cli("threshold", "set", policy_id, "seg", "0.25", "--redis-url", redis_url) == 0
        assert store.get_threshold(policy_id, "seg") == 0.25
        capsys.readouterr()
        assert _cli("threshold", "get", policy_id, "seg", "--redis-url", redis_url) == 0
        assert capsys.readouterr().out.strip() == "0.25"
        sink = RedisSink(lambda: store)
        sink.put_stats(policy_id, "seg", "hopping", {"window": {"kind": "hopping", "start": 0, "end": 60}})
        assert sink.flush(force=True)
        assert _cli("stats", "get", policy_id, "seg", "--redis-url", redis_url) == 0
        shown = capsys.readouterr().out
        assert '"hopping"' in shown and '"updated_at"' in shown
    finally:
        store.client.delete(*(store.ns + k for k in ("stats:" + policy_id.replace(":", "%3A") + ":seg",
                                                     "threshold:" + policy_id.replace(":", "%3A") + ":seg")))
        store.client.hdel(store.ns + "thresholds", f"{policy_id}\x1fseg")
        store.close()


def test_npo_worker_refuses_a_wrong_redis_password_at_once(password_redis):
    import os
    import sys

    url, password = password_redis
    env = {**os.environ, "NPO_REDIS_URL": url, "NPO_REDIS_PASSWORD": "wrong-" + password,
           "NPO_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "NPO_METRICS_PORT": "0"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and time.monotonic() - started < 20  # fail-fast bound: refused before the 30 s wait for a broker
    assert "rejected the password" in proc.stderr and password not in proc.stderr
