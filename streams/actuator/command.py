"""`npo actuator`: close the loop on threshold advice, with guard rails; off unless started."""
from __future__ import annotations

import signal
import sys
import threading

from streams.actuator.decide import ENV_PREFIX

#: flag -> ActuatorConfig field; unset flags fall back to NPO_ACTUATOR_* variables, then defaults
_FLAGS = {
    "--max-step": ("max_step", float, "most a threshold moves in one change (default 0.1)"),
    "--cooldown-s": ("cooldown_s", float, "event time between two changes of a key (default 3600)"),
    "--probation-s": ("probation_s", float, "event time a change is watched and compared with as long "
                                            "before it (default 3600)"),
    "--min-saving": ("min_saving", float, "held-out saving bound the advice must clear; set it to the "
                                          "monitor's min_cost_saving (default 0.02)"),
    "--min-labels": ("min_labels", float, "effective labels each side of a probation needs to revert (default 30)"),
    "--confidence": ("confidence", float, "one-sided confidence that the loss got worse to revert (default 0.95)"),
    "--group": ("group", str, "consumer group on the triggers and stats topics (default npo-actuator)"),
}


def add_command(subparsers, settings_args) -> None:
    a = subparsers.add_parser("actuator", help="apply validated threshold advice to Redis, with guard rails, "
                                               "probation and revert; publish every decision to `actions`")
    a.add_argument("--advisory", action="store_const", const=True,
                   help="decide and publish actions (\"advised\") but never write a threshold; "
                        f"env {ENV_PREFIX}ADVISORY=true")
    a.add_argument("--from-beginning", dest="from_beginning", action="store_const", const=True,
                   help="a new consumer group starts at the oldest trigger (default: the newest, so old "
                        f"advice is not applied); env {ENV_PREFIX}FROM_BEGINNING=true")
    for flag, (field, kind, text) in _FLAGS.items():
        a.add_argument(flag, dest=field, type=kind, help=f"{text}; env {ENV_PREFIX}{field.upper()}")
    a.add_argument("--log-level", default="INFO")
    settings_args(a)
    a.set_defaults(run=_run)


def _run(args) -> int:
    from streams.actuator.decide import ActuatorConfig
    from streams.actuator.service import Actuator
    from streams.kafka.commands import settings_from_args
    from streams.kafka.errors import KafkaAuthError, KafkaRequestError, KafkaUnavailable
    from streams.metrics import setup_json_logging
    from streams.state.redis_store import StateError

    setup_json_logging(args.log_level)
    try:
        config = ActuatorConfig.load({f: getattr(args, f) for f in ("advisory", "from_beginning",
                                                                    *(v[0] for v in _FLAGS.values()))})
        actuator = Actuator(settings_from_args(args), config)
        actuator.start()
    except (KafkaUnavailable, KafkaAuthError, KafkaRequestError, StateError, ValueError, OSError) as exc:
        print(f"npo actuator: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        actuator.run(stop)
    finally:
        actuator.close()
    return 0
