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


def test_batches_of_any_size_decide_as_one_event_at_a_time():
    ids, times = _stream(6000, 2)
    one = Deduplicator(horizon_s=300, max_ids=500)  # both the horizon and the cap bite
    singly = [pos for pos, (e, ts) in enumerate(zip(ids, times)) if one.first_time(e, ts)]
    for size in (1, 7, 1000, 6000):
        d = Deduplicator(horizon_s=300, max_ids=500)
        batched = []
        for lo in range(0, len(ids), size):
            batched += [lo + p for p in d.fresh(ids[lo:lo + size], times[lo:lo + size])]
        assert batched == singly, size
        assert (d.duplicates, d.evicted, len(d)) == (one.duplicates, one.evicted, len(one))
    assert one.evicted > 0 and len(singly) < len(ids)
