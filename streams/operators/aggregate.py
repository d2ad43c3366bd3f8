"""Merge partition partials into final windows: tumbling, hopping and cumulative.

A pane is final once every input partition's watermark has passed it. The
aggregator keeps the merged panes per key in a ring: the last hopping window's
worth of final panes plus every pane not yet final (the ring grows when one
input partition runs ahead of another), and one cumulative row per key. Partials are summed, so the
result does not depend on how keys' events were spread over partitions.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from kernels.derive import derive
from kernels.layout import N_DEC, N_FB, StateLayout
from kernels.params import StatsParams
from streams.operators.windows import KeyIndex, Partials, WindowSpec


class DerivedWhenRead(Mapping):
    """Statistics derived by `derive()` the first time any is read, once."""

    def __init__(self, derive: Callable[[], dict]) -> None:
        self._derive, self._stats = derive, None

    def _get(self) -> dict:
        if self._stats is None:
            self._stats, self._derive = self._derive(), None
        return self._stats

    def __getitem__(self, name: str) -> np.ndarray:
        return self._get()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


@dataclass
class WindowResult:
    """Statistics of one window kind for the keys that had data in it."""

    kind: str  # "tumbling" | "hopping" | "cumulative" | "early"
    start: float
    end: float
    keys: list
    rows: np.ndarray
    stats: Mapping  # derived when first read for an input partition's early snapshot (`Aggregator._early`)
    pane: int
    panes: np.ndarray | None = None  # early results: the open pane of each row
    halves: np.ndarray | None = None  # hopping: rows of its even and of its odd panes, (keys, 2, width)


class Aggregator:
    def __init__(self, spec: WindowSpec, layout: StateLayout, params: StatsParams, partitions: int = 1):
        self.spec, self.layout, self.params = spec, layout, params
        self.partitions = partitions
        self.keys = KeyIndex()
        self.ring_len = spec.hop_panes + spec.open_panes + 1
        self.max_ring_len = 2 * self.ring_len
        self._ahead: dict[int, list] = {}  # pane -> [(key ids, rows)] too far ahead for the ring
        self.ring = layout.zeros(0)
        self.ring_pane = np.zeros(0, np.int64)
        self.cum = layout.zeros(0)
        self.late_events = np.zeros(0)  # per key: events that reached only the cumulative view
        self.closed_through: dict[int, int] = {}
        self.idle: set[int] = set()  # partitions that said they are idle: they hold no window open
        self.final_through: int | None = None
        self.first_pane: int | None = None
        self.thresholds: dict[tuple[str, str], float] = {}  # threshold in force, where one was set
        self._late_keys: set[int] = set()  # keys whose cumulative row took late data since last emitted
        self._late_pending: dict[int, list] = {}  # pane -> late rows to fold in when it becomes final

    def _ensure(self, n_keys: int) -> None:
        if n_keys <= self.cum.shape[0]:
            return
        cap = max(n_keys, 2 * self.cum.shape[0], 16)
        ring, cum = self.layout.zeros(cap * self.ring_len), self.layout.zeros(cap)
        ring[: self.ring.shape[0]], cum[: self.cum.shape[0]] = self.ring, self.cum
        ring_pane = np.full(cap * self.ring_len, np.iinfo(np.int64).min)
        ring_pane[: self.ring_pane.shape[0]] = self.ring_pane
        late_events = np.zeros(cap)
        late_events[: self.late_events.shape[0]] = self.late_events
        self.ring, self.cum, self.ring_pane, self.late_events = ring, cum, ring_pane, late_events

    def add(self, partition: int, partials: Partials) -> list[WindowResult]:
        """Fold one partition's partials in; return the windows that became final.

        An idle partition is left out of the watermark until it sends rows again; what it
        then sends for panes already final counts as late (the cumulative view)."""
        if partials.early:
            return [self._early(partials)]
        if partials.idle:
            self.idle.add(partition)
            return self._advance()
        self.idle.discard(partition)
        ids = np.array([self.keys.id(k) for k in partials.keys], dtype=np.int64)
        self._ensure(len(self.keys.keys))
        late = partials.panes < 0
        if self.final_through is not None:
            late |= partials.panes < self.final_through  # only after an idle spell
        if late.any():
            # late rows count from the pane at which their partition handed them on, so the
            # cumulative view does not depend on how partitions' messages interleave
            at = partials.closed_through
            if self.final_through is not None and at < self.final_through:
                self._apply_late(ids[late], partials.rows[late])
            else:
                self._late_pending.setdefault(at, []).append((ids[late], partials.rows[late]))
        on_time = ~late
        if on_time.any():
            lowest = int(partials.panes[on_time].min())
            self.first_pane = lowest if self.first_pane is None else min(self.first_pane, lowest)
            oldest_kept = self.final_through if self.final_through is not None else self.first_pane
            low = oldest_kept - self.spec.hop_panes
            self._set_aside(low + self.max_ring_len)
            ahead = on_time & (partials.panes >= low + self.max_ring_len)
            for pane in np.unique(partials.panes[ahead]).tolist():
                at = partials.panes == pane
                self._ahead.setdefault(pane, []).append((ids[at], partials.rows[at]))
            on_time &= ~ahead
            if on_time.any():
                self._fit(low, int(partials.panes[on_time].max()))
        self._put(ids[on_time], partials.panes[on_time], partials.rows[on_time])
        previous = self.closed_through.get(partition)
        self.closed_through[partition] = max(partials.closed_through, previous if previous is not None else -2**62)
        return self._advance()

    def _advance(self) -> list[WindowResult]:
        """Finalise the panes every partition not idle has closed."""
        active = [c for p, c in self.closed_through.items() if p not in self.idle]
        if len(self.closed_through.keys() | self.idle) < self.partitions or not active:
            return []
        final = min(active)
        if self.final_through is None:
            starts = [final, *self._late_pending] + ([self.first_pane] if self.first_pane is not None else [])
            self.final_through = min(starts)
        ready: list[tuple] = []
        pane = self.final_through
        while pane < final:
            self._admit(pane)
            self._finalise(pane, ready)
            pane = self._next_to_finalise(pane + 1, final)
        self.final_through = max(self.final_through, final)
        return self._results(ready)

    def _next_to_finalise(self, pane: int, final: int) -> int:
        """`pane`, or the first later pane whose finalising can emit something.

        A pane emits a tumbling window if it has data, a cumulative view if late rows
        wait for it, and a hopping window if one of the `hop_panes` before it has data.
        After a gap in event time the panes in between emit nothing and are skipped,
        so a jump of years costs what a jump of one pane does.
        """
        held = self.ring_pane[self.ring_pane >= pane - self.spec.hop_panes + 1]
        if len(held) and int(held.min()) < pane or self._late_keys:
            return pane  # a hopping window ending here still covers data, or late rows wait
        later = [int(held.min())] if len(held) else []
        later += [p for p in self._late_pending if p >= pane] + list(self._ahead)
        return max(pane, min([final, *later]))

    def dump(self) -> dict:
        """Plain values and arrays (for a checkpoint) from which `load` rebuilds this state
        (thresholds excepted: they come from Redis)."""
        return {"keys": [list(k) for k in self.keys.keys], "ring_len": self.ring_len, "ring": self.ring,
                "ring_pane": self.ring_pane, "cum": self.cum, "late_events": self.late_events,
                "closed_through": [[p, c] for p, c in self.closed_through.items()], "idle": sorted(self.idle),
                "final_through": self.final_through, "first_pane": self.first_pane,
                "late_keys": sorted(self._late_keys),
                "late_pending": [[pane, [[ids, rows] for ids, rows in parts]]
                                 for pane, parts in self._late_pending.items()],
                "ahead": [[pane, [[ids, rows] for ids, rows in parts]] for pane, parts in self._ahead.items()]}

    def load(self, state: dict) -> None:
        """Take the state `dump` gave (on a new instance with the same spec and layout)."""
        for key in state["keys"]:
            self.keys.id(tuple(key))
        ring_len, cap = int(state["ring_len"]), state["cum"].shape[0]
        if (state["ring"].shape != (cap * ring_len, self.layout.width) or state["ring_pane"].shape != (cap * ring_len,)
                or state["late_events"].shape != (cap,) or cap < len(self.keys.keys) or ring_len < 1):
            raise ValueError("aggregator state: array shapes do not agree")
        self.ring_len, self.ring, self.ring_pane = ring_len, state["ring"], state["ring_pane"]
        self.cum, self.late_events = state["cum"], state["late_events"]
        self.closed_through = {int(p): int(c) for p, c in state["closed_through"]}
        self.idle = {int(p) for p in state["idle"]}
        self.final_through, self.first_pane = state["final_through"], state["first_pane"]
        self._late_keys = set(state["late_keys"])
        self._late_pending = {int(pane): [(ids, rows) for ids, rows in parts] for pane, parts in state["late_pending"]}
        self._ahead = {int(pane): [(ids, rows) for ids, rows in parts] for pane, parts in state["ahead"]}

    def _put(self, ids: np.ndarray, panes: np.ndarray, rows: np.ndarray) -> None:
        """Add pane rows into the ring (the ring has a slot for each of these panes)."""
        slots = ids * self.ring_len + panes % self.ring_len
        stale = self.ring_pane[slots] != panes
        self.ring[slots[stale]] = 0.0
        self.ring_pane[slots] = panes
        np.add.at(self.ring, slots, rows)

    def _admit(self, pane: int) -> None:
        """Move panes held aside into the ring once they are within its reach of `pane`.

        A partition far ahead of the others (a backfill, a jump in event time) would
        otherwise stretch the ring over every pane in between, for every key.
        """
        low = pane + 1 - self.spec.hop_panes
        near = sorted(p for p in self._ahead if p < low + self.max_ring_len)
        for p in near:
            for ids, rows in self._ahead.pop(p):
                self._fit(low, p)
                self._put(ids, np.full(len(ids), p, np.int64), rows)

    def _set_aside(self, reach: int) -> None:
        """Move panes from `reach` on out of the ring: before any pane is final, a partition
        starting earlier than the others lowers the ring's oldest pane, and a pane it already
        held that far ahead would share a slot with an older one."""
        slots = np.flatnonzero(self.ring_pane >= reach)
        for pane in np.unique(self.ring_pane[slots]).tolist():
            at = slots[self.ring_pane[slots] == pane]
            self._ahead.setdefault(pane, []).append((at // self.ring_len, self.ring[at].copy()))
        self.ring[slots] = 0.0
        self.ring_pane[slots] = np.iinfo(np.int64).min

    def _fit(self, low: int, high: int) -> None:
        """Grow the ring so that panes low..high, and every pane it holds from low on, have a
        slot each (none overwrites another)."""
        held = self.ring_pane[self.ring_pane >= low]
        if len(held):
            high = max(high, int(held.max()))
        if high - low + 1 <= self.ring_len:
            return
        new_len = max(high - low + 1, 2 * self.ring_len)
        cap = self.cum.shape[0]
        ring, ring_pane = self.layout.zeros(cap * new_len), np.full(cap * new_len, np.iinfo(np.int64).min)
        kept = np.flatnonzero(self.ring_pane >= low)
        slots = (kept // self.ring_len) * new_len + self.ring_pane[kept] % new_len
        ring[slots], ring_pane[slots] = self.ring[kept], self.ring_pane[kept]
        self.ring, self.ring_pane, self.ring_len = ring, ring_pane, new_len

    def _pane_rows(self, pane: int) -> tuple[np.ndarray, np.ndarray]:
        key_ids = np.arange(len(self.keys.keys), dtype=np.int64)
        rows = key_ids * self.ring_len + pane % self.ring_len
        has = self.ring_pane[rows] == pane
        return key_ids[has], rows[has]

    def derive(self, rows: np.ndarray, keys: list) -> dict:
        """The statistics of window rows of `keys`, each measured against the threshold in force
        for its key where one was set (else the decisions' own)."""
        return derive(rows, self.layout, self.params, tau=self._tau(keys))

    def _tau(self, keys: list) -> np.ndarray | None:
        return np.array([self.thresholds.get(k, np.nan) for k in keys]) if self.thresholds else None

    def _results(self, ready: list[tuple]) -> list[WindowResult]:
        """Derive the statistics of all windows that became final in one call, then split them."""
        if not ready:
            return []
        stats = self.derive(np.concatenate([item[4] for item in ready]),
                            [self.keys.keys[k] for _, _, _, ids, *_ in ready for k in ids])
        size, out, at = self.spec.tumbling_s, [], 0
        for kind, pane_lo, pane_hi, key_ids, rows, halves, late_events in ready:
            part = {name: col[at : at + len(rows)] for name, col in stats.items()}
            part["late_events"] = np.zeros(len(rows)) if late_events is None else late_events
            at += len(rows)
            out.append(WindowResult(kind, pane_lo * size, pane_hi * size, [self.keys.keys[k] for k in key_ids],
                                    rows, part, pane_hi - 1, halves=halves))
        return out

    def _apply_late(self, ids: np.ndarray, rows: np.ndarray) -> None:
        np.add.at(self.cum, ids, rows)
        np.add.at(self.late_events, ids, rows[:, N_DEC:N_DEC + 3].sum(axis=1) + rows[:, N_FB:N_FB + 3].sum(axis=1))
        self._late_keys.update(ids.tolist())

    def _finalise(self, pane: int, ready: list[tuple]) -> None:
        for ids, rows in self._late_pending.pop(pane, ()):
            self._apply_late(ids, rows)
        key_ids, rows = self._pane_rows(pane)
        if len(key_ids):
            ready.append(("tumbling", pane, pane + 1, key_ids, self.ring[rows], None, None))
            self.cum[key_ids] += self.ring[rows]
        changed = np.union1d(key_ids, np.fromiter(self._late_keys, np.int64, len(self._late_keys)))
        self._late_keys.clear()
        if len(changed):
            # late events as of this pane: results of many panes are derived together later
            ready.append(("cumulative", 0, pane + 1, changed, self.cum[changed], None, self.late_events[changed]))
        if (pane + 1) % self.spec.advance_panes == 0:
            first = pane + 1 - self.spec.hop_panes
            halves = np.zeros((len(self.keys.keys), 2, self.layout.width))
            seen = np.zeros(len(self.keys.keys), bool)
            for p in range(first, pane + 1):
                ids, ring_rows = self._pane_rows(p)
                halves[ids, p % 2] += self.ring[ring_rows]
                seen[ids] = True
            ids = np.flatnonzero(seen)
            if len(ids):
                ready.append(("hopping", first, pane + 1, ids, halves[ids].sum(axis=1), halves[ids], None))

    def _early(self, partials: Partials) -> WindowResult:
        """One input partition's early snapshot of its open panes, for the rules' mid-window look,
        which reads its rows, and its statistics only for the evidence of a rollback it fires: they
        are derived then (against the thresholds in force now). The early windows published are
        derived from every partition's latest snapshot summed (`Monitor.early_windows`)."""
        size = self.spec.tumbling_s
        pane = int(partials.panes.min()) if len(partials.panes) else 0
        rows, tau, layout, params = partials.rows, self._tau(partials.keys), self.layout, self.params
        stats = DerivedWhenRead(lambda: derive(rows, layout, params, tau=tau))  # holds no aggregator
        return WindowResult("early", pane * size, (pane + 1) * size, partials.keys, rows, stats, pane,
                            panes=partials.panes)
