"""Real Kafka and Redis for integration and fault tests (a pytest plugin module).

Load it from tests/conftest.py with ``pytest_plugins = ["tests.services"]``
(or ``from tests.services import *``).

Where the services come from:
  * ``NPO_KAFKA_BOOTSTRAP_SERVERS`` / ``NPO_REDIS_URL`` when set (e.g. after
    ``source .infra/env.sh`` or with docker compose), otherwise
  * they are started on loopback with tests/infra/kafka.sh and tests/infra/redis.sh
    (the variables are then exported into ``os.environ`` so app code and
    subprocesses under test see them).
If a service cannot be reached the test fails when ``CI=true`` and is skipped otherwise.

Fault-injection helpers (``restart_kafka``, ``stop_redis``, ...) only work for services
managed by those scripts; restarts keep the same port and data directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = [
    "KAFKA_ENV",
    "REDIS_ENV",
    "ServiceUnavailable",
    "ServiceControl",
    "kafka_ping",
    "redis_ping",
    "start_kafka",
    "stop_kafka",
    "restart_kafka",
    "start_redis",
    "stop_redis",
    "restart_redis",
    "unique_prefix",
    "new_topics",
    "delete_topics",
    "kafka_bootstrap",
    "redis_url",
    "topic_factory",
    "kafka_service",
    "redis_service",
]

KAFKA_ENV = "NPO_KAFKA_BOOTSTRAP_SERVERS"
REDIS_ENV = "NPO_REDIS_URL"
INFRA_DIR = Path(__file__).resolve().parent / "infra"
START_TIMEOUT = 300.0  # a cold Kafka start includes the one-off Maven download


class ServiceUnavailable(RuntimeError):
    """A test service could not be started or reached."""


# --------------------------------------------------------------------------- helpers
def _script(name: str, *args: str, timeout: float = START_TIMEOUT) -> str:
    cmd = ["bash", str(INFRA_DIR / name), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceUnavailable(f"{name} {' '.join(args)}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise ServiceUnavailable(f"{name} {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return proc.stdout


def _parse_env(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            key, value = line[len("export ") :].split("=", 1)
            out[key.strip()] = value.strip().strip("'\"")
    return out


def _script_env(name: str, var: str, action: str) -> str:
    value = _parse_env(_script(name, action)).get(var)
    if not value:
        raise ServiceUnavailable(f"{name} {action} printed no {var}")
    return value


def _unavailable(msg: str) -> NoReturn:
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def _check_managed(name: str, var: str) -> None:
    """Refuse to stop/start a service that the infra scripts do not own."""
    current = os.environ.get(var)
    if not current:
        return
    try:
        ours = _script_env(name, var, "env")
    except ServiceUnavailable:
        ours = None
    if current != ours:
        pytest.skip(f"{var}={current} is not managed by tests/infra/{name}; cannot stop/start it")


# --------------------------------------------------------------------------- probes
def kafka_ping(bootstrap: str, timeout: float = 15.0, *, leaders: bool = True) -> None:
    """Raise ServiceUnavailable unless ``bootstrap`` answers a Metadata request
    (and, with ``leaders``, every existing partition has a leader)."""
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError as exc:  # pragma: no cover - environment problem
        raise ServiceUnavailable(f"confluent_kafka not installed: {exc}") from exc
    admin = AdminClient(
        {"bootstrap.servers": bootstrap, "log_level": 0, "reconnect.backoff.max.ms": 500}
    )
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            md = admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
            bad = [
                f"{t.topic}[{p.id}]"
                for t in md.topics.values()
                for p in t.partitions.values()
                if leaders and (p.leader < 0 or p.error is not None)
            ]
            if md.brokers and not bad:
                return
            last = "no brokers in metadata" if not md.brokers else f"leaderless: {bad[:5]}"
        except Exception as exc:  # KafkaException on timeout / transport errors
            last = exc
        if time.monotonic() >= deadline:
            raise ServiceUnavailable(f"Kafka at {bootstrap} not ready after {timeout}s: {last}")
        time.sleep(0.2)


def redis_ping(url: str, timeout: float = 10.0) -> None:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover
        raise ServiceUnavailable(f"redis (redis-py) not installed: {exc}") from exc
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            if client.ping():
                return
        except redis.RedisError as exc:
            last = exc
        finally:
            client.close()
        if time.monotonic() >= deadline:
            raise ServiceUnavailable(f"Redis at {url} not answering PING after {timeout}s: {last}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- control
def start_kafka(timeout: float = START_TIMEOUT) -> str:
    """Start (or find running) the managed broker; returns ``host:port``."""
    bootstrap = _script_env("kafka.sh", KAFKA_ENV, "start")
    kafka_ping(bootstrap, timeout=min(timeout, 60.0))
    os.environ.setdefault(KAFKA_ENV, bootstrap)
    return bootstrap


def stop_kafka(hard: bool = False) -> None:
    """Stop the managed broker: SIGTERM (clean) or, with ``hard``, SIGKILL (crash)."""
    _check_managed("kafka.sh", KAFKA_ENV)
    _script("kafka.sh", "kill" if hard else "stop")


def restart_kafka(hard: bool = False, downtime: float = 0.0) -> str:
    """Stop the broker, stay down ``downtime`` seconds, start it on the same port/data."""
    before = os.environ.get(KAFKA_ENV)
    stop_kafka(hard=hard)
    time.sleep(downtime)
    after = start_kafka()
    if before and after != before:
        raise ServiceUnavailable(f"broker came back on {after}, not {before} (port taken?)")
    return after


def start_redis() -> str:
    url = _script_env("redis.sh", REDIS_ENV, "start")
    redis_ping(url)
    os.environ.setdefault(REDIS_ENV, url)
    return url


def stop_redis(hard: bool = False) -> None:
    _check_managed("redis.sh", REDIS_ENV)
    _script("redis.sh", "kill" if hard else "stop")


def restart_redis(hard: bool = False, downtime: float = 0.0) -> str:
    stop_redis(hard=hard)
    time.sleep(downtime)
    return start_redis()


class ServiceControl:
    """Handle given to tests by the ``kafka_service`` / ``redis_service`` fixtures."""

    def __init__(self, address: str, start, stop) -> None:
        self.address = address
        self._start, self._stop = start, stop
        self.stopped = False

    def stop(self, hard: bool = False) -> None:
        self._stop(hard=hard)
        self.stopped = True

    def start(self) -> str:
        self.address = self._start()
        self.stopped = False
        return self.address

    def restart(self, hard: bool = False, downtime: float = 0.0) -> str:
        self.stop(hard=hard)
        time.sleep(downtime)
        return self.start()


# --------------------------------------------------------------------------- topics
def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique_prefix(base: str = "test") -> str:
    """A fresh topic prefix such as ``test.3f9c1a2b7d.`` (usable as NPO_TOPIC_PREFIX)."""
    return f"{base}.{uuid.uuid4().hex[:10]}."


def new_topics(
    bootstrap: str,
    names: str | Iterable[str],
    partitions: int = 1,
    *,
    prefix: str | None = None,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Create uniquely named topics (``prefix + name``; a fresh prefix by default),
    wait until every partition has a leader and return the full names in order."""
    from confluent_kafka.admin import AdminClient, NewTopic

    if isinstance(names, str):
        names = [names]
    prefix = unique_prefix() if prefix is None else prefix
    full = [prefix + n for n in names]
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1, config=config or {}) for t in full],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    for fut in futures.values():
        fut.result(timeout=timeout)
    deadline = time.monotonic() + timeout
    pending = set(full)
    while pending:
        md = admin.list_topics(timeout=5)
        for t in list(pending):
            tm = md.topics.get(t)
            if tm is not None and tm.error is None and len(tm.partitions) == partitions and all(
                p.leader >= 0 for p in tm.partitions.values()
            ):
                pending.discard(t)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"topics not ready after {timeout}s: {sorted(pending)}")
        if pending:
            time.sleep(0.1)
    return full


