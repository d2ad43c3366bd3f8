"""Input or partials records a partition's log no longer holds when the pipeline comes to read
them: deleted by retention (or an operator's delete-records) before it processed them. The
consumer then goes on at the log's first offset (it reads with
``auto_offset_reset=earliest``) without a word; this makes the gap loud: an error log naming
the partition and the offsets, and a counter (``lost_to_retention`` by topic,
``npo_records_lost_to_retention_total``). For partials, the host then has the aggregate stop
waiting for the numbers it lost (`Monitors.add_across_gap`).

Checked in two places. When an input partition's state is loaded, from the offsets its
checkpoint resumes at (every worker stayed down longer than the topic's retention): the state
then goes on from the log's first offset, so the next load does not count the same records
again. And at each fetch that skips offsets (:class:`FetchGaps`: a consumer that fell behind
retention while it ran, which ``npo_consumer_lag`` shows coming, or an aggregate whose
checkpoint resumes before its partials log's first offset): transaction markers
and aborted transactions skip offsets too, so a skip counts only the offsets the log no
longer holds. Not seen: a partition whose group's committed checkpoint pointer is gone too
(Kafka deletes a group's offsets `offsets.retention.minutes` after its last member left, 7
days by default, like the topics' default retention) starts empty from the log's first
record."""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger("npo.worker")
RETRY_LOG_START_S = 5.0
"""Wait between asks for a partials log's first offset, which the aggregate needs answered."""


def count_lost(counters: Counter, resume_at: dict[TopicPartition, int],
               log_start: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Count and log the records between each partition's resume offset and its log's first
    offset (where the first is later); the first offset of each partition that lost some."""
    skipped = {}
    for tp, offset in sorted(resume_at.items()):
        first = log_start.get(tp)
        if first is not None and first > offset:
            counters["lost_to_retention", tp.topic] += first - offset
            skipped[tp] = first
            log.error("%s[%d]: %d records (offsets %d to %d) were deleted before they were read, by retention "
                      "or delete-records; going on from %d", tp.topic, tp.partition, first - offset, offset,
                      first - 1, first)
    return skipped


async def check_retention(consumer, stages, counters: Counter, resume_at: dict[TopicPartition, int],
                          fetch_gaps: FetchGaps, timeout_s: float = 10.0) -> None:
    """:func:`count_lost` with the log starts `consumer` (an aiokafka consumer) asks for; each
    input partition of `stages` that lost records goes on from its log's first offset
    (`Stages.skip_to`), where `fetch_gaps` then expects its first fetch. A request that fails
    or takes longer than `timeout_s` is logged and skipped (nothing counted): the check does
    not hold up a partition's start."""
    log_start = await _log_starts(consumer, list(resume_at), timeout_s)
    for tp, offset in sorted(resume_at.items()):
        first = log_start.get(tp)
        if first is None or first <= offset:
            continue
        fetch_gaps.count_lost(counters, tp, offset, first)
        stages.skip_to(tp.partition, tp.topic, first)  # also when counted before: the state goes on from there
        fetch_gaps.moved(tp, first)


async def _log_starts(consumer, tps: list[TopicPartition], timeout_s: float,
                      retry_s: float | None = None) -> dict[TopicPartition, int]:
    """The first offset each of `tps`' logs holds ({} when there are none to ask for). A request
    that fails or takes longer than `timeout_s` is logged, and tried again after `retry_s`
    (None: not tried again, {} returned)."""
    while tps:
        try:
            return await asyncio.wait_for(consumer.beginning_offsets(tps), timeout_s)
        except (KafkaError, asyncio.TimeoutError) as exc:
            log.warning("could not check whether retention deleted unread records: %r", exc)
        if retry_s is None:
            break
        await asyncio.sleep(retry_s)
    return {}


def missing(expected: int, offsets: Sequence[int]) -> list[tuple[int, int]]:
    """The ranges ``[start, end)`` of offsets from `expected` up to the last of `offsets`
    (ascending) that are not among them."""
    out, at = [], expected
    for offset in offsets:
        if offset > at:
            out.append((at, offset))
        at = max(at, offset + 1)
    return out


class FetchGaps:
    """Where each partition's next fetch should begin, to notice a fetch that skipped offsets,
    and up to where its lost records have been counted. A partition whose position is not
    known (never read, or revoked) is not checked at its first fetch, which says where it
    stands."""

    def __init__(self) -> None:
        self._next: dict[TopicPartition, int] = {}
        self._counted: dict[TopicPartition, int] = {}  # offsets before it were counted lost, in this process

    def count_lost(self, counters: Counter, tp: TopicPartition, start: int, end: int) -> None:
        """Count and log (:func:`count_lost`) `tp`'s records from `start` to `end` as lost, but
        those counted before: a seek back, as a rebalance or a reload makes, meets the same
        gap again."""
        start = max(start, self._counted.get(tp, 0))
        if end > start:
            count_lost(counters, {tp: start}, {tp: end})
            self._counted[tp] = end

    def moved(self, tp: TopicPartition, offset: int | None) -> None:
        """The consumer was sought to `offset` (None: where it goes is not known)."""
        if offset is None:
            self._next.pop(tp, None)
        else:
            self._next[tp] = offset

    def skipped(self, tp: TopicPartition, records: Sequence) -> list[tuple[int, int]]:
        """The offset ranges a fetch of `records` (in offset order) skipped; `tp`'s next fetch
        then begins after the last of them."""
        if not records:
            return []
        first, last = records[0].offset, records[-1].offset
        expected = self._next.get(tp, first)
        self._next[tp] = max(expected, last + 1)
        if first == expected and last - first + 1 == len(records):  # contiguous: the common case
            return []
        return missing(expected, [r.offset for r in records])

    def gaps(self, fetched: dict[TopicPartition, Sequence]) -> dict[TopicPartition, list[tuple[int, int]]]:
        """:meth:`skipped` of each partition of a fetch (`fetched`: records by partition), for
        those that skipped some."""
        gaps = {}
        for tp, records in fetched.items():
            skipped = self.skipped(tp, records)
            if skipped:
                gaps[tp] = skipped
        return gaps


async def check_gaps(consumer, counters: Counter, gaps: dict[TopicPartition, list[tuple[int, int]]],
                     fetch_gaps: FetchGaps, retry_s: float | None = None,
                     timeout_s: float = 10.0) -> dict[TopicPartition, int]:
    """Count and log (as :func:`count_lost`) the offsets of `gaps` (fetches skipped them) that
    are before their log's first offset now, asked of `consumer` (an aiokafka consumer), and
    not counted before (`fetch_gaps`); the rest were transaction markers or aborted records.
    The partitions that lost records, each with the offset its first lost range begins at. A
    request that fails or takes longer than `timeout_s` is logged, and tried again every
    `retry_s` until one is answered (the fetched records wait: the aggregate must know whether
    the partials it waits for are gone); with `retry_s` None, nothing is counted then."""
    log_start = await _log_starts(consumer, list(gaps), timeout_s, retry_s)
    lost = {}
    for tp, ranges in gaps.items():
        first = log_start.get(tp)
        for start, end in ranges:
            if first is None or first <= start:
                continue  # not deleted: transaction markers or aborted records
            lost.setdefault(tp, start)
            fetch_gaps.count_lost(counters, tp, start, min(end, first))
    return lost
