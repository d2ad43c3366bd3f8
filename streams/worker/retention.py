"""Input records a partition's log no longer holds when a checkpoint resumes reading it:
deleted by retention (or an operator's delete-records) before the pipeline processed them,
as when every worker stays down longer than the topic's retention. The consumer then starts
at the log's first offset (it reads with ``auto_offset_reset=earliest``); this makes the gap
loud: an error log naming the partition and the offsets, and a counter
(``lost_to_retention`` by topic, ``npo_records_lost_to_retention_total``). The state then
goes on from the log's first offset, so the next load does not count the same records again.

Checked once an input partition's state is loaded, from the offsets its checkpoint resumes
at. Not seen: a partition whose group's committed checkpoint pointer is gone too (Kafka
deletes a group's offsets `offsets.retention.minutes` after its last member left, 7 days by
default, like the topics' default retention) starts empty from the log's first record; and
a consumer that falls behind retention while it runs is reset by its client without a word
(``npo_consumer_lag`` shows it coming)."""
from __future__ import annotations

import asyncio
import logging
from collections import Counter

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger("npo.worker")


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
                          timeout_s: float = 10.0) -> None:
    """:func:`count_lost` with the log starts `consumer` (an aiokafka consumer) asks for; each
    input partition of `stages` that lost records goes on from its log's first offset
    (`Stages.skip_to`). A request that fails or takes longer than `timeout_s` is logged and
    skipped (nothing counted): the check does not hold up a partition's start."""
    if not resume_at:
        return
    try:
        log_start = await asyncio.wait_for(consumer.beginning_offsets(list(resume_at)), timeout_s)
    except (KafkaError, asyncio.TimeoutError) as exc:
        log.warning("could not check whether retention deleted unread records: %r", exc)
        return
    for tp, first in count_lost(counters, resume_at, log_start).items():
        stages.skip_to(tp.partition, tp.topic, first)