def delete_topics(bootstrap: str, names: Iterable[str], timeout: float = 15.0) -> None:
    """Best-effort deletion (never raises)."""
    names = list(names)
    if not names:
        return
    try:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        for fut in admin.delete_topics(names, operation_timeout=timeout, request_timeout=timeout).values():
            try:
                fut.result(timeout=timeout)
            except Exception:
                pass
    except Exception:
        pass


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """``host:port`` of a reachable Kafka broker."""
    bootstrap = os.environ.get(KAFKA_ENV)
    try:
        if bootstrap:
            kafka_ping(bootstrap, leaders=False)
        else:
            bootstrap = start_kafka()
    except ServiceUnavailable as exc:
        _unavailable(
            f"Kafka unavailable ({exc}). Run tests/infra/up.sh && source .infra/env.sh, "
            f"or set {KAFKA_ENV}."
        )
    return bootstrap


@pytest.fixture(scope="session")
def redis_url() -> str:
    """``redis://`` URL of a reachable Redis."""
    url = os.environ.get(REDIS_ENV)
    try:
        if url:
            redis_ping(url)
        else:
            url = start_redis()
    except ServiceUnavailable as exc:
        _unavailable(
            f"Redis unavailable ({exc}). Run tests/infra/up.sh && source .infra/env.sh, "
            f"or set {REDIS_ENV}."
        )
    return url


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator:
    """``make(name_or_names, partitions=1, prefix=None, config=None)``: creates unique
    topics (str in -> str out, list in -> list out); deleted at teardown."""
    created: list[str] = []

    def make(names, partitions: int = 1, **kwargs):
        topics = new_topics(kafka_bootstrap, names, partitions, **kwargs)
        created.extend(topics)
        return topics[0] if isinstance(names, str) else topics

    yield make
    delete_topics(kafka_bootstrap, created)


@pytest.fixture
def kafka_service(kafka_bootstrap: str) -> Iterator[ServiceControl]:
    """Stop/start/restart the managed broker from a test; restarted at teardown if left down."""
    ctl = ServiceControl(kafka_bootstrap, start_kafka, stop_kafka)
    yield ctl
    if ctl.stopped:
        start_kafka()


@pytest.fixture
def redis_service(redis_url: str) -> Iterator[ServiceControl]:
    """Stop/start/restart the managed Redis from a test; restarted at teardown if left down."""
    ctl = ServiceControl(redis_url, start_redis, stop_redis)
    yield ctl
    if ctl.stopped:
        start_redis()


@pytest.fixture(scope="module")
def password_redis():
    """A redis-server with ``requirepass`` on a free port; yields (url without password, password)."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("redis-server not installed (tests/infra/redis.sh installs it)")
    port = free_port()
    password = f"pw-{uuid.uuid4().hex}"
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--daemonize", "no", "--requirepass", password],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            client = redis.Redis.from_url(url, password=password, socket_connect_timeout=1, socket_timeout=1)
            try:
                client.ping()
                break
            except redis.ConnectionError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    _unavailable(f"password Redis on port {port} did not start: {exc}")
                time.sleep(0.05)
            finally:
                client.close()
        yield url, password
    finally:
        proc.terminate()
        proc.wait(timeout=10)
