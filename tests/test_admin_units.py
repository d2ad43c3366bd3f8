"""Topic creation waits until every partition can take a produce (streams.kafka.admin): the
broker logic it relies on is tested against the real broker in the integration tests; here,
what it does with each answer."""
from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.kafka.admin import _await_writable
from streams.kafka.errors import KafkaRequestError


class _Admin:
    """Two partitions of one topic; ListOffsets answers from a script of error codes per call."""

    def __init__(self, answers: list[dict[int, int | None]]) -> None:
        self.answers, self.calls = answers, []

    def list_topics(self, timeout):
        return SimpleNamespace(topics={"t": SimpleNamespace(partitions={0: None, 1: None})})

    def list_offsets(self, request, request_timeout):
        answer = self.answers[min(len(self.calls), len(self.answers) - 1)]
        self.calls.append(sorted(tp.partition for tp in request))
        out = {}
        for tp in request:
            f = Future()
            code = answer.get(tp.partition)
            f.set_exception(KafkaException(KafkaError(code))) if code else f.set_result(SimpleNamespace(offset=0))
            out[tp] = f
        return out


def test_a_partition_not_yet_taken_up_by_its_leader_is_asked_again_alone():
    admin = _Admin([{0: KafkaError.NOT_LEADER_FOR_PARTITION, 1: None}, {0: KafkaError.NOT_LEADER_FOR_PARTITION}, {}])
    _await_writable(admin, ["t"], timeout=5)
    assert admin.calls == [[0, 1], [0], [0]]


def test_a_principal_that_may_not_describe_the_topic_is_not_held_up():
    admin = _Admin([{0: KafkaError.TOPIC_AUTHORIZATION_FAILED, 1: None}])
    _await_writable(admin, ["t"], timeout=5)
    assert admin.calls == [[0, 1]]


def test_partitions_never_taken_up_fail_with_the_topic_named():
    admin = _Admin([{0: KafkaError.NOT_LEADER_FOR_PARTITION, 1: KafkaError.NOT_LEADER_FOR_PARTITION}])
    with pytest.raises(KafkaRequestError, match=r"not writable after 0.3 s: \['t'\]"):
        _await_writable(admin, ["t"], timeout=0.3)
    assert len(admin.calls) > 1
