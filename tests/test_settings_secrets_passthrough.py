"""Secrets never show (settings repr, errors, `npo` output), and client properties pass
through to both Kafka clients (config file, NPO_KAFKA_X_*, -X), with no broker needed."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.kafka.commands import settings_args, settings_from_args
from streams.kafka.errors import ClientErrors, client_config
from streams.settings import SASL_MECHANISMS, Settings, kafka_property_from_env, load, mask_url, masked

ROOT = Path(__file__).resolve().parent.parent
PW = "pw-Zq8-not-for-eyes"
SASL = {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_sasl_username": "alice"}


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    settings_args(parser)
    return parser.parse_args(list(argv))


def _all_sources(tmp_path) -> dict[str, Settings]:
    """The same password from each place settings come from."""
    toml = tmp_path / "npo.toml"
    toml.write_text(f'kafka_security_protocol = "SASL_SSL"\nkafka_sasl_mechanism = "SCRAM-SHA-512"\n'
                    f'kafka_sasl_username = "alice"\nkafka_sasl_password = "{PW}"\n')
    js = tmp_path / "npo.json"
    js.write_text(json.dumps({**SASL, "redis_url": f"redis://:{PW}@redis:6379/0"}))
    env = {"NPO_" + k.upper(): v for k, v in SASL.items()}
    return {
        "env": load(env={**env, "NPO_KAFKA_SASL_PASSWORD": PW}),
        "toml file": load(config_file=str(toml), env={}),
        "json file + redis url": load(config_file=str(js), env={"NPO_KAFKA_SASL_PASSWORD": "other"}),
        "flag": settings_from_args(_parse("--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512",
                                          "--sasl-username", "alice", "--sasl-password", PW)),
        "redis password": load(env={"NPO_REDIS_PASSWORD": PW}),
        "redis url with user": load(env={"NPO_REDIS_URL": f"rediss://monitor:{PW}@redis:6380/1"}),
        "kafka_extra": load(env={"NPO_KAFKA_X_SASL_OAUTHBEARER_CLIENT_SECRET": PW,
                                 "NPO_KAFKA_X_SSL_KEY_PASSWORD": PW}),
        "-X": settings_from_args(_parse("-X", f"sasl.oauthbearer.client.secret={PW}")),
    }


def test_repr_and_str_of_the_settings_mask_every_secret(tmp_path):
    for source, settings in _all_sources(tmp_path).items():
        assert PW not in repr(settings) and PW not in str(settings) and PW not in f"{settings!s}", source
        assert "***" in repr(settings), source
    shown = repr(load(env={"NPO_REDIS_URL": f"redis://:{PW}@redis:6379/0"}))
    assert "redis_url='redis://:***@redis:6379/0'" in shown  # where it points stays visible
    assert "kafka_sasl_username='alice'" in repr(_all_sources(tmp_path)["env"])


def test_the_secrets_still_reach_the_clients(tmp_path):
    """Masking is for showing only."""
    sources = _all_sources(tmp_path)
    assert sources["env"].confluent()["sasl.password"] == PW
    assert sources["flag"].aiokafka()["sasl_plain_password"] == PW
    assert sources["kafka_extra"].confluent()["sasl.oauthbearer.client.secret"] == PW
    assert sources["json file + redis url"].redis_url == f"redis://:{PW}@redis:6379/0"


def test_client_configurations_shown_with_masked_keep_no_secret():
    settings = load(overrides={**SASL, "kafka_sasl_password": PW,
                               "kafka_extra": {"ssl.key.password": PW, "sasl.oauthbearer.token.endpoint.url":
                                               f"https://id:{PW}@idp.example/token", "client.id": "c"}}, env={})
    conf = client_config(settings, ClientErrors())
    shown = masked(conf)
    assert PW not in repr(shown) and shown["client.id"] == "c" and shown["sasl.password"] == "***"
    assert shown["sasl.oauthbearer.token.endpoint.url"] == "https://id:***@idp.example/token"
    assert masked(settings.aiokafka())["sasl_plain_password"] == "***"
    assert masked({"ssl.key.location": "/etc/npo/key.pem"}) == {"ssl.key.location": "/etc/npo/key.pem"}
    assert mask_url("plain text, no url") == "plain text, no url"
    assert mask_url("redis://redis:6379/0?a=b@c") == "redis://redis:6379/0?a=b@c"


@pytest.mark.parametrize("bad", [
    {**SASL, "kafka_sasl_username": None, "kafka_sasl_password": PW},                 # no user
    {**SASL, "kafka_sasl_mechanism": "PLAINISH", "kafka_sasl_password": PW},          # unknown mechanism
    {**SASL, "kafka_sasl_password": PW, "kafka_extra": {"sasl.password": PW}},        # has a setting of its own
    {"kafka_sasl_password": PW, "topic_partitions": 0},
    {"kafka_sasl_password": PW, "kafka_extra": {"session.timeout.ms": "soon"}},       # not a number
    {"kafka_extra": {"sasl.oauthbearer.client.secret": ["no", PW]}},                # not a scalar
])
def test_errors_from_bad_settings_never_quote_a_secret(bad):
    with pytest.raises(ValueError) as info:
        load(overrides=bad, env={})
    assert PW not in str(info.value) and PW not in repr(info.value)


def test_a_malformed_dash_x_is_refused_without_echoing_it(capsys):
    with pytest.raises(SystemExit):
        _parse("-X", f"sasl.password:{PW}")
    err = capsys.readouterr().err
    assert "expected PROPERTY=VALUE" in err and PW not in err


# ------------------------------------------------------------------ pass-through, unit level
def test_kafka_extra_merges_file_env_and_flags_property_by_property(tmp_path):
    path = tmp_path / "npo.toml"
    path.write_text('[kafka_extra]\nclient.id = "file"\n"fetch.max.bytes" = 1000\n"statistics.interval.ms" = 5000\n'
                    '[aiokafka_extra]\nmax_poll_records = 7\n')
    os.environ.pop("NPO_CONFIG_FILE", None)
    env = {"NPO_CONFIG_FILE": str(path), "NPO_KAFKA_X_CLIENT_ID": "env", "NPO_KAFKA_X_FETCH_MAX_BYTES": "2000",
           "NPO_KAFKA_X_LOG__LEVEL": "3", "NPO_AIOKAFKA_X_CLIENT_RACK": "rack-1"}
    settings = load(overrides={"kafka_extra": {"client.id": "flag"}}, env=env)
    assert settings.kafka_extra == {"client.id": "flag", "fetch.max.bytes": "2000", "statistics.interval.ms": 5000,
                                    "log_level": "3"}
    assert settings.aiokafka_extra == {"max_poll_records": 7, "client_rack": "rack-1"}
    conf = settings.confluent()
    assert conf["client.id"] == "flag" and conf["statistics.interval.ms"] == 5000 and conf["log_level"] == "3"
    consumer, producer = settings.aiokafka("consumer"), settings.aiokafka("producer")
    assert consumer["client_id"] == producer["client_id"] == "flag"
    assert consumer["fetch_max_bytes"] == 2000 and "fetch_max_bytes" not in producer  # consumer-only keyword
    assert consumer["max_poll_records"] == 7 and consumer["client_rack"] == "rack-1"
    assert "max_poll_records" not in producer  # raw keywords go only to the clients that take them
    assert "statistics_interval_ms" not in consumer and "log_level" not in consumer  # librdkafka-only


def test_dash_x_flags_reach_the_settings():
    settings = settings_from_args(_parse("-X", "client.id=a", "-X", "session.timeout.ms=7000", "-X", "x.y=1=2"))
    assert settings.kafka_extra == {"client.id": "a", "session.timeout.ms": "7000", "x.y": "1=2"}
    assert settings.aiokafka()["session_timeout_ms"] == 7000


def test_env_names_map_to_librdkafka_properties():
    assert kafka_property_from_env("CLIENT_ID") == "client.id"
    assert kafka_property_from_env("SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL") == "sasl.oauthbearer.token.endpoint.url"
    assert kafka_property_from_env("LOG__LEVEL") == "log_level"


def test_an_aiokafka_keyword_no_client_takes_is_refused():
    settings = load(overrides={"aiokafka_extra": {"fetch_max_byte": 1}}, env={})
    with pytest.raises(ValueError, match="fetch_max_byte"):
        settings.aiokafka()


def test_every_sasl_mechanism_the_clients_implement_is_accepted():
    assert set(SASL_MECHANISMS) == {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"}
    oauth = load(overrides={"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "OAUTHBEARER",
                            "kafka_extra": {"sasl.oauthbearer.method": "oidc", "sasl.oauthbearer.client.id": "npo",
                                            "sasl.oauthbearer.client.secret": PW,
                                            "sasl.oauthbearer.token.endpoint.url": "https://idp/token"}}, env={})
    assert oauth.confluent()["sasl.mechanism"] == "OAUTHBEARER" and "sasl.username" not in oauth.confluent()
    gssapi = load(env={"NPO_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "NPO_KAFKA_SASL_MECHANISM": "GSSAPI",
                       "NPO_KAFKA_X_SASL_KERBEROS_SERVICE_NAME": "kafka-prod"})
    kw = gssapi.aiokafka()
    assert kw["sasl_mechanism"] == "GSSAPI" and kw["sasl_kerberos_service_name"] == "kafka-prod"
    assert "sasl_plain_password" not in kw
    # the flag's choices are the same list
    assert settings_from_args(_parse("--security-protocol", "SASL_SSL", "--sasl-mechanism", "OAUTHBEARER"))


def test_client_properties_librdkafka_would_refuse_are_its_to_refuse():
    """Our own checks stop at what has a setting of its own; the client names the rest."""
    from confluent_kafka import KafkaException, Producer

    settings = load(env={"NPO_KAFKA_X_NO_SUCH_PROPERTY": "1"})
    with pytest.raises(KafkaException, match="no.such.property"):
        Producer(settings.confluent())


# ------------------------------------------------------------------ `npo` output
def _npo(*argv: str, env: dict | None = None) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NPO_")}
    return subprocess.Popen([sys.executable, "-m", "streams.cli", *argv], cwd=ROOT, env={**base, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_npo_output_never_shows_a_password(tmp_path):
    config = tmp_path / "npo.json"
    config.write_text(json.dumps({**SASL, "kafka_sasl_password": PW, "kafka_bootstrap_servers": "127.0.0.1:1"}))
    env = {**{"NPO_" + k.upper(): v for k, v in SASL.items()}, "NPO_KAFKA_SASL_PASSWORD": PW,
           "NPO_REDIS_URL": f"redis://:{PW}@127.0.0.1:1/0", "NPO_KAFKA_X_SASL_OAUTHBEARER_CLIENT_SECRET": PW}
    runs = {
        "--help": _npo("--help", env=env),
        "topics create --help": _npo("topics", "create", "--help", env=env),
        "worker --help": _npo("worker", "--help", env=env),
        "topics create, no broker, password from env":
            _npo("topics", "create", "--bootstrap-servers", "127.0.0.1:1", env=env),
        "produce, no broker, password from a file": _npo("produce", str(config), "--config", str(config)),
        "triggers tail, password flag": _npo("triggers", "tail", "--max", "0", "--bootstrap-servers", "127.0.0.1:1",
                                             "--sasl-password", PW, env={k: v for k, v in env.items()
                                                                          if k != "NPO_KAFKA_SASL_PASSWORD"}),
        "-X sasl.password": _npo("topics", "create", "-X", f"sasl.password={PW}", env=env),
        "-X unknown mechanism": _npo("topics", "create", "--sasl-mechanism", "NOPE", env=env),
        "stats get, Redis URL password": _npo("stats", "get", "p", "s", env=env),
        "threshold get, Redis password": _npo("threshold", "get", "p", "s", "--redis-url", "redis://127.0.0.1:1/0",
                                              env={"NPO_REDIS_PASSWORD": PW}),
    }
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=120)
        assert PW not in out and PW not in err, (name, out, err)
        assert proc.returncode == (0 if "--help" in name else 2), (name, proc.returncode, err[-2000:])
        if proc.returncode:
            assert err.strip(), name  # the failure is explained, without the password
