"""`npo worker`: run the Kafka worker until SIGINT/SIGTERM."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys

log = logging.getLogger("npo.worker")


def add_command(subparsers, settings_args) -> None:
    w = subparsers.add_parser("worker", help="run the streaming worker on Kafka (scale out: run more)")
    w.add_argument("--budget", type=float, help="alignment-loss budget L_budget (default 0.10)")
    w.add_argument("--group-id", dest="group_id", help="consumer group prefix (default: NPO_GROUP_ID or npo-worker)")
    w.add_argument("--metrics-port", dest="metrics_port", type=int, help="Prometheus port (0: none; default 9108)")
    w.add_argument("--liveness-timeout-s", dest="liveness_timeout_s", type=float,
                   help="/healthz fails after this many seconds without a turn of the worker's loop (default 60)")
    w.add_argument("--no-redis", action="store_true", help="run without Redis (statistics only go to Kafka)")
    w.add_argument("--log-level", default="INFO")
    settings_args(w)
    w.set_defaults(run=_run)


def _run(args) -> int:
    from streams.config import monitor_config_from
    from streams.kafka.commands import settings_from_args
    from streams.metrics import BrokerProbe, Metrics, setup_json_logging
    from streams.settings import monitor_section
    from streams.worker.worker import Worker

    setup_json_logging(args.log_level)
    overrides = {k: getattr(args, k) for k in ("group_id", "metrics_port") if getattr(args, k) is not None}
    settings = dataclasses.replace(settings_from_args(args), **overrides)
    config = monitor_config_from(monitor_section(args.config), l_budget=args.budget)
    sink = None
    if not args.no_redis:
        from streams.state.redis_store import RedisSink, RedisStore, StateAuthError, StateUnavailable

        def store() -> RedisStore:
            return RedisStore.from_url(settings.redis_url, password=settings.redis_password,
                                       namespace=settings.redis_namespace)

        probe = store()
        try:  # wrong credentials never fix themselves: stop now; an absent Redis may come back
            probe.thresholds()
        except StateAuthError as exc:
            print(f"npo worker: {exc}", file=sys.stderr)
            return 2
        except StateUnavailable as exc:
            log.warning("Redis is not reachable yet; running without it until it is: %s", exc)
        finally:
            probe.close()
        sink = RedisSink(store)
        sink.start_background(2.0)
    metrics = Metrics(liveness_timeout_s=args.liveness_timeout_s)
    if settings.metrics_port:
        metrics.health.broker_reachable = BrokerProbe(settings, settings.topic("scores"))
    metrics.serve(settings.metrics_port)
    worker = Worker(settings, config, sink=sink, metrics=metrics)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await worker.run(stop)

    try:
        asyncio.run(main())
    except Exception as e:  # noqa: BLE001 - a clear one-line reason, the traceback in the log
        log.exception("worker failed")
        print(f"npo worker: {e}", file=sys.stderr)
        return 2
    finally:
        if sink is not None:
            sink.stop()
    return 0
