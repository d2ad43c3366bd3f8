"""A `faust.App` on the cluster the NPO settings name, with the NPO defaults."""
from __future__ import annotations

import os
import ssl

import faust

from streams.settings import Settings


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


def create_app(settings: Settings, app_id: str | None = None, **options) -> faust.App:
    """A Faust app on the settings' cluster (id: `<group_id>-faust` unless given); `options` go
    to `faust.App` and win over these defaults."""
    os.makedirs(settings.state_dir, exist_ok=True)
    defaults = dict(broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
                    broker_credentials=credentials(settings), store="memory://", web_enabled=False,
                    datadir=os.path.join(settings.state_dir, "faust"), consumer_auto_offset_reset="earliest",
                    topic_allow_declare=False, topic_disable_leader=True, stream_wait_empty=False,
                    # as `npo worker`'s clients: a dead member's partitions move within seconds
                    broker_session_timeout=10.0, broker_heartbeat_interval=3.0)
    return faust.App(app_id or settings.group_id + "-faust", **{**defaults, **options})
