"""`npo stats get`, `npo threshold set|get`: read what the worker keeps in Redis, set the tau in force."""
from __future__ import annotations

import functools
import sys

import orjson


def add_commands(subparsers, settings_args) -> None:
    """Register the Redis subcommands; each sets ``run`` to its handler."""
    stats = subparsers.add_parser("stats", help="read the latest window statistics from Redis")
    get = stats.add_subparsers(dest="stats_command", required=True).add_parser(
        "get", help="print the latest tumbling, hopping and cumulative views of a key as JSON")
    get.add_argument("policy_id")
    get.add_argument("segment")
    settings_args(get)
    get.set_defaults(run=_stats_get)

    threshold = subparsers.add_parser("threshold", help="the decision threshold in force per key")
    sub = threshold.add_subparsers(dest="threshold_command", required=True)
    tset = sub.add_parser("set", help="put a threshold in force (the worker uses it from its next poll)")
    tset.add_argument("policy_id")
    tset.add_argument("segment")
    tset.add_argument("tau", type=float, help="in [0, 1]")
    settings_args(tset)
    tset.set_defaults(run=_threshold_set)
    tget = sub.add_parser("get", help="print the threshold in force (exit 1 if none is set)")
    tget.add_argument("policy_id")
    tget.add_argument("segment")
    settings_args(tget)
    tget.set_defaults(run=_threshold_get)


def _with_store(name: str):
    """Pass the handler a store built from the settings; expected failures -> one line, exit code 2."""
    def wrap(handler):
        @functools.wraps(handler)
        def run(args) -> int:
            from streams.settings import load
            from streams.state.redis_store import RedisStore, StateError

            try:
                settings = load(overrides={"redis_url": args.redis_url}, config_file=args.config)
                store = RedisStore.from_url(settings.redis_url, password=settings.redis_password,
                                            namespace=settings.redis_namespace)
                try:
                    return handler(args, store)
                finally:
                    store.close()
            except (StateError, ValueError) as exc:
                print(f"npo {name}: {exc}", file=sys.stderr)
                return 2
        return run
    return wrap


@_with_store("stats get")
def _stats_get(args, store) -> int:
    stats = store.get_stats(args.policy_id, args.segment)
    if stats is None:
        print(f"npo stats get: no statistics for ({args.policy_id!r}, {args.segment!r})", file=sys.stderr)
        return 1
    print(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode())
    return 0


@_with_store("threshold set")
def _threshold_set(args, store) -> int:
    store.set_threshold(args.policy_id, args.segment, args.tau)
    print(f"threshold for ({args.policy_id!r}, {args.segment!r}) set to {args.tau!r}")
    return 0


@_with_store("threshold get")
def _threshold_get(args, store) -> int:
    tau = store.get_threshold(args.policy_id, args.segment)
    if tau is None:
        print(f"npo threshold get: no threshold set for ({args.policy_id!r}, {args.segment!r})", file=sys.stderr)
        return 1
    print(repr(tau))
    return 0
