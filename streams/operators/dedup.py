"""Duplicate suppression: an event id counts once within a horizon, in bounded memory."""
from __future__ import annotations

from collections import deque
from itertools import filterfalse

import numpy as np


class Deduplicator:
    """Remembers event ids for `horizon_s` of event time, at most `max_ids` of them.

    Ids are forgotten oldest-inserted first when the horizon passes or the cap is hit
    (then `evicted` counts them: a duplicate arriving after that is counted
    again, the price of bounded memory). Deterministic: depends only on the
    order of the ids and their event times.

    >>> d = Deduplicator(horizon_s=60, max_ids=10)
    >>> [d.first_time(e, ts) for e, ts in [("a", 0), ("b", 1), ("a", 2), ("a", 100)]]
    [True, True, False, True]
    >>> d.fresh(["a", "c", "c"], [101, 102, 103])  # a batch at once: positions seen first
    [1]
    """

    def __init__(self, horizon_s: float = 86_400.0, max_ids: int = 2_000_000) -> None:
        if horizon_s <= 0 or max_ids < 1:
            raise ValueError("horizon_s must be > 0 and max_ids >= 1")
        self.horizon_s = horizon_s
        self.max_ids = max_ids
        self._seen: dict[str, float] = {}
        self._order: deque[str] = deque()  # insertion order, for O(1) forgetting of the oldest
        self._clock = float("-inf")
        self._next_expiry = float("-inf")
        self.duplicates = 0
        self.evicted = 0

    def first_time(self, event_id: str, ts: float) -> bool:
        """True the first time `event_id` is seen within the horizon."""
        return bool(self.fresh([event_id], [ts]))

    def fresh(self, ids: list[str], times: list[float]) -> list[int]:
        """Positions of the ids seen for the first time within the horizon, in order: what
        `first_time` says of each, in one call. Between the points where the horizon moves
        (every 1% of it) and below the cap, a run of ids is checked with set operations."""
        out: list[int] = []
        start, n = 0, len(ids)
        # every event taken so far is below the next expiry point (one that reached it moved
        # it beyond itself), so the end of a run is a binary search in the running maximum
        running_max = np.maximum.accumulate(np.asarray(times, dtype=np.float64)) if n else None
        while start < n:
            end = max(start, int(np.searchsorted(running_max, self._next_expiry, side="left")))
            if end > start and len(self._seen) + (end - start) <= self.max_ids:
                out += self._fresh_run(ids, times, start, end, float(running_max[end - 1]))
            else:
                end = max(end, start + 1)
                out += self._fresh_one_by_one(ids, times, start, end)
            start = end
        return out

    def _fresh_run(self, ids: list[str], times: list[float], start: int, end: int, latest: float) -> list[int]:
        run = ids[start:end]
        first = dict(zip(reversed(run), range(end - 1, start - 1, -1)))  # id -> its first position
        # not `first.keys() - seen.keys()`: that walks all of `seen` (millions of ids) every time
        positions = sorted(map(first.__getitem__, filterfalse(self._seen.__contains__, first)))
        fresh_ids = list(map(ids.__getitem__, positions))
        self._seen.update(zip(fresh_ids, map(times.__getitem__, positions)))
        self._order.extend(fresh_ids)
        self._clock = max(self._clock, latest)  # the batch's running maximum at the run's end
        self.duplicates += (end - start) - len(positions)
        return positions

    def _fresh_one_by_one(self, ids: list[str], times: list[float], start: int, end: int) -> list[int]:
        seen, order, out = self._seen, self._order, []
        for pos in range(start, end):
            event_id, ts = ids[pos], times[pos]
            if ts > self._clock:
                self._clock = ts
                if ts >= self._next_expiry:  # expire in steps of 1% of the horizon, not per event
                    self._expire()
                    self._next_expiry = ts + self.horizon_s / 100.0
            if event_id in seen:
                self.duplicates += 1
                continue
            seen[event_id] = ts
            order.append(event_id)
            if len(seen) > self.max_ids:
                del seen[order.popleft()]
                self.evicted += 1
            out.append(pos)
        return out

    def _expire(self) -> None:
        cutoff = self._clock - self.horizon_s
        seen, order = self._seen, self._order
        while order and seen[order[0]] < cutoff:
            del seen[order.popleft()]

    def __len__(self) -> int:
        return len(self._seen)

    def dump(self) -> dict:
        """Plain values (for a checkpoint) from which `load` rebuilds this exact state."""
        return {"ids": list(self._order), "ts": [self._seen[i] for i in self._order], "clock": self._clock,
                "next_expiry": self._next_expiry, "duplicates": self.duplicates, "evicted": self.evicted}

    def load(self, state: dict) -> None:
        """Take the state `dump` gave (on a new instance with the same horizon and cap)."""
        if len(state["ids"]) != len(state["ts"]) or len(state["ids"]) > self.max_ids:
            raise ValueError("deduplicator state: ids and times differ in length or exceed max_ids")
        self._order = deque(state["ids"])
        self._seen = dict(zip(state["ids"], state["ts"]))
        self._clock, self._next_expiry = float(state["clock"]), float(state["next_expiry"])
        self.duplicates, self.evicted = int(state["duplicates"]), int(state["evicted"])
