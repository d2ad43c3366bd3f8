"""Partials read in the round that wrote them.

Why: a trigger is published by the aggregate stage once the partials that close its window
arrive there, through the partials topic. The aggregate's fetch returns what its consumer has
already buffered, which is what the round before wrote; the partials this round's ingest just
wrote, acknowledged a few milliseconds earlier, would wait a whole round more (30 to 400 ms
at 71,000 events/s on two cores). So the worker notes up to where its own writes to the
partials partitions it aggregates reach, and fetches those partitions through that end,
waiting a bounded time for them.
"""
from __future__ import annotations

import time
from collections.abc import Iterable

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError

WAIT_S = 0.1
"""How long a round waits at most for partials it wrote to reach its fetch: the broker holds
them once acknowledged, and a fetch returns them within milliseconds; a broker slower than
this delays the trigger by a round, as if there were no wait, but not the round."""


def written_ends(acks: Iterable, topic: str) -> dict[TopicPartition, int]:
    """The offset after the last message written to each partition of `topic`, by the
    acknowledgements (record metadata: topic, partition, offset) of what was written."""
    ends: dict[TopicPartition, int] = {}
    for ack in acks:
        if ack.topic == topic:
            tp = TopicPartition(ack.topic, ack.partition)
            ends[tp] = max(ends.get(tp, 0), ack.offset + 1)
    return ends


async def fetch_through(consumer, ends: dict[TopicPartition, int], timeout_ms: int, max_records: int,
                        wait_s: float = WAIT_S) -> dict[TopicPartition, list]:
    """What `consumer` (an aiokafka consumer) fetches, as its `getmany(timeout_ms=...,
    max_records=...)` would give it, then more of what it fetches, for up to `wait_s`, until
    each partition of `ends` that it reads (held, not paused) has been read through its end:
    records by partition, in offset order. Stops early at `max_records` records. Every
    partition's records are taken, not only those waited for: aiokafka fetches a broker's
    partitions together, and sends that broker no new fetch while any of them has records
    left unread."""
    fetched = {tp: list(records) for tp, records in
               (await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)).items()}
    deadline = time.monotonic() + wait_s
    while (count := sum(map(len, fetched.values()))) < max_records:
        left = deadline - time.monotonic()
        if left <= 0 or not await _behind(consumer, ends):
            break
        more = await consumer.getmany(timeout_ms=max(1, round(left * 1000)), max_records=max_records - count)
        for tp, records in more.items():
            fetched.setdefault(tp, []).extend(records)
    return fetched


async def _behind(consumer, ends: dict[TopicPartition, int]) -> list[TopicPartition]:
    """The partitions of `ends` that `consumer` reads (held and not paused: one a rebalance
    has just assigned is paused until it is loaded) and has not read through their end."""
    behind = []
    for tp, end in sorted(ends.items()):
        try:
            if tp in consumer.assignment() and tp not in consumer.paused() and await consumer.position(tp) < end:
                behind.append(tp)
        except IllegalStateError:  # revoked while its position was asked for
            pass
    return behind
