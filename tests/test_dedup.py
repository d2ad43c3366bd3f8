"""Duplicate suppression against brute force, and the batch call against the per-event one."""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.config import MonitorConfig
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
    return firsts, evicted, seen


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
    assert (one.evicted, len(one)) == (evicted, len(size_left))
    for size in (1, 7, 1000, 6000):
        d = Deduplicator(horizon_s=300, max_ids=500)
        batched = []
        for lo in range(0, len(ids), size):
            batched += [lo + p for p in d.fresh(ids[lo:lo + size], times[lo:lo + size])]
        assert batched == singly, size
        assert (d.duplicates, d.evicted, len(d)) == (one.duplicates, one.evicted, len(one))
    assert one.evicted > 0 and len(singly) < len(ids)


def test_memory_stays_put_once_the_ids_held_level_off():
    """Steady churn (as many ids forgotten as taken in) keeps the table's arrays: the dict it
    replaced grew its table long after its size had levelled off."""
    d = Deduplicator(horizon_s=1000.0, max_ids=10**6)
    t, sizes = 0.0, []
    for turn in range(40):  # 1,000 s of event time per turn: the horizon
        for lo in range(0, 5000, 500):
            d.fresh([f"e{turn}-{i}" for i in range(lo, lo + 500)], [t + i * 0.2 for i in range(lo, lo + 500)])
        t += 1000.0
        sizes.append((len(d), d.nbytes))
    held = [n for n, _ in sizes[5:]]
    assert max(held) - min(held) < 200 and min(held) > 4000  # levelled off
    assert len({nbytes for _, nbytes in sizes[5:]}) == 1
    assert d.nbytes < 120 * max(held)  # the dict took about 240 bytes an id


def test_a_checkpoint_continues_exactly_and_bad_ones_are_refused():
    from streams.state import snapshot

    ids, times = _stream(6000, 3)
    whole = Deduplicator(horizon_s=300, max_ids=500)
    expected = whole.fresh(ids, times)
    first = Deduplicator(horizon_s=300, max_ids=500)
    head = first.fresh(ids[:2500], times[:2500])
    state = snapshot.decode("stage", snapshot.encode("stage", {"dedup": first.dump()}))["dedup"]
    second = Deduplicator(horizon_s=300, max_ids=500)
    second.load(state)
    tail = [2500 + p for p in second.fresh(ids[2500:], times[2500:])]
    assert head + tail == expected and len(tail) > 0
    assert (second.duplicates, second.evicted, len(second)) == (whole.duplicates, whole.evicted, len(whole))

    twice = first.dump()
    twice["digests"] = np.concatenate([twice["digests"][:1], twice["digests"][:-1]])
    with pytest.raises(ValueError, match="twice"):
        Deduplicator(horizon_s=300, max_ids=500).load(twice)
    good = first.dump()
    corrupt = [{"ts": good["ts"][:-1]}, {"digests": good["digests"].astype(np.float64)},
               {"digests": good["digests"].view(np.int64)}, {"digests": good["digests"].reshape(-1)},
               {"digests": good["digests"].reshape(-1, 4)}, {"digests": None}, {"clock": None},
               {"clock": float("nan")}, {"duplicates": 2**64}, {"evicted": -1}, {"duplicates": 1.5}]
    for change in corrupt:
        with pytest.raises(ValueError, match="deduplicator state"):
            Deduplicator(horizon_s=300, max_ids=500).load({**good, **change})
    for missing in ("ts", "digests", "clock", "evicted"):
        with pytest.raises(ValueError, match="deduplicator state"):
            Deduplicator(horizon_s=300, max_ids=500).load({k: v for k, v in good.items() if k != missing})
    with pytest.raises(ValueError, match="max_ids"):
        Deduplicator(horizon_s=300, max_ids=5).load(first.dump())
    for too_many in (2**31, 2**63):  # a table of 2^32 slots holds 2^31 ids at most
        with pytest.raises(ValueError, match="max_ids"):
            Deduplicator(max_ids=too_many)
    with pytest.raises(ValueError, match="dedup_max_ids"):
        MonitorConfig(dedup_max_ids=2**31)
    with pytest.raises(UnicodeEncodeError):  # not a crash of the process
        Deduplicator().fresh(["\ud800"], [1.0])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 3000), st.floats(1.0, 1000.0), st.lists(st.integers(1, 900), min_size=1))
