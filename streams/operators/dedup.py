"""Duplicate suppression: an event id counts once within a horizon, in bounded memory."""
from __future__ import annotations

import mmh3
import numpy as np

from kernels.seen_ids import CLOCK, DUPLICATES, EVICTED, LIVE, NEXT_EXPIRY, Table


def digests(ids: list[str]) -> np.ndarray:
    """128-bit MurmurHash3 (x64) of each id's UTF-8 bytes, as (n, 2) uint64. Two distinct ids
    share a digest with odds of about n^2 / 2^129; murmur3 is not cryptographic, so someone
    able to write to the input topics, and to predict another producer's event id, could craft
    an id that makes it count as a duplicate. Ids are encoded here, not by mmh3: a string no
    UTF-8 can hold then raises UnicodeEncodeError (mmh3 5.3 crashed the process on one)."""
    return np.frombuffer(b"".join(map(mmh3.hash_bytes, map(str.encode, ids))), "<u8").reshape(-1, 2)


class Deduplicator:
    """Remembers event ids for `horizon_s` of event time, at most `max_ids` of them.

    Ids are forgotten oldest-inserted first when the horizon passes or the cap is hit
    (then `evicted` counts them: a duplicate arriving after that is counted
    again, the price of bounded memory). Deterministic: depends only on the
    order of the ids and their event times. Ids are held as 128-bit digests
    (:func:`digests`) in a compiled table (:mod:`kernels.seen_ids`): under 120 bytes an id.

    >>> d = Deduplicator(horizon_s=60, max_ids=10)
    >>> [d.first_time(e, ts) for e, ts in [("a", 0), ("b", 1), ("a", 2), ("a", 100)]]
    [True, True, False, True]
    >>> d.fresh(["a", "c", "c"], [101, 102, 103])  # a batch at once: positions seen first
    [1]
    """

    def __init__(self, horizon_s: float = 86_400.0, max_ids: int = 2_000_000) -> None:
        if not horizon_s > 0 or not 1 <= max_ids < 2**40:
            raise ValueError("horizon_s must be > 0 and max_ids in [1, 2^40)")
        self.horizon_s = float(horizon_s)
        self.max_ids = int(max_ids)
        self._table = Table()

    @property
    def duplicates(self) -> int:
        return int(self._table.meta[DUPLICATES])

    @property
    def evicted(self) -> int:
        return int(self._table.meta[EVICTED])

    @property
    def nbytes(self) -> int:
        """Bytes the remembered ids take (the table's arrays)."""
        return self._table.nbytes

    def first_time(self, event_id: str, ts: float) -> bool:
        """True the first time `event_id` is seen within the horizon."""
        return bool(self.fresh([event_id], [ts]))

    def fresh(self, ids: list[str], times: list[float]) -> list[int]:
        """Positions of the ids seen for the first time within the horizon, in order: what
        `first_time` says of each, in one call."""
        if len(ids) != len(times):
            raise ValueError("ids and times differ in length")
        if not ids:
            return []
        return self._table.take(digests(ids), np.asarray(times, np.float64), self.horizon_s, self.max_ids).tolist()

    def __len__(self) -> int:
        return int(self._table.meta[LIVE])

    def dump(self) -> dict:
        """Plain values and arrays (for a checkpoint) from which `load` rebuilds this exact state."""
        t = self._table
        keys, ts = t.in_order()
        return {"digests": keys, "ts": ts, "clock": float(t.times[CLOCK]), "next_expiry": float(t.times[NEXT_EXPIRY]),
                "duplicates": self.duplicates, "evicted": self.evicted}

    def load(self, state: dict) -> None:
        """Take the state `dump` gave (on a new instance with the same horizon and cap).
        ValueError if the state is not one `dump` could have given."""
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
