"""Deployment settings: Kafka, Redis, topics, metrics, state. Read from flags, environment, a file.

Precedence: built-in defaults < config file (`--config` / NPO_CONFIG_FILE, JSON or TOML)
< environment (NPO_*) < command-line flags. Security settings are passed through to both
Kafka clients unchanged, and any other client property through `kafka_extra` (librdkafka
names, also mapped to aiokafka where it has an equivalent) and `aiokafka_extra` (aiokafka
keyword arguments), so any cluster the clients support can be reached. Secrets never show
in the settings' repr, nor in a configuration shown with :func:`masked`.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (a dependency there)
    import tomli as tomllib

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: Every mechanism librdkafka and aiokafka implement; only PLAIN and SCRAM take a user and password.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
ENVELOPE_FORMATS = ("columnar", "json")
DEFAULT_ENVELOPE_FORMAT = "columnar"
"""What the shipped producer sends, and so the load tools by default."""
_PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

MASK = "***"
#: Parts of a setting's or client property's name that mark its value as a secret.
_SECRET_NAME_PARTS = ("password", "secret", "token", "jaas", "oauthbearer.config", "key.pem", "ssl_key",
                      "credential")
_SECRET_LOCATIONS = ("url", "location", "file")
#: The password of a URL's user information (redis://user:pw@host, https://:pw@host).
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^@\s/?#]*@")

#: librdkafka properties that have a setting of their own: set them there, not in `kafka_extra`.
_NAMED_PROPERTIES = {"bootstrap.servers": "kafka_bootstrap_servers", "metadata.broker.list": "kafka_bootstrap_servers",
                     "security.protocol": "kafka_security_protocol", "sasl.mechanism": "kafka_sasl_mechanism",
                     "sasl.mechanisms": "kafka_sasl_mechanism", "sasl.username": "kafka_sasl_username",
                     "sasl.password": "kafka_sasl_password", "ssl.ca.location": "kafka_ssl_cafile",
                     "ssl.certificate.location": "kafka_ssl_certfile", "ssl.key.location": "kafka_ssl_keyfile"}
_NAMED_KWARGS = {"bootstrap_servers": "kafka_bootstrap_servers", "security_protocol": "kafka_security_protocol",
                 "sasl_mechanism": "kafka_sasl_mechanism", "sasl_plain_username": "kafka_sasl_username",
                 "sasl_plain_password": "kafka_sasl_password"}
_CONSUMER, _BOTH = ("consumer",), ("consumer", "producer")
#: librdkafka property -> (aiokafka keyword, its type, the aiokafka clients that take it).
#: Properties without an aiokafka equivalent reach only the confluent-kafka clients.
AIOKAFKA_NAMES = {
    "client.id": ("client_id", str, _BOTH),
    "request.timeout.ms": ("request_timeout_ms", int, _BOTH),
    "metadata.max.age.ms": ("metadata_max_age_ms", int, _BOTH),
    "connections.max.idle.ms": ("connections_max_idle_ms", int, _BOTH),
    "retry.backoff.ms": ("retry_backoff_ms", int, _BOTH),
    "sasl.kerberos.service.name": ("sasl_kerberos_service_name", str, _BOTH),
    "message.max.bytes": ("max_request_size", int, ("producer",)),
    "fetch.max.bytes": ("fetch_max_bytes", int, _CONSUMER),
    "fetch.min.bytes": ("fetch_min_bytes", int, _CONSUMER),
    "fetch.wait.max.ms": ("fetch_max_wait_ms", int, _CONSUMER),
    "max.partition.fetch.bytes": ("max_partition_fetch_bytes", int, _CONSUMER),
    "session.timeout.ms": ("session_timeout_ms", int, _CONSUMER),
    "heartbeat.interval.ms": ("heartbeat_interval_ms", int, _CONSUMER),
    "max.poll.interval.ms": ("max_poll_interval_ms", int, _CONSUMER),
    "isolation.level": ("isolation_level", str, _CONSUMER),
    "client.rack": ("client_rack", str, _CONSUMER),
    "check.crcs": ("check_crcs", bool, _CONSUMER),
}
AIOKAFKA_CLIENTS = ("consumer", "producer")


def is_secret(name: str) -> bool:
    """Whether a setting or client property of this name holds a secret. Where one is
    (a URL, a file's path) is shown: `mask_url` hides a URL's password."""
    name = name.lower()
    return any(part in name for part in _SECRET_NAME_PARTS) and not name.endswith(_SECRET_LOCATIONS)


def mask_url(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1" + MASK + "@", text)


def masked(config: Mapping) -> dict:
    """A copy of a client configuration (or of the settings' fields) fit to print or log:
    secret values masked, URL passwords masked, nested mappings masked alike."""
    out = {}
    for name, value in config.items():
        if isinstance(value, Mapping):
            out[name] = masked(value)
        elif value is not None and is_secret(str(name)):
            out[name] = MASK
        else:
            out[name] = mask_url(value) if isinstance(value, str) else value
    return out


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
    partition_idle_ms: float = 60_000.0  # an input partition with nothing to read this long holds no window open
    state_dir: str = "npo-state"
    checkpoint_interval_s: float = 30.0  # how often state and the offsets it covers are committed together
    join_memtable_mb: int = 128  # RAM for the memtables of all of a worker's join stores together
    join_block_cache_mb: int = 32  # RAM for the blocks those stores read, cached, together
    envelope_max_events: int = 1000
    envelope_format: str = DEFAULT_ENVELOPE_FORMAT  # what the shipped producer sends: columnar (msgpack) or json envelopes
    linger_ms: float = 20.0
    partials_format: int = 2  # what the partials topic gets: 2 (a round's parts in one message) or 1 (one a message)
    # client properties passed through as they are (their secrets masked in the repr)
    kafka_extra: dict = field(default_factory=dict, hash=False)  # librdkafka name -> value
    aiokafka_extra: dict = field(default_factory=dict, hash=False)  # aiokafka keyword -> value

    def __post_init__(self) -> None:
        if self.kafka_security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"kafka_security_protocol must be one of {SECURITY_PROTOCOLS}")
        if self.kafka_sasl_mechanism is not None and self.kafka_sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(f"kafka_sasl_mechanism must be one of {SASL_MECHANISMS}")
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_mechanism:
            raise ValueError("SASL needs kafka_sasl_mechanism")
        if self.kafka_sasl_mechanism in _PASSWORD_MECHANISMS and self.kafka_security_protocol.startswith("SASL") \
                and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(f"SASL {self.kafka_sasl_mechanism} needs kafka_sasl_username and kafka_sasl_password")
        for extra, named in (("kafka_extra", _NAMED_PROPERTIES), ("aiokafka_extra", _NAMED_KWARGS)):
            table = getattr(self, extra)
            if not isinstance(table, Mapping) or not all(isinstance(k, str) for k in table):
                raise ValueError(f"{extra} must map names to values")
            taken = sorted(f"{k} (set {named[k]})" for k in table if k in named)
            if taken:
                raise ValueError(f"{extra} may not hold what a setting of its own holds: {', '.join(taken)}")
        bad = sorted(k for k, v in self.kafka_extra.items() if not isinstance(v, (str, int, float, bool)))
        if bad:
            raise ValueError(f"kafka_extra values must be strings, numbers or booleans: {bad}")
        for name, (_kwarg, kind, _clients) in AIOKAFKA_NAMES.items():
            if name in self.kafka_extra:
                _aiokafka_value(name, kind, self.kafka_extra[name])  # a bad value fails at load, not at start
        if self.topic_partitions < 1 or self.topic_replication < 1:
            raise ValueError("topic_partitions and topic_replication must be >= 1")
        if not 1 <= self.envelope_max_events <= 10_000:
            raise ValueError("envelope_max_events must be in [1, 10000]")
        if self.envelope_format not in ENVELOPE_FORMATS:
            raise ValueError(f"envelope_format must be one of {ENVELOPE_FORMATS}")
        if self.partials_format not in (1, 2):
            raise ValueError("partials_format must be 1 or 2")
        if not 0 <= self.merge_idle_ms <= 60_000:
            raise ValueError("merge_idle_ms must be in [0, 60000]")
        if not 0 < self.partition_idle_ms <= 86_400_000:
            raise ValueError("partition_idle_ms must be in (0, 86400000]")
        if not 0.05 <= self.checkpoint_interval_s <= 3600:
            raise ValueError("checkpoint_interval_s must be in [0.05, 3600]")
        if not 8 <= self.join_memtable_mb <= 65_536:
            raise ValueError("join_memtable_mb must be in [8, 65536]")
        if not 1 <= self.join_block_cache_mb <= 65_536:
            raise ValueError("join_block_cache_mb must be in [1, 65536]")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port must be a TCP port (0 disables the endpoint)")

    def __repr__(self) -> str:
        shown = masked({f.name: getattr(self, f.name) for f in fields(self)})
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

    def topic(self, name: str) -> str:
        """Full topic name for one of: scores, feedback, triggers, actions, stats, deadletters,
        partials, checkpoints."""
        if name not in TOPICS:
            raise KeyError(f"unknown topic {name!r}; known: {sorted(TOPICS)}")
        return self.topic_prefix + name

    def confluent(self) -> dict:
        """librdkafka (confluent-kafka) client configuration: `kafka_extra` and the named settings."""
        conf = {**self.kafka_extra, "bootstrap.servers": self.kafka_bootstrap_servers,
                "security.protocol": self.kafka_security_protocol}
        optional = {"sasl.mechanism": self.kafka_sasl_mechanism, "sasl.username": self.kafka_sasl_username,
                    "sasl.password": self.kafka_sasl_password, "ssl.ca.location": self.kafka_ssl_cafile,
                    "ssl.certificate.location": self.kafka_ssl_certfile, "ssl.key.location": self.kafka_ssl_keyfile}
        conf.update({k: v for k, v in optional.items() if v is not None})
        return conf

    def aiokafka(self, client: str = "consumer") -> dict:
        """Keyword arguments for an aiokafka ``client`` ("consumer" or "producer"): the named
        settings, the `kafka_extra` properties with an aiokafka equivalent (`AIOKAFKA_NAMES`)
        that this client takes, then the `aiokafka_extra` keywords this client takes (a keyword
        neither client takes is a ValueError: a typo must not pass unnoticed)."""
        if client not in AIOKAFKA_CLIENTS:
            raise ValueError(f"client must be one of {AIOKAFKA_CLIENTS}")
        kw = {"bootstrap_servers": self.kafka_bootstrap_servers, "security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            kw["sasl_mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username is not None:
            kw["sasl_plain_username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            kw["sasl_plain_password"] = self.kafka_sasl_password
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kw["ssl_context"] = create_ssl_context(cafile=self.kafka_ssl_cafile, certfile=self.kafka_ssl_certfile,
                                                   keyfile=self.kafka_ssl_keyfile)
        for name, value in self.kafka_extra.items():
            if name in AIOKAFKA_NAMES and client in AIOKAFKA_NAMES[name][2]:
                kwarg, kind, _clients = AIOKAFKA_NAMES[name]
                kw[kwarg] = _aiokafka_value(name, kind, value)
        if self.aiokafka_extra:
            accepted = _aiokafka_keywords()
            unknown = sorted(set(self.aiokafka_extra) - accepted["consumer"] - accepted["producer"])
            if unknown:
                raise ValueError(f"aiokafka_extra: no aiokafka client takes {unknown}")
            kw.update({k: v for k, v in self.aiokafka_extra.items() if k in accepted[client]})
        return kw


def _aiokafka_value(name: str, kind: type, value):
    """A librdkafka property's value as the aiokafka keyword takes it (librdkafka takes strings)."""
    if kind is bool:
        text = str(value).lower()
        if text not in ("true", "false"):
            raise ValueError(f"kafka_extra {name!r}: expected true or false")
        return text == "true"
    try:
        return kind(value)
    except (TypeError, ValueError):
        shown = MASK if is_secret(name) else repr(value)
        raise ValueError(f"kafka_extra {name!r}: expected {kind.__name__}, got {shown}") from None


def _aiokafka_keywords() -> dict[str, set[str]]:
    """The keyword arguments each aiokafka client takes."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    return {"consumer": set(inspect.signature(AIOKafkaConsumer).parameters) - {"topics"},
            "producer": set(inspect.signature(AIOKafkaProducer).parameters)}


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
#: Environment variable families of the pass-through tables: NPO_KAFKA_X_CLIENT_ID=a sets
#: kafka_extra["client.id"] ("_" stands for ".", "__" for "_"); NPO_AIOKAFKA_X_CLIENT_ID=a sets
#: aiokafka_extra["client_id"] (the name lower-cased, the value read as JSON if it is JSON).
ENV_EXTRA_PREFIXES = {"kafka_extra": ENV_PREFIX + "KAFKA_X_", "aiokafka_extra": ENV_PREFIX + "AIOKAFKA_X_"}
_EXTRAS = tuple(ENV_EXTRA_PREFIXES)


def env_names() -> list[str]:
    """Every environment variable the settings read, besides the ENV_EXTRA_PREFIXES families."""
    return [ENV_PREFIX + f.name.upper() for f in fields(Settings) if f.name not in _EXTRAS] + [
        ENV_PREFIX + "CONFIG_FILE"]


def kafka_property_from_env(suffix: str) -> str:
    """The librdkafka property an NPO_KAFKA_X_ variable names: ``SASL_OAUTHBEARER_METHOD`` is
    ``sasl.oauthbearer.method``, ``LOG__LEVEL`` is ``log_level``."""
    return "_".join(part.replace("_", ".") for part in suffix.lower().split("__"))


def _json_or_text(raw: str):
    try:
        return json.loads(raw)
    except ValueError:
        return raw


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


def _flatten(table: Mapping, prefix: str = "") -> dict:
    """A TOML table of librdkafka properties with its dotted keys joined again: TOML reads
    ``client.id = "a"`` as ``{"client": {"id": "a"}}``."""
    out = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + str(key)] = value
    return out


def _read_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    text = path.read_bytes()
    data = tomllib.loads(text.decode()) if path.suffix == ".toml" else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold an object/table")
    return data.get("settings", data)


def monitor_section(config_file: str | None) -> dict | None:
    """The `[monitor]` table of a settings file (what shapes results), None without one."""
    if not config_file:
        return None
    data = _read_file(Path(config_file))
    return data.get("monitor") if isinstance(data, dict) else None


def load(overrides: dict | None = None, env: dict | None = None, config_file: str | None = None) -> Settings:
    """Settings from defaults, then the file, then the environment, then `overrides` (flags).
    The pass-through tables are merged property by property in the same order."""
    env = os.environ if env is None else env
    names = {f.name: f for f in fields(Settings)}
    values: dict = {}
    extras: dict[str, dict] = {extra: {} for extra in _EXTRAS}
    config_file = config_file or env.get(ENV_PREFIX + "CONFIG_FILE")
    if config_file:
        data = _read_file(config_file)
        unknown = set(data) - set(names) - {"monitor"}
        if unknown:
            raise ValueError(f"unknown settings in {config_file}: {sorted(unknown)}")
        for extra in _EXTRAS:
            table = data.get(extra, {})
            if not isinstance(table, Mapping):
                raise ValueError(f"{extra} in {config_file} must be a table/object")
            extras[extra].update(_flatten(table) if extra == "kafka_extra" else table)
        values.update({k: _coerce(names[k], v) for k, v in data.items() if k in names and k not in _EXTRAS})
    for name, f in names.items():
        if name not in _EXTRAS and ENV_PREFIX + name.upper() in env:
            values[name] = _coerce(f, env[ENV_PREFIX + name.upper()])
    for var, raw in sorted(env.items()):
        if var.startswith(ENV_EXTRA_PREFIXES["kafka_extra"]):
            extras["kafka_extra"][kafka_property_from_env(var[len(ENV_EXTRA_PREFIXES["kafka_extra"]):])] = raw
        elif var.startswith(ENV_EXTRA_PREFIXES["aiokafka_extra"]):
            extras["aiokafka_extra"][var[len(ENV_EXTRA_PREFIXES["aiokafka_extra"]):].lower()] = _json_or_text(raw)
    for name, v in (overrides or {}).items():
        if name not in names:
            raise ValueError(f"unknown setting {name!r}")
        if name in _EXTRAS:
            extras[name].update(v or {})
        elif v is not None:
            values[name] = _coerce(names[name], v)
    values = {k: v for k, v in values.items() if v is not None or names[k].default is None}
    return Settings(**values, **extras)
