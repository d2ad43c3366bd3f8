"""Passed-through client properties take effect on the real broker (it reports the members'
client ids), and a wrong password shows in no `npo` output against it."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from streams.settings import load

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PW = "pw-Zq8-not-for-eyes"


def _members(bootstrap: str, group: str, count: int = 1, timeout: float = 60.0) -> list:
    """The group's members as the broker describes them, once it has `count` of them."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    while True:
        try:
            members = admin.describe_consumer_groups([group], request_timeout=10)[group].result().members
        except KafkaException as exc:  # the group or its coordinator not there yet
            if not exc.args[0].retriable() and exc.args[0].code() != KafkaError.NOT_COORDINATOR:
                raise
            members = []
        if len(members) >= count:
            return members
        if time.monotonic() > deadline:
            raise AssertionError(f"group {group} has {len(members)} members after {timeout:g} s")
        time.sleep(0.5)


def _npo(*argv: str, env: dict | None = None) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NPO_")}
    return subprocess.Popen([sys.executable, "-m", "streams.cli", *argv], cwd=ROOT, env={**base, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_dash_x_client_id_reaches_the_broker_from_the_confluent_consumer(cluster, kafka_bootstrap):
    settings = cluster(1)
    group, client_id = f"pt-{uuid.uuid4().hex[:10]}", f"npo-x-{uuid.uuid4().hex[:8]}"
    proc = _npo("triggers", "tail", "--group", group, "--idle-timeout", "60", "--bootstrap-servers", kafka_bootstrap,
                "--topic-prefix", settings.topic_prefix, "-X", f"client.id={client_id}",
                "-X", "session.timeout.ms=9000")
    try:
        (member,) = _members(kafka_bootstrap, group)
        assert member.client_id == client_id
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.parametrize("variable", ["NPO_KAFKA_X_CLIENT_ID", "NPO_AIOKAFKA_X_CLIENT_ID"])
def test_a_passed_client_id_reaches_the_broker_from_the_workers_aiokafka_consumers(cluster, kafka_bootstrap,
                                                                                   variable):
    """The librdkafka name, mapped to aiokafka's client_id, or the raw aiokafka keyword (which
    wins over a mapped one), on both of the worker's groups."""
    from tests.integration.harness import WorkerThread

    base = cluster(1)
    client_id = f"npo-w-{uuid.uuid4().hex[:8]}"
    passed = load(env={"NPO_KAFKA_X_CLIENT_ID": "npo-mapped-only", variable: client_id})
    settings = dataclasses.replace(base, kafka_extra=passed.kafka_extra, aiokafka_extra=passed.aiokafka_extra)
    worker = WorkerThread(settings, None).start()
    try:
        for role in ("ingest", "aggregate"):
            (member,) = _members(kafka_bootstrap, f"{settings.group_id}-{role}")
            assert member.client_id == client_id, role
        assert worker.alive()
    finally:
        worker.stop()


def test_a_wrong_password_against_the_broker_shows_in_no_npo_output(cluster, kafka_bootstrap, tmp_path):
    """The broker's listener has no SASL: each command fails, at once, saying why, never how."""
    settings = cluster(1)
    sasl = {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-256",
            "kafka_sasl_username": "alice", "kafka_bootstrap_servers": kafka_bootstrap,
            "topic_prefix": settings.topic_prefix}
    config = tmp_path / "npo.json"
    config.write_text(json.dumps({**sasl, "kafka_sasl_password": PW}))
    env = {"NPO_" + k.upper(): v for k, v in sasl.items()}
    runs = {
        "triggers tail --max 0, password in the config file": _npo("triggers", "tail", "--max", "0",
                                                                   "--config", str(config)),
        "topics create, password in the environment": _npo("topics", "create",
                                                           env={**env, "NPO_KAFKA_SASL_PASSWORD": PW}),
        # JSON logs at DEBUG, with librdkafka's own dump of its configuration
        "worker, password flag": _npo("worker", "--no-redis", "--metrics-port", "0", "--sasl-password", PW,
                                      "--log-level", "DEBUG", "-X", "debug=security,conf", env=env),
    }
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (name, err[-2000:])
        assert "rejected SASL_PLAINTEXT (SASL SCRAM-SHA-256 as user 'alice')" in err, (name, err[-2000:])
        assert PW not in out and PW not in err, name
