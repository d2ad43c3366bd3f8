"""Duplicate suppression against brute force, and the batch call against the per-event one."""
from __future__ import annotations

import random

from streams.operators.dedup import Deduplicator


def _stream(n: int, seed: int) -> tuple[list[str], list[float]]:
    rng = random.Random(seed)
    ids = [f"e{rng.randrange(n // 3)}" for _ in range(n)]
    times = [i * 0.5 + rng.uniform(-20, 20) for i in range(n)]  # out of order within a few seconds
    return ids, times


def test_without_limits_exactly_the_first_occurrences_count():
    ids, times = _stream(5000, 1)
    firsts, seen = [], set()
    for pos, event_id in enumerate(ids):  # brute force
        if event_id not in seen:
            seen.add(event_id)
            firsts.append(pos)
    d = Deduplicator(horizon_s=1e12, max_ids=10**9)
    assert d.fresh(ids, times) == firsts
    assert d.duplicates == len(ids) - len(firsts) > 0


def _one_at_a_time(ids, times, horizon_s, max_ids):
    """The contract, brute force: ids forgotten oldest first once the event-time clock has
    moved past them by the horizon (checked each 1% of it) or beyond the cap."""
    seen, firsts, clock, next_check, evicted = {}, [], float("-inf"), float("-inf"), 0
    for pos, (event_id, ts) in enumerate(zip(ids, times)):
        if ts > clock:
            clock = ts
            if ts >= next_check:
                seen = _expire(seen, clock - horizon_s)
                next_check = ts + horizon_s / 100
        if event_id in seen:
            continue
        seen[event_id] = ts
        if len(seen) > max_ids:
            del seen[next(iter(seen))]
            evicted += 1
        firsts.append(pos)
    return firsts, evicted, len(seen)


def _expire(seen: dict, cutoff: float) -> dict:
    """Drop from the oldest inserted while it is older than cutoff (insertion order, not time)."""
    items = list(seen.items())
    k = 0
    while k < len(items) and items[k][1] < cutoff:
        k += 1
    return dict(items[k:])


def test_batches_of_any_size_decide_as_one_event_at_a_time():
    ids, times = _stream(6000, 2)
    singly, evicted, size_left = _one_at_a_time(ids, times, 300, 500)  # both the horizon and the cap bite
    one = Deduplicator(horizon_s=300, max_ids=500)
    assert [pos for pos, (e, ts) in enumerate(zip(ids, times)) if one.first_time(e, ts)] == singly
    assert (one.evicted, len(one)) == (evicted, size_left)
    for size in (1, 7, 1000, 6000):
        d = Deduplicator(horizon_s=300, max_ids=500)
        batched = []
        for lo in range(0, len(ids), size):
            batched += [lo + p for p in d.fresh(ids[lo:lo + size], times[lo:lo + size])]
        assert batched == singly, size
        assert (d.duplicates, d.evicted, len(d)) == (one.duplicates, one.evicted, len(one))
    assert one.evicted > 0 and len(singly) < len(ids)


class _NoWalk(dict):
    """A seen-ids dict that fails if anything walks all of it."""

    def __iter__(self):
        raise AssertionError("walked every remembered id")

    def keys(self):
        raise AssertionError("walked every remembered id")


def test_a_batch_costs_its_own_size_not_the_number_of_ids_remembered():
    d = Deduplicator(horizon_s=1e9, max_ids=10**6)
    d.fresh([f"old{i}" for i in range(1000)], [float(i) for i in range(1000)])
    d._seen = _NoWalk(d._seen)
    assert d.fresh(["old3", "new", "new"], [2000.0, 2001.0, 2002.0]) == [1]