def test_any_stream_cap_horizon_and_batching_decide_as_the_reference(seed, max_ids, horizon_s, sizes):
    """Random streams through the compiled table's growth, wrap-around, eviction and rebuilds."""
    ids, times = _stream(3000, seed)
    singly, evicted, held = _one_at_a_time(ids, times, horizon_s, max_ids)
    d, batched, lo = Deduplicator(horizon_s=horizon_s, max_ids=max_ids), [], 0
    for size in itertools.cycle(sizes):
        if lo >= len(ids):
            break
        batched += [lo + p for p in d.fresh(ids[lo:lo + size], times[lo:lo + size])]
        lo += size
    assert batched == singly
    assert (d.evicted, len(d)) == (evicted, len(held))
    assert d.duplicates == len(ids) - len(singly)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 5), st.integers(0, 10_000), st.data())
def test_the_ids_between_two_ring_positions_are_theirs_in_order_wherever_the_ring_wraps(log_size, first, data):
    """A checkpoint takes the ids held as runs of the ring (it wraps at its end): any span of
    at most the ring's size, from any absolute position, gives each position's id in turn."""
    from kernels.seen_ids import Table

    size = 1 << log_size
    table = Table(slots=4, ring=size)
    table.ring_keys[:] = np.arange(2 * size, dtype=np.uint64).reshape(size, 2)
    table.ring_ts[:] = np.arange(size) / 2
    end = first + data.draw(st.integers(0, size))
    keys, ts = table.between(first, end)
    at = [p % size for p in range(first, end)]
    assert keys.tolist() == [table.ring_keys[i].tolist() for i in at] and ts.tolist() == [table.ring_ts[i] for i in at]
    assert keys.shape == (end - first, 2) and keys.dtype == np.uint64 and ts.dtype == np.float64
    keys[:] = 0  # a copy: the ring is not written through it
    assert table.ring_keys.ravel().tolist() == list(range(2 * size))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 700), st.floats(0.5, 500.0), st.booleans(), st.data())
def test_held_ids_read_later_are_those_of_their_moment_however_the_table_moves_on(seed, max_ids, horizon_s,
                                                                                   since_mark, data):
    """A checkpoint leaves the ids it takes in their table and reads them a slice at a time
    while batches go on coming in: whatever comes meanwhile (ids evicted by the cap or
    forgotten with the horizon, event-time gaps of up to days, a ring that wraps many times
    or grows, a table replaced by a load), and however the reads are cut, each column read
    gives exactly what a copy taken at the capture holds, for two captures read in turns.
    Captures never read stop being guarded once let go of."""
    import gc

    rng = random.Random(seed)
    d = Deduplicator(horizon_s=horizon_s, max_ids=max_ids)
    clock, fresh = 0.0, itertools.count(4 * max_ids)

    def batch() -> None:
        nonlocal clock
        n = rng.choice([0, 1, 3, rng.randint(1, max_ids), max_ids, 3 * max_ids])
        # all new ids (a batch then writes as many positions as it has ids), or some repeated
        share = rng.choice([1.0, 0.9, 0.3])
        ids = [f"e{next(fresh) if rng.random() < share else rng.randrange(4 * max_ids)}" for _ in range(n)]
        times = []
        for _ in range(n):
            # mostly within the horizon (the cap evicts), now and then a gap of a horizon or of days
            clock += rng.choices([0.0, rng.random() * horizon_s / max_ids, horizon_s, 3 * 86_400.0], [50, 50, 1, 1])[0]
            times.append(clock - rng.random() * horizon_s / 2)  # some late: the clock does not move
        d.fresh(ids, times)

    for _ in range(rng.randint(0, 4)):
        batch()
    d.mark(d.position())
    for _ in range(rng.randint(0, 3)):
        batch()
    captures = []  # (copy at the capture, held columns): a second taken a batch after the first
    for _ in range(2):
        copy = d.changes() if since_mark else d.dump()
        captures.append((copy, d.changes(held=True) if since_mark else d.dump(held=True)))
        d.dump(held=True)  # a capture never read, let go of at once
        gc.collect()
        batch()
    got = {(i, k): [] for i in range(2) for k in ("digests", "ts")}
    readers = {(i, k): captures[i][1][k].slices(data.draw(st.integers(1, 400), label=f"{k} bytes"))
               for i, k in got}
    while readers:
        step = rng.choices(["read", "batch", "load"], [10, 6, 1])[0]
        if step == "batch":
            batch()
        elif step == "load":
            d.load(d.dump())
        else:  # the columns and captures read in turns, in any order
            at = rng.choice(sorted(readers))
            piece = next(readers[at], None)
            if piece is None:
                del readers[at]
            else:
                got[at].append(piece)
    for (i, k), pieces in got.items():
        copy, held = captures[i]
        assert held[k].shape == copy[k].shape and held[k].dtype == copy[k].dtype
        whole = np.concatenate([*pieces, copy[k][:0]])
        assert whole.dtype == copy[k].dtype and whole.tolist() == copy[k].tolist()
    batch()
    assert d.held == 0  # read whole, or let go of: nothing guarded any more


