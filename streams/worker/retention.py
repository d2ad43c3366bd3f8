"""Records a partition's log no longer held when a checkpoint resumes reading it: deleted by
retention (or an operator's delete-records) before the pipeline got to them, as when a
worker stays down longer than the topic's retention. The consumer then starts at the log's
first offset (it reads with ``auto_offset_reset=earliest``); this makes the gap loud: an
error log naming the partition and the offsets, and a counter (``lost_to_retention`` by
topic, ``npo_records_lost_to_retention_total``).

Checked once a partition's state is loaded, from the offsets its checkpoint resumes at; a
partition without a checkpoint starts at the log's first offset, where nothing read is
skipped. A consumer that falls behind retention while it runs is not seen here (the client
resets its position without telling): ``npo_consumer_lag`` shows it coming."""
from __future__ import annotations

import logging
from collections import Counter

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger("npo.worker")


def count_lost(counters: Counter, resume_at: dict[TopicPartition, int], log_start: dict[TopicPartition, int]) -> int:
    """Count and log the records between each partition's resume offset and its log's first
    offset (where the first is later); how many in all."""
    total = 0
    for tp, offset in sorted(resume_at.items()):
        first = log_start.get(tp)
        if first is not None and first > offset:
            counters["lost_to_retention", tp.topic] += first - offset
            total += first - offset
            log.error("%s[%d]: %d records (offsets %d to %d) were deleted before they were read, by retention "
                      "or delete-records; going on from %d", tp.topic, tp.partition, first - offset, offset,
                      first - 1, first)
    return total


async def check_retention(consumer, counters: Counter, resume_at: dict[TopicPartition, int]) -> None:
    """:func:`count_lost` with the log starts `consumer` (an aiokafka consumer) asks for; a
    failed request is logged and skipped, as the check does not hold up a partition's start."""
    if not resume_at:
        return
    try:
        log_start = await consumer.beginning_offsets(list(resume_at))
    except KafkaError as exc:
        log.warning("could not check whether retention deleted unread records: %r", exc)
        return
    count_lost(counters, resume_at, log_start)
