"""The NPO pipeline as a Faust app of its own: `faust -A streams.faust.app worker --without-web -l info`.

Settings come from the environment and `NPO_CONFIG_FILE` as for `npo worker` (`NPO_KAFKA_*`,
`NPO_TOPIC_PREFIX`, `NPO_GROUP_ID`, `NPO_STATE_DIR`, ...), the monitor's configuration
from that file's `[monitor]` section. The latest statistics and
cool-downs go to Redis, and thresholds are read from it, when `NPO_REDIS_URL` is set.
To run the agents inside an app of your own, call `install` on it instead.
"""
from __future__ import annotations

import os
import ssl

import faust

from streams.config import monitor_config_from
from streams.faust.host import install
from streams.settings import Settings, load, monitor_section


def credentials(settings: Settings):
    """Faust's broker credentials for the settings' security protocol (None: plaintext)."""
    context = None
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    if settings.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                     ssl_context=context, mechanism=settings.kafka_sasl_mechanism or "PLAIN")
    return faust.SSLCredentials(context) if context is not None else None


def create_app(settings: Settings, **options) -> faust.App:
    """A Faust app on the settings' cluster, for the NPO agents alone; `options` go to
    `faust.App` (they win over these defaults)."""
    os.makedirs(settings.state_dir, exist_ok=True)
    defaults = dict(broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
                    broker_credentials=credentials(settings), store="memory://", web_enabled=False,
                    datadir=os.path.join(settings.state_dir, "faust"), consumer_auto_offset_reset="earliest",
                    topic_allow_declare=False, topic_disable_leader=True, stream_wait_empty=False,
                    # as `npo worker`'s clients: a dead member's partitions move within seconds
                    broker_session_timeout=10.0, broker_heartbeat_interval=3.0)
    return faust.App(settings.group_id + "-faust", **{**defaults, **options})


def _sink(settings: Settings):
    if not os.environ.get("NPO_REDIS_URL"):
        return None
    from streams.state.redis_store import RedisSink, RedisStore

    sink = RedisSink(lambda: RedisStore.from_url(settings.redis_url, password=settings.redis_password,
                                                 namespace=settings.redis_namespace))
    sink.start_background(2.0)
    return sink


settings = load()
app = create_app(settings)
host = install(app, settings, monitor_config_from(monitor_section(os.environ.get("NPO_CONFIG_FILE"))),
               sink=_sink(settings))
