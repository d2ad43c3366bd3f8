"""Event-time windows in Kafka Streams' terms: tumbling panes, hopping windows, grace.

A partition keeps one state row per (key, open pane) and one "late" row per
key. Its watermark is the largest event time it has seen minus the grace
period; a pane closes when the watermark passes its end, and is handed on as
a partial (key, pane, row). Events whose pane has closed are late: they go
to the key's late row, which reaches only the cumulative view. Hopping
windows are sums of consecutive panes, built downstream by the aggregator.

Everything depends only on the order of events within the partition, never
on how that order is cut into batches, so replays give the same partials.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from kernels.batch import apply
from kernels.layout import StateLayout
from streams.operators.records import Records


#: The pane index a drained partition reports as closed: every pane before it is final.
END_OF_INPUT = 2**62


@dataclass(frozen=True)
class WindowSpec:
    """Tumbling pane size, hopping window size and advance, grace (allowed lateness), seconds.

    The hopping size and advance must be whole numbers of panes. Panes and early-result
    ticks are at least `MIN_STEP_S`, so every accepted event time has a pane number far
    inside int64, and grace spans at most `MAX_OPEN_PANES` panes, the ring a partition
    keeps open per key.
    """

    MIN_STEP_S: ClassVar[float] = 1.0
    MAX_OPEN_PANES: ClassVar[int] = 10_000

    tumbling_s: float = 300.0
    hopping_s: float = 3600.0
    advance_s: float = 300.0
    grace_s: float = 120.0
    early_s: float = 60.0

    def __post_init__(self) -> None:
        if not (self.tumbling_s >= self.MIN_STEP_S and self.early_s >= self.MIN_STEP_S and self.grace_s >= 0):
            raise ValueError(f"tumbling_s and early_s must be >= {self.MIN_STEP_S} s, grace_s >= 0")
        if not all(map(math.isfinite, (self.tumbling_s, self.hopping_s, self.advance_s, self.grace_s, self.early_s))):
            raise ValueError("window sizes must be finite")
        if self.open_panes > self.MAX_OPEN_PANES:
            raise ValueError(f"grace_s spans {self.open_panes} panes of tumbling_s; at most {self.MAX_OPEN_PANES}")
        for name in ("hopping_s", "advance_s"):
            ratio = getattr(self, name) / self.tumbling_s
            if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
                raise ValueError(f"{name} must be a whole number (>= 1) of tumbling_s panes")
        if self.advance_s > self.hopping_s:
            raise ValueError("advance_s must not exceed hopping_s")

    @property
    def hop_panes(self) -> int:
        return round(self.hopping_s / self.tumbling_s)

    @property
    def advance_panes(self) -> int:
        return round(self.advance_s / self.tumbling_s)

    @property
    def open_panes(self) -> int:
        """Panes a partition may hold open at once: the watermark's pane up to the newest."""
        return math.ceil(self.grace_s / self.tumbling_s) + 2


@dataclass
class Partials:
    """Rows handed on by a partition: closed panes (pane >= 0), late rows (pane = -1),
    or early snapshots of open panes (early = True), with the keys they belong to; or, with
    `idle`, word that the partition has had nothing to read for a while (no rows)."""

    keys: list[tuple[str, str]]
    panes: np.ndarray
    rows: np.ndarray
    early: bool = False
    closed_through: int = 0  # panes with index < this are closed in the partition
    idle: bool = False

    @classmethod
    def empty(cls, width: int, closed_through: int, idle: bool = False) -> "Partials":
        """No rows: progress alone, or (`idle`) word that the partition is idle."""
        return cls([], np.empty(0, np.int64), np.empty((0, width)), closed_through=closed_through, idle=idle)


@dataclass
class KeyIndex:
    """Dense integer ids for (policy_id, segment) keys, in order of first appearance."""

    keys: list[tuple[str, str]] = field(default_factory=list)
    ids: dict[tuple[str, str], int] = field(default_factory=dict)

    def id(self, key: tuple[str, str]) -> int:
        i = self.ids.get(key)
        if i is None:
            i = self.ids[key] = len(self.keys)
            self.keys.append(key)
        return i

    def ids_of(self, policy_ids: list[str], segments: list[str]) -> np.ndarray:
        """`id` of each key (policy_ids[i], segments[i]). Keys are few and long-lived, so nearly
        always all known already; then `zip` hands the lookup one tuple it reuses, not a new
        one a key."""
        ids = list(map(self.ids.get, zip(policy_ids, segments)))
        if None in ids:
            ids = list(map(self.id, zip(policy_ids, segments)))
        return np.array(ids, dtype=np.int64)


