"""Duplicate suppression: an event id counts once within a horizon, in bounded memory."""
from __future__ import annotations

import numpy as np

from kernels import murmur3
from kernels.held_ids import HeldColumn, HeldIds
from kernels.seen_ids import CLOCK, DUPLICATES, EVICTED, HEAD, LIVE, MAX_SLOTS, NEXT_EXPIRY, TAIL, Table


def digests(ids: list[str], prefixes: tuple[bytes, ...] = (b"",), which=None) -> np.ndarray:
    """128-bit MurmurHash3 (x64, seed 0) of each id's UTF-8 bytes after `prefixes[which[i]]`
    (`prefixes[0]` when `which` is None: by default no prefix), as (n, 2) uint64 (:mod:`kernels.murmur3`). Two distinct
    ids share a digest with odds of about n^2 / 2^129; murmur3 is not cryptographic, so
    someone able to write to the input topics, and to predict another producer's event id,
    could craft an id that makes it count as a duplicate. A string no UTF-8 can hold raises
    UnicodeEncodeError."""
    return murmur3.digests_of_str(ids, prefixes, which)


def digests_of_bytes(ids: list[bytes]) -> np.ndarray:
    """:func:`digests` of ids already encoded."""
    return murmur3.digests(ids)


class Deduplicator:
    """Remembers event ids for `horizon_s` of event time, at most `max_ids` of them.

    Ids are forgotten oldest-inserted first when the horizon passes or the cap is hit
    (then `evicted` counts them: a duplicate arriving after that is counted
    again, the price of bounded memory). Deterministic: depends only on the
    order of the ids and their event times. Ids are held as 128-bit digests
    (:func:`digests`) in a compiled table (:mod:`kernels.seen_ids`): under 120 bytes an id.

    The ids are a queue (taken in at the back, forgotten at the front), so what changed
    since a `mark` is how many left the front and which joined the back: `changes` gives
    that, and `apply` takes it on top of the state of the mark.

    >>> d = Deduplicator(horizon_s=60, max_ids=10)
    >>> [d.first_time(e, ts) for e, ts in [("a", 0), ("b", 1), ("a", 2), ("a", 100)]]
    [True, True, False, True]
    >>> d.fresh(["a", "c", "c"], [101, 102, 103])  # a batch at once: positions seen first
    [1]
    """

    def __init__(self, horizon_s: float = 86_400.0, max_ids: int = 2_000_000) -> None:
        if not horizon_s > 0 or not 1 <= max_ids < MAX_SLOTS // 2:  # its table holds twice its ids' slots
            raise ValueError("horizon_s must be > 0 and max_ids in [1, 2^31)")
        self.horizon_s = float(horizon_s)
        self.max_ids = int(max_ids)
        self._table = Table()
        self._mark = (0, 0)

    @property
    def duplicates(self) -> int:
        return int(self._table.meta[DUPLICATES])

    @property
    def evicted(self) -> int:
        return int(self._table.meta[EVICTED])

    @property
    def held(self) -> int:
        """Captures of ids (`dump` or `changes` with `held`) still guarded: not yet read, nor let go of."""
        return self._table.held()

    @property
    def nbytes(self) -> int:
        """Bytes the remembered ids take (the table's arrays)."""
        return self._table.nbytes

    @property
    def bytes_copied_aside(self) -> int:
        """Bytes of held ids copied aside so far, before batches overwrote them unread: none
        while checkpoints are read faster than the ring wraps (:mod:`kernels.held_ids`)."""
        return self._table.bytes_copied_aside

    def first_time(self, event_id: str, ts: float) -> bool:
        """True the first time `event_id` is seen within the horizon."""
        return bool(self.fresh([event_id], [ts]))

    def fresh(self, ids: list[str], times: list[float], prefixes: tuple[bytes, ...] = (b"",),
              which=None) -> list[int]:
        """Positions of the ids seen for the first time within the horizon, in order: what
        `first_time` says of each, in one call. An id is `prefixes[which[i]] + ids[i]` (ids of
        different kinds kept apart without building the strings); `prefixes[0] + ids[i]` when
        `which` is None, by default the id alone. ValueError unless `which` names a prefix
        for each id."""
        return self.fresh_positions(ids, times, prefixes, which).tolist()

    def fresh_positions(self, ids: list[str], times, prefixes: tuple[bytes, ...] = (b"",),
                        which=None) -> np.ndarray:
        """:meth:`fresh` as an int64 array."""
        if len(ids) != len(times):
            raise ValueError("ids and times differ in length")
        if not len(ids):
            return np.zeros(0, np.int64)
        return self._table.take(digests(ids, prefixes, which), np.asarray(times, np.float64), self.horizon_s,
                                self.max_ids)

    def __len__(self) -> int:
        return int(self._table.meta[LIVE])

    def dump(self, held: bool = False) -> dict:
        """Plain values and arrays (for a checkpoint) from which `load` rebuilds this exact state.
        With `held`, the ids are `HeldColumn`s instead, read from the table only as they are
        written out (:mod:`kernels.held_ids`), while ids go on being taken in."""
        head, tail = self.position()
        keys, ts = self._ids(head, tail, held)
        return {"digests": keys, "ts": ts, **self._scalars()}

    def load(self, state: dict) -> None:
        """Take the state `dump` gave (on a new instance with the same horizon and cap), and
        mark it. ValueError if the state is not one `dump` could have given."""
        try:
            keys, ts, counters, times = _checked(state)
        except (KeyError, TypeError, UnicodeEncodeError, OverflowError) as e:
            raise ValueError(f"deduplicator state: {e!r}") from e
        if len(keys) > self.max_ids:
            raise ValueError("deduplicator state: more ids than max_ids")
        try:
            self._table = Table.holding(keys, ts, counters, times)
        except ValueError as e:
            raise ValueError(f"deduplicator state: {e}") from e
        self._mark = self.position()

    def position(self) -> tuple[int, int]:
        """Where the queue of ids stands: (front, back), counted since the last load."""
        return int(self._table.meta[HEAD]), int(self._table.meta[TAIL])

    def mark(self, position: tuple[int, int]) -> None:
        """`changes` from now on are those since `position` (one `position` gave)."""
        self._mark = position

    def changes(self, held: bool = False) -> dict:
        """What changed since the mark, for `apply`: how many of the ids held then were
        forgotten, the ids taken in since that are still held (`HeldColumn`s with `held`, as
        in `dump`), and the scalars."""
        (head, tail), (marked_head, marked_tail) = self.position(), self._mark
        keys, ts = self._ids(max(head, marked_tail), tail, held)
        return {"drop": min(head, marked_tail) - marked_head, "digests": keys, "ts": ts,
                **self._scalars()}

    def _ids(self, first: int, end: int, held: bool) -> tuple[np.ndarray | HeldColumn, np.ndarray | HeldColumn]:
        """The ids at the queue's positions [first, end): copied, or `held` in the table."""
        if not held:
            return self._table.between(first, end)
        return HeldIds(self._table, first, end).columns()

    def apply(self, delta: dict) -> None:
        """Take `changes` on top of the state they were taken against (a load, then the
        deltas in order), and mark the result. ValueError if they cannot be its changes."""
        keys, ts = self._table.in_order()
        drop = delta.get("drop") if isinstance(delta, dict) else None
        if not (type(drop) is int and 0 <= drop <= len(keys)):
            raise ValueError(f"deduplicator delta: cannot drop {drop!r} of {len(keys)} ids")
        try:
            new_keys, new_ts = delta["digests"], delta["ts"]
            keys = np.concatenate([keys[drop:], new_keys])
            ts = np.concatenate([ts[drop:], np.asarray(new_ts, np.float64)])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"deduplicator delta: {e!r}") from e
        self.load({**delta, "digests": keys, "ts": ts})

    def _scalars(self) -> dict:
        t = self._table
        return {"clock": float(t.times[CLOCK]), "next_expiry": float(t.times[NEXT_EXPIRY]),
                "duplicates": self.duplicates, "evicted": self.evicted}


def _checked(state: dict) -> tuple[np.ndarray, np.ndarray, tuple[int, int], tuple[float, float]]:
    """(digests, times, (duplicates, evicted), (clock, next_expiry)) of a dumped state, checked."""
    keys = state["digests"]
    if not (isinstance(keys, np.ndarray) and keys.dtype == np.uint64 and keys.ndim == 2 and keys.shape[1] == 2):
        raise ValueError("deduplicator state: digests must be an (n, 2) array of uint64")
    ts = state["ts"]
    ts = np.asarray(ts, np.float64) if isinstance(ts, list) else ts
    if not (isinstance(ts, np.ndarray) and ts.dtype == np.float64 and ts.shape == (len(keys),)):
        raise ValueError("deduplicator state: ts must be one float per id")
    counters = state["duplicates"], state["evicted"]
    if not all(type(c) is int and 0 <= c < 2**63 for c in counters):
        raise ValueError("deduplicator state: counters must be non-negative integers")
    times = float(state["clock"]), float(state["next_expiry"])
    if any(np.isnan(times)):
        raise ValueError("deduplicator state: clock is not a number")
    return keys, ts, counters, times
