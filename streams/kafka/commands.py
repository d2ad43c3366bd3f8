"""`npo topics create`, `npo produce`, `npo triggers tail`: thin shells over this package,
plus the connection flags every Kafka command shares."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import uuid

from streams.settings import ENVELOPE_FORMATS, SASL_MECHANISMS, SECURITY_PROTOCOLS, Settings, load

#: flag -> Settings field; unset flags fall back to NPO_* variables, then the config file.
_FLAGS = {
    "--bootstrap-servers": "kafka_bootstrap_servers",
    "--topic-prefix": "topic_prefix",
    "--security-protocol": "kafka_security_protocol",
    "--sasl-mechanism": "kafka_sasl_mechanism",
    "--sasl-username": "kafka_sasl_username",
    "--sasl-password": "kafka_sasl_password",
    "--ssl-cafile": "kafka_ssl_cafile",
    "--redis-url": "redis_url",
}
_CHOICES = {"--security-protocol": SECURITY_PROTOCOLS, "--sasl-mechanism": SASL_MECHANISMS}
_HELP = {"--sasl-password": "prefer NPO_KAFKA_SASL_PASSWORD: command lines are visible to other users"}


def _property(text: str) -> tuple[str, str]:
    """One ``-X PROPERTY=VALUE``. The error never repeats the text, which may hold a secret."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("expected PROPERTY=VALUE, e.g. -X client.id=npo-worker-1")
    return name.strip(), value


def settings_args(parser: argparse.ArgumentParser) -> None:
    """Add the connection flags (and ``--config``, ``-X``) to a subcommand's parser."""
    group = parser.add_argument_group("connection (flags override NPO_* variables and --config)")
    group.add_argument("--config", help="JSON or TOML settings file (default: NPO_CONFIG_FILE)")
    for flag, field in _FLAGS.items():
        group.add_argument(flag, dest=field, choices=_CHOICES.get(flag), help=_HELP.get(flag))
    group.add_argument("-X", dest="kafka_extra", metavar="PROPERTY=VALUE", type=_property, action="append",
                       help="a librdkafka client property, passed through (repeatable; also NPO_KAFKA_X_<PROPERTY> "
                            "and the kafka_extra table); mapped to aiokafka where it has an equivalent")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from defaults, the config file, the environment and the flags, in that order."""
    overrides = {field: getattr(args, field, None) for field in _FLAGS.values()}
    overrides["kafka_extra"] = dict(getattr(args, "kafka_extra", None) or ())
    return load(overrides=overrides, config_file=getattr(args, "config", None))


def add_commands(subparsers, settings_args=settings_args) -> None:
    """Register the Kafka subcommands; each sets ``run`` to its handler."""
    topics = subparsers.add_parser("topics", help="manage the job's Kafka topics")
    create = topics.add_subparsers(dest="topics_command", required=True).add_parser(
        "create", help="create the topics that do not exist yet (idempotent)")
    create.add_argument("--partitions", type=int, help="default: settings topic_partitions")
    create.add_argument("--replication", type=int, help="default: settings topic_replication")
    settings_args(create)
    create.set_defaults(run=_topics_create)

    produce = subparsers.add_parser("produce", help="send a JSON-lines file of score/feedback events")
    produce.add_argument("file")
    produce.add_argument("--single", action="store_true", help="one message per event instead of envelopes")
    produce.add_argument("--raw", choices=("scores", "feedback"),
                         help="send each line unchecked to this topic (to inject bad input)")
    produce.add_argument("--envelope-format", choices=ENVELOPE_FORMATS,
                         help="columnar (msgpack columns) or json envelopes (default: NPO_ENVELOPE_FORMAT, columnar)")
    settings_args(produce)
    produce.set_defaults(run=_produce)

    triggers = subparsers.add_parser("triggers", help="read trigger events")
    tail = triggers.add_subparsers(dest="triggers_command", required=True).add_parser(
        "tail", help="print triggers as JSON lines")
    tail.add_argument("--group", help="consumer group whose offsets to use and commit "
                                      "(default: a fresh one, leaving real groups untouched)")
    tail.add_argument("--from-beginning", action="store_true",
                      help="start at the oldest trigger when the group has no committed offset")
    tail.add_argument("--max", type=int, help="stop after N triggers")
    tail.add_argument("--idle-timeout", type=float, metavar="S", help="stop after S seconds without a message")
    settings_args(tail)
    tail.set_defaults(run=_triggers_tail)


def _reported(name: str):
    """Turn expected failures (no broker, bad credentials, bad settings) into one line and exit code 2."""
    def wrap(handler):
        @functools.wraps(handler)
        def run(args) -> int:
            from streams.kafka.errors import KafkaAuthError, KafkaRequestError, KafkaUnavailable

            try:
                return handler(args)
            except (KafkaUnavailable, KafkaAuthError, KafkaRequestError, ValueError, OSError) as exc:
                print(f"npo {name}: {exc}", file=sys.stderr)
                return 2
        return run
    return wrap


@_reported("topics create")
def _topics_create(args) -> int:
    from streams.kafka.admin import create_topics

    result = create_topics(settings_from_args(args), partitions=args.partitions, replication=args.replication)
    for topic, status in result.items():
        print(f"{topic}: {status}")
    return 0


@_reported("produce")
def _produce(args) -> int:
    from streams.kafka.producer import produce_file

    settings = settings_from_args(args)
    if args.envelope_format:
        settings = dataclasses.replace(settings, envelope_format=args.envelope_format)
    counts = produce_file(settings, args.file, envelope=not args.single, raw_topic=args.raw)
    invalid = f", {counts['invalid']} invalid line(s) not sent" if counts["invalid"] else ""
    print(f"npo produce: {counts['lines']} lines, {counts['events']} events in {counts['messages']} messages{invalid}")
    return 1 if counts["invalid"] else 0


@_reported("triggers tail")
def _triggers_tail(args) -> int:
    from streams import codec
    from streams.kafka.triggers import iter_triggers

    group = args.group or f"npo-tail-{uuid.uuid4().hex[:12]}"
    triggers = iter_triggers(settings_from_args(args), group, from_beginning=args.from_beginning,
                             idle_timeout=args.idle_timeout, limit=args.max)
    try:
        for trigger in triggers:
            sys.stdout.write(codec.encode(trigger).decode() + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    finally:
        triggers.close()
    return 0