class PartitionWindows:
    """Window assignment and kernel state of one input partition."""

    def __init__(self, spec: WindowSpec, layout: StateLayout, initial_keys: int = 64) -> None:
        self.spec, self.layout = spec, layout
        self.keys = KeyIndex()
        self.stride = spec.open_panes + 1  # open panes, then the late row
        self.state = layout.zeros(initial_keys * self.stride)
        self.max_ts = -math.inf
        self.closed = None  # panes with index < closed are closed; None before the first event
        self.ticks = None  # early-result ticks passed, in units of early_s
        self.late_events = 0

    def _ensure(self, n_keys: int) -> None:
        need = n_keys * self.stride
        if need > self.state.shape[0]:
            grown = self.layout.zeros(max(need, 2 * self.state.shape[0]))
            grown[: self.state.shape[0]] = self.state
            self.state = grown

    def process(self, records: Records) -> list[Partials]:
        """Add one batch of records (arrival order); return closed panes and early snapshots."""
        if not len(records):
            return []
        ids = self.keys.ids_of(records.policy_id, records.segment)
        self._ensure(len(self.keys.keys))
        ts = records.ts
        pane_s, grace, early_s = self.spec.tumbling_s, self.spec.grace_s, self.spec.early_s
        if self.closed is None:
            self.closed = math.floor((ts[0] - grace) / pane_s)
            self.ticks = math.floor((ts[0] - grace) / early_s)
        wm = np.maximum.accumulate(np.maximum(ts, self.max_ts)) - grace
        closed_after = np.maximum(np.floor(wm / pane_s).astype(np.int64), self.closed)
        ticks_after = np.maximum(np.floor(wm / early_s).astype(np.int64), self.ticks)
        out: list[Partials] = []
        start, n = 0, len(ts)
        while start < n:
            # Events up to the next one that moves the watermark past a pane end or an
            # early-result tick are judged against the watermark as it stands. That event
            # goes into the next segment, after the close: its own pane may reuse the ring
            # slot of a pane it closes.
            c0, t0 = self.closed, self.ticks
            change = np.flatnonzero((closed_after[start:] > c0) | (ticks_after[start:] > t0))
            end = start + int(change[0]) if len(change) else n
            if end > start:
                self._add(records, ids, start, end, c0)
            if end == n:
                break
            new_closed, new_ticks = int(closed_after[end]), int(ticks_after[end])
            if new_closed > c0:
                out.extend(self._close(c0, new_closed))
            else:
                out.append(self._early(c0))
            self.closed, self.ticks = new_closed, new_ticks
            start = end
        return out

    def _add(self, records: Records, ids: np.ndarray, start: int, end: int, closed: int) -> None:
        """Records [start, end) into their open panes, or the late row where their pane is closed."""
        ts = records.ts[start:end]
        panes = np.floor(ts / self.spec.tumbling_s).astype(np.int64)
        late = panes < closed
        self.late_events += int(late.sum())
        ring = self.stride - 1
        slot = ids[start:end] * self.stride + np.where(late, ring, panes % ring)
        apply(self.state, *records.split(start, end, slot, self.spec.tumbling_s))
        self.max_ts = max(self.max_ts, float(ts.max()))

    def dump(self) -> dict:
        """Plain values and arrays (for a checkpoint) from which `load` rebuilds this state: a
        copy, since the worker goes on processing before it encodes a checkpoint."""
        return {"keys": [list(k) for k in self.keys.keys], "state": self.state[: len(self.keys.keys) * self.stride].copy(),
                "max_ts": self.max_ts, "closed": self.closed, "ticks": self.ticks, "late_events": self.late_events}

    def load(self, state: dict) -> None:
        """Take the state `dump` gave (on a new instance with the same spec and layout)."""
        for key in state["keys"]:
            self.keys.id(tuple(key))
        rows = state["state"]
        if rows.shape != (len(self.keys.keys) * self.stride, self.layout.width):
            raise ValueError(f"window state: {rows.shape} rows do not fit {len(self.keys.keys)} keys")
        self._ensure(len(self.keys.keys))
        self.state[: len(rows)] = rows
        self.max_ts, self.closed, self.ticks = float(state["max_ts"]), state["closed"], state["ticks"]
        self.late_events = int(state["late_events"])

    def drain(self) -> list[Partials]:
        """End of input: the watermark reaches infinity, so every pane closes (a partition
        that saw no event says so too, or it would hold the others' windows open)."""
        if self.closed is None:
            self.closed = END_OF_INPUT
            return [Partials.empty(self.layout.width, END_OF_INPUT)]
        out = self._close(self.closed, END_OF_INPUT)
        self.closed = END_OF_INPUT
        return out

    def _rows_with_data(self, rows: np.ndarray) -> np.ndarray:
        return rows[self.state[rows].any(axis=1)]

    def _emit(self, rows: np.ndarray, panes: np.ndarray, closed_through: int, early: bool = False) -> Partials:
        keys = [self.keys.keys[r // self.stride] for r in rows]
        return Partials(keys, panes, self.state[rows].copy(), early=early, closed_through=closed_through)

    def _close(self, first: int, last: int) -> list[Partials]:
        """Hand on the late rows, then close panes [first, last) in order.

        Only the ring's panes can hold data (at most `stride - 1` consecutive ones from
        `first`); the panes after them are empty and close together, so a gap of days or
        years in event time costs no more than one of minutes.
        """
        n_keys = len(self.keys.keys)
        base = np.arange(n_keys, dtype=np.int64) * self.stride
        out = []
        late_rows = self._rows_with_data(base + self.stride - 1)
        if len(late_rows):
            out.append(self._emit(late_rows, np.full(len(late_rows), -1, np.int64), first))
            self.state[late_rows] = 0.0
        for pane in range(first, min(last, first + self.stride - 1)):
            rows = self._rows_with_data(base + pane % (self.stride - 1))
            if len(rows):
                out.append(self._emit(rows, np.full(len(rows), pane, np.int64), pane + 1))
                self.state[rows] = 0.0
        if not out or out[-1].closed_through != last:
            out.append(Partials.empty(self.layout.width, last))
        return out

    def _early(self, closed: int) -> Partials:
        """Snapshot of every open pane with data, for mid-window (fast-path) rules."""
        n_keys = len(self.keys.keys)
        rows = np.concatenate([np.arange(n_keys, dtype=np.int64) * self.stride + j for j in range(self.stride - 1)])
        rows = self._rows_with_data(np.sort(rows))
        panes = np.array([self._pane_of(r) for r in rows], dtype=np.int64)
        return self._emit(rows, panes, closed, early=True)

    def _pane_of(self, row: int) -> int:
        """The open pane stored in ring position row % stride (open panes are consecutive)."""
        pos = row % self.stride
        ring = self.stride - 1
        return self.closed + (pos - self.closed) % ring