def test_held_ids_are_copied_aside_only_as_batches_reach_them():
    """The ring keeps room for the cap rounded up to a power of two: while reads keep ahead
    of the batches, a capture copies nothing but the slices it reads; a batch that could
    overwrite unread positions has just those copied aside first, in each column as far as
    it is unread."""
    from kernels.held_ids import HeldIds
    from kernels.seen_ids import Table
    from streams.operators.dedup import digests

    table, first = Table(), digests([f"a{i}" for i in range(1_000)])
    table.take(first, np.arange(1_000.0), 1e9, 1_000)  # a ring of 1,024 slots
    held = HeldIds(table, 0, 1_000)
    keys, ts = held.columns()

    def take(n: int, name: str) -> None:  # the table guards what it holds first
        table.take(digests([f"{name}{i}" for i in range(n)]), np.full(n, 1e4), 1e9, 1_000)

    take(24, "b")  # into the ring's 24 free slots
    assert held.copied == 0
    take(100, "c")  # over the 100 oldest, in both columns
    assert held.copied == 2 * 100
    assert table.bytes_copied_aside == 100 * (16 + 8)  # a digest 16 bytes, a time 8
    times = ts.slices(8 * 150)
    # at most 150 positions a slice: what was copied aside, then the ring
    assert [next(times).tolist(), next(times).tolist()] == [list(range(100)), list(range(100, 250))]
    take(100, "d")  # over the next 100: the times are read past them, the keys not
    assert held.copied == 200 + 100
    assert table.bytes_copied_aside == 100 * (16 + 8) + 100 * 16
    assert keys.array().tolist() == first.tolist()
    assert np.concatenate(list(times)).tolist() == list(range(250, 1_000))
    assert not held.guard(table, 1)  # all read: nothing left to guard


def test_a_ring_that_grows_under_a_capture_leaves_it_whole_and_copies_nothing():
    """A batch that makes the ring grow writes into new arrays: the capture's stay as they
    are, so nothing is copied aside (or counted as copied)."""
    from kernels.held_ids import HeldIds
    from kernels.seen_ids import Table
    from streams.operators.dedup import digests

    table, first = Table(ring=4), digests([f"a{i}" for i in range(4)])
    table.take(first, np.arange(4.0), 1e9, 1_000)  # the ring full
    held = HeldIds(table, 0, 4)
    table.take(digests(["b0", "b1"]), np.full(2, 9.0), 1e9, 1_000)  # it grows to 8 slots
    assert table.ring_ts.shape[0] == 8 and held.copied == 0 and table.bytes_copied_aside == 0
    assert table.held() == 0  # no longer guarded: its arrays are not written again
    keys, ts = held.columns()
    assert keys.array().tolist() == first.tolist() and ts.array().tolist() == [0.0, 1.0, 2.0, 3.0]
