"""The offsets a running consumer's fetches skipped (`streams.worker.retention`), against
brute-force references: offsets anywhere in Kafka's range, gaps from none to huge, batches
cut anywhere, positions moved or forgotten between fetches."""
from __future__ import annotations

import asyncio
from collections import Counter, namedtuple

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.worker.retention import FetchGaps, check_gaps, check_retention, missing

Record = namedtuple("Record", "offset")
TP = TopicPartition("scores", 0)
MAX_OFFSET = 2**63 - 2  # Kafka offsets are signed 64-bit


def _brute(expected: int, offsets: list[int]) -> list[tuple[int, int]]:
    """Every offset from `expected` to the last one, one at a time (small ranges only)."""
    present, out = set(offsets), []
    for o in range(expected, max(offsets, default=expected - 1) + 1):
        if o in present:
            continue
        if out and out[-1][1] == o:
            out[-1] = (out[-1][0], o + 1)
        else:
            out.append((o, o + 1))
    return out


def _ascending(max_value: int, max_size: int = 40):
    return st.lists(st.integers(0, max_value), max_size=max_size, unique=True).map(sorted)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 300), _ascending(300))
def test_missing_ranges_are_the_offsets_not_fetched_one_at_a_time(expected, offsets):
    assert missing(expected, offsets) == _brute(expected, offsets)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, MAX_OFFSET), _ascending(MAX_OFFSET))
def test_missing_ranges_over_the_whole_offset_range_hold_no_fetched_offset_and_cover_the_rest(expected, offsets):
    ranges = missing(expected, offsets)
    assert all(start < end for start, end in ranges)
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))  # ascending, apart
    assert not any(start <= o < end for o in offsets for start, end in ranges)
    if offsets and offsets[-1] >= expected:
        assert ranges == [] or (ranges[0][0] >= expected and ranges[-1][1] <= offsets[-1])
        # offsets from `expected` to the last fetched: each either fetched or in a range
        assert sum(end - start for start, end in ranges) + sum(o >= expected for o in offsets) \
            == offsets[-1] + 1 - expected
    else:
        assert ranges == []


@st.composite
def _fetches(draw):
    """A position the consumer was moved to, and the offsets it then fetched, cut into batches
    anywhere (an empty batch is a fetch that returned nothing for the partition)."""
    start = draw(st.integers(0, 500))
    offsets = draw(st.lists(st.integers(start, start + 500), max_size=60, unique=True).map(sorted))
    cuts = sorted(draw(st.lists(st.integers(0, len(offsets)), max_size=8)))
    bounds = [0, *cuts, len(offsets)]
    return start, offsets, [offsets[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=500, deadline=None)
@given(_fetches())
def test_the_gaps_of_fetches_cut_anywhere_are_those_of_the_whole_run(fetch):
    start, offsets, batches = fetch
    gaps = FetchGaps()
    gaps.moved(TP, start)
    found = [g for batch in batches for g in gaps.skipped(TP, [Record(o) for o in batch])]
    assert found == _brute(start, offsets)


@settings(max_examples=200, deadline=None)
@given(_fetches())
def test_a_partition_whose_position_is_not_known_is_checked_from_its_first_fetch(fetch):
    _, offsets, batches = fetch
    gaps = FetchGaps()
    gaps.moved(TP, 0)
    gaps.moved(TP, None)  # revoked, or sought to where its log happens to start
    found = [g for batch in batches for g in gaps.skipped(TP, [Record(o) for o in batch])]
    assert found == (_brute(offsets[0], offsets) if offsets else [])


def test_partitions_are_tracked_apart_and_a_move_back_is_not_a_gap():
    gaps, other = FetchGaps(), TopicPartition("feedback", 0)
    gaps.moved(TP, 10)
    gaps.moved(other, 10)
    assert gaps.skipped(TP, [Record(12), Record(13)]) == [(10, 12)]
    assert gaps.skipped(other, [Record(10)]) == []
    gaps.moved(TP, 5)  # a reload from an older checkpoint replays
    assert gaps.skipped(TP, [Record(5), Record(7)]) == [(6, 7)]
    assert gaps.skipped(other, [Record(11)]) == []


class _LogStarts:
    """A consumer's `beginning_offsets`, which fails `failures` times first (the only part of a
    consumer `check_gaps` uses)."""

    def __init__(self, starts: dict, failures: int = 0) -> None:
        self.starts, self.failures, self.asked = starts, failures, 0

    async def beginning_offsets(self, tps):
        self.asked += 1
        if self.asked <= self.failures:
            raise KafkaTimeoutError()
        return {tp: self.starts[tp] for tp in tps}


def test_only_offsets_before_the_log_s_first_are_counted_lost_each_once_and_a_failed_ask_is_tried_again(caplog):
    other = TopicPartition("scores", 1)
    gaps, counters = FetchGaps(), Counter()
    consumer = _LogStarts({TP: 130, other: 7}, failures=2)
    found = {TP: [(100, 105), (110, 140)], other: [(8, 9)]}  # other: a transaction marker, past the log start
    with caplog.at_level("WARNING", logger="npo.worker"):
        lost = asyncio.run(check_gaps(consumer, counters, found, gaps, retry_s=0))
    assert consumer.asked == 3 and lost == {TP: 100}  # where its first lost range begins
    assert counters == Counter({("lost_to_retention", "scores"): 5 + 20})  # 100-104, 110-129
    assert sum("could not check" in r.getMessage() for r in caplog.records) == 2
    # the consumer is sought back (a rebalance kept the partition): the same gap is met again
    assert asyncio.run(check_gaps(consumer, counters, {TP: [(100, 150)]}, gaps)) == {TP: 100}
    assert counters[("lost_to_retention", "scores")] == 25  # nothing twice...
    consumer.starts[TP] = 160
    asyncio.run(check_gaps(consumer, counters, {TP: [(100, 170)]}, gaps))
    assert counters[("lost_to_retention", "scores")] == 25 + 30  # ...but what retention deleted since
    assert asyncio.run(check_gaps(consumer, counters, {other: [(7, 8)]}, gaps)) == {}
    consumer.failures = consumer.asked + 1  # without retries, an ask that fails counts nothing
    assert asyncio.run(check_gaps(consumer, counters, {TP: [(170, 200)]}, gaps)) == {}
    assert counters[("lost_to_retention", "scores")] == 55


class _Stages:
    """The one method of `Stages` that `check_retention` calls: where each partition goes on."""

    def __init__(self) -> None:
        self.skipped: list[tuple[int, str, int]] = []

    def skip_to(self, p: int, topic: str, offset: int) -> None:
        self.skipped.append((p, topic, offset))


def test_a_checkpoint_loaded_again_in_the_same_process_goes_on_from_the_log_start_without_counting_twice():
    gaps, counters, consumer = FetchGaps(), Counter(), _LogStarts({TP: 130})
    for _ in range(2):  # the partition moved away and back: the same checkpoint is loaded again
        stages = _Stages()
        asyncio.run(check_retention(consumer, stages, counters, {TP: 100}, gaps))
        assert stages.skipped == [(0, "scores", 130)]
        assert gaps.skipped(TP, [Record(130)]) == []  # its fetch is expected there
        gaps.moved(TP, 100)
    assert counters == Counter({("lost_to_retention", "scores"): 30})
