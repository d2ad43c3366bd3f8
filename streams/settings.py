"""Deployment settings: Kafka, Redis, topics, metrics, state. Read from flags, environment, a file.

Precedence: built-in defaults < config file (`--config` / NPO_CONFIG_FILE, JSON or TOML)
< environment (NPO_*) < command-line flags. Security settings are passed through to both
Kafka clients unchanged, so any cluster the clients support can be reached.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class Settings:
    """Where the job talks to. Each field `x` is also read from the environment as `NPO_X`."""

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    topic_prefix: str = "npo."
    topic_partitions: int = 4
    topic_replication: int = 1
    group_id: str = "npo-worker"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: str | None = None
    redis_namespace: str = "npo:"  # key prefix, so several monitors can share one Redis
    metrics_port: int = 9108
    merge_idle_ms: float = 100.0  # how long a partition's records wait for its co-partition (see worker/merge.py)
    state_dir: str = "npo-state"
    checkpoint_interval_s: float = 30.0  # how often state and the offsets it covers are committed together
    join_memtable_mb: int = 128  # RAM for the memtables of all of a worker's join stores together
    envelope_max_events: int = 1000
    linger_ms: float = 20.0

    def __post_init__(self) -> None:
        if self.kafka_security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"kafka_security_protocol must be one of {SECURITY_PROTOCOLS}")
        if self.kafka_sasl_mechanism is not None and self.kafka_sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(f"kafka_sasl_mechanism must be one of {SASL_MECHANISMS}")
        if self.kafka_security_protocol.startswith("SASL") and not (
                self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError("SASL needs kafka_sasl_mechanism, kafka_sasl_username and kafka_sasl_password")
        if self.topic_partitions < 1 or self.topic_replication < 1:
            raise ValueError("topic_partitions and topic_replication must be >= 1")
        if not 1 <= self.envelope_max_events <= 10_000:
            raise ValueError("envelope_max_events must be in [1, 10000]")
        if not 0 <= self.merge_idle_ms <= 60_000:
            raise ValueError("merge_idle_ms must be in [0, 60000]")
        if not 0.05 <= self.checkpoint_interval_s <= 3600:
            raise ValueError("checkpoint_interval_s must be in [0.05, 3600]")
        if not 8 <= self.join_memtable_mb <= 65_536:
            raise ValueError("join_memtable_mb must be in [8, 65536]")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port must be a TCP port (0 disables the endpoint)")

    def topic(self, name: str) -> str:
        """Full topic name for one of: scores, feedback, triggers, actions, stats, deadletters,
        partials, checkpoints."""
        if name not in TOPICS:
            raise KeyError(f"unknown topic {name!r}; known: {sorted(TOPICS)}")
        return self.topic_prefix + name

    def confluent(self) -> dict:
        """librdkafka (confluent-kafka) client configuration."""
        conf = {"bootstrap.servers": self.kafka_bootstrap_servers, "security.protocol": self.kafka_security_protocol}
        optional = {"sasl.mechanism": self.kafka_sasl_mechanism, "sasl.username": self.kafka_sasl_username,
                    "sasl.password": self.kafka_sasl_password, "ssl.ca.location": self.kafka_ssl_cafile,
                    "ssl.certificate.location": self.kafka_ssl_certfile, "ssl.key.location": self.kafka_ssl_keyfile}
        conf.update({k: v for k, v in optional.items() if v is not None})
        return conf

    def aiokafka(self) -> dict:
        """aiokafka client keyword arguments."""
        kw = {"bootstrap_servers": self.kafka_bootstrap_servers, "security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            kw.update(sasl_mechanism=self.kafka_sasl_mechanism, sasl_plain_username=self.kafka_sasl_username,
                      sasl_plain_password=self.kafka_sasl_password)
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kw["ssl_context"] = create_ssl_context(cafile=self.kafka_ssl_cafile, certfile=self.kafka_ssl_certfile,
                                                   keyfile=self.kafka_ssl_keyfile)
        return kw


#: Topic roles: partitions are the job's parallelism; compaction keeps the latest per key.
TOPICS = {
    "scores": {"cleanup.policy": "delete", "retention.ms": str(7 * 86_400_000)},
    "feedback": {"cleanup.policy": "delete", "retention.ms": str(14 * 86_400_000)},
    "triggers": {"cleanup.policy": "delete", "retention.ms": str(30 * 86_400_000)},
    "actions": {"cleanup.policy": "delete", "retention.ms": str(30 * 86_400_000)},  # `npo actuator` decisions
    "stats": {"cleanup.policy": "compact,delete", "retention.ms": str(7 * 86_400_000)},
    "deadletters": {"cleanup.policy": "delete", "retention.ms": str(14 * 86_400_000)},
    "partials": {"cleanup.policy": "delete", "retention.ms": str(2 * 86_400_000)},
    # worker state; superseded checkpoints are tombstoned, compaction then frees them
    "checkpoints": {"cleanup.policy": "compact", "segment.ms": str(3_600_000)},
}

ENV_PREFIX = "NPO_"


def env_names() -> list[str]:
    """Every environment variable the settings read."""
    return [ENV_PREFIX + f.name.upper() for f in fields(Settings)] + [ENV_PREFIX + "CONFIG_FILE"]


def _coerce(field: dataclasses.Field, raw):
    if raw is None or raw == "":
        return None
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError as e:
        raise ValueError(f"{field.name}: expected a number, got {raw!r}") from e
    return str(raw)


def _read_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    text = path.read_bytes()
    data = tomllib.loads(text.decode()) if path.suffix == ".toml" else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold an object/table")
    return data.get("settings", data)


def load(overrides: dict | None = None, env: dict | None = None, config_file: str | None = None) -> Settings:
    """Settings from defaults, then the file, then the environment, then `overrides` (flags)."""
    env = os.environ if env is None else env
    names = {f.name: f for f in fields(Settings)}
    values: dict = {}
    config_file = config_file or env.get(ENV_PREFIX + "CONFIG_FILE")
    if config_file:
        data = _read_file(config_file)
        unknown = set(data) - set(names) - {"monitor"}
        if unknown:
            raise ValueError(f"unknown settings in {config_file}: {sorted(unknown)}")
        values.update({k: _coerce(names[k], v) for k, v in data.items() if k in names})
    for name, f in names.items():
        if ENV_PREFIX + name.upper() in env:
            values[name] = _coerce(f, env[ENV_PREFIX + name.upper()])
    for name, v in (overrides or {}).items():
        if name not in names:
            raise ValueError(f"unknown setting {name!r}")
        if v is not None:
            values[name] = _coerce(names[name], v)
    values = {k: v for k, v in values.items() if v is not None or names[k].default is None}
    return Settings(**values)
