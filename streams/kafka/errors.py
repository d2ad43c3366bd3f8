"""What can go wrong talking to Kafka, as exceptions a caller can act on, and the
connection check that turns librdkafka's endless background retries into one of them.

librdkafka never gives up on a broker: a wrong address or a rejected password only
shows as log lines and error callbacks while every request times out. Each client
here is therefore built with :class:`ClientErrors` as its ``error_cb`` and asked for
metadata first (:func:`metadata`): an authentication failure ends the wait at once,
an unreachable cluster ends it after ``timeout`` seconds.
"""
from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException

from streams.settings import Settings

#: librdkafka's own log lines; silent unless the application configures logging.
RDKAFKA_LOG = logging.getLogger("npo.kafka.rdkafka")
RDKAFKA_LOG.addHandler(logging.NullHandler())

_AUTH_CODES = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL}


class KafkaUnavailable(RuntimeError):
    """No broker answered in time (or a topic this client needs is missing): retry later."""


class KafkaAuthError(RuntimeError):
    """The cluster rejected the credentials or the TLS handshake: fix the configuration."""


class KafkaRequestError(RuntimeError):
    """The cluster refused a request (topic creation, message delivery)."""


class ClientErrors:
    """``error_cb`` that remembers the first authentication failure and the last other error."""

    def __init__(self) -> None:
        self.auth: KafkaError | None = None
        self.last: KafkaError | None = None

    def __call__(self, err: KafkaError) -> None:
        if err.code() in _AUTH_CODES:
            self.auth = self.auth or err
        else:
            self.last = err


def client_config(settings: Settings, errors: ClientErrors, **extra) -> dict:
    """librdkafka configuration: the settings' connection and security, error and log routing."""
    return {**settings.confluent(), "error_cb": errors, "logger": RDKAFKA_LOG, **extra}


def auth_error(settings: Settings, err: KafkaError | str) -> KafkaAuthError:
    """The error naming protocol, mechanism and user (never the password)."""
    who = (f"SASL {settings.kafka_sasl_mechanism} as user {settings.kafka_sasl_username!r}"
           if settings.kafka_sasl_mechanism else "no SASL")
    reason = err.str() if isinstance(err, KafkaError) else err
    return KafkaAuthError(f"Kafka at {settings.kafka_bootstrap_servers} rejected "
                          f"{settings.kafka_security_protocol} ({who}): {reason}")


def metadata(client, errors: ClientErrors, settings: Settings, timeout: float):
    """Cluster metadata from ``client`` (built with :func:`client_config` and ``errors``),
    retried in short steps so an authentication failure surfaces at once.

    Call it before a consumer subscribes: ``poll`` serves the error callbacks."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except KafkaException as exc:
            failure = exc.args[0]
        client.poll(0)
        if errors.auth is not None:
            raise auth_error(settings, errors.auth)
        if time.monotonic() >= deadline:
            reason = (errors.last or failure).str()
            raise KafkaUnavailable(f"no Kafka broker answered at {settings.kafka_bootstrap_servers} "
                                   f"within {timeout:g} s: {reason}")
