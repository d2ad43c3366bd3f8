"""The ids a :class:`~kernels.seen_ids.Table` held at one moment, read later a slice at a time.

Why: a whole checkpoint takes every id held, 48 MB a partition at the default cap of 2M
ids. Copied at the capture, they sat in memory beside everything else the checkpoint
passed through. Here they stay in the table's ring and are copied a slice at a time as
the checkpoint is written, while the table goes on taking ids in.

The ring is written only at its back, in ring order, so the positions a batch can
overwrite are always the oldest of a capture's still unread: :meth:`HeldIds.guard`, which
`Table.take` calls before each batch, copies just those aside. A capture read soon after it is taken copies
nothing but its slices; one read more slowly than batches overwrite the ring copies at most
its whole self, a batch at a time, as a copy at the capture did.
"""
from __future__ import annotations

import weakref
from collections.abc import Iterator

import numpy as np

from kernels.seen_ids import TAIL, Table

KEYS, TIMES = 0, 1
"""The two columns of the ring: digests ((n, 2) uint64) and times (float64)."""


class HeldIds:
    """The ring's absolute positions [first, end) of `table` as they are now: each column
    given once, a slice at a time (:meth:`slices`), however the table changes meanwhile (it
    calls :meth:`guard` before each batch it takes, for as long as this is alive and unread).

    >>> t = Table(slots=8, ring=4)
    >>> _ = t.take(np.array([[1, 1], [2, 2], [3, 3]], np.uint64), np.array([10.0, 11.0, 12.0]), 100.0, 3)
    >>> held = HeldIds(t, 0, 3)
    >>> keys, times = held.columns()
    >>> _ = t.take(np.array([[4, 4], [5, 5]], np.uint64), np.array([13.0, 14.0]), 100.0, 3)
    >>> held.copied, t.ring_ts.tolist()  # the oldest was copied aside, then overwritten
    (2, [14.0, 11.0, 12.0, 13.0])
    >>> [s.tolist() for s in times.slices(16)], times.shape
    ([[10.0], [11.0, 12.0]], (3,))
    >>> keys.array().tolist()
    [[1, 1], [2, 2], [3, 3]]
    """

    def __init__(self, table: Table, first: int, end: int) -> None:
        self._columns = (table.ring_keys, table.ring_ts)  # the arrays written at this moment
        table.holds.append(weakref.ref(self))
        self.first, self.end = first, end
        self._read = [first, first]  # per column: positions given so far
        self._saved: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])  # copies of [read, saved_end)
        self._saved_end = [first, first]
        self.copied = 0  # positions copied aside by guards, over both columns

    def __len__(self) -> int:
        return self.end - self.first

    def guarded_by(self, table: Table) -> bool:
        """Whether batches `table` takes may still overwrite unread positions: False once every
        column is read, or once the table writes to other arrays (it grew, or was replaced)."""
        return table.ring_ts is self._columns[TIMES] and any(at < self.end for at in self._read)

    def guard(self, table: Table, incoming: int) -> bool:
        """Before `table` takes a batch of up to `incoming` ids: copy aside the positions not
        yet read that the batch may overwrite. Returns `guarded_by`: when False, the caller
        may let go of this."""
        if not self.guarded_by(table):
            return False
        # a batch writes positions [tail, tail + incoming), into the slots of those one ring earlier
        at_risk = min(self.end, int(table.meta[TAIL]) + incoming - table.ring_ts.shape[0])
        for c, column in enumerate(self._columns):
            start = max(self._read[c], self._saved_end[c])
            if at_risk > start:
                self._saved[c].append(_copy(column, start, at_risk))
                self._saved_end[c] = at_risk
                self.copied += at_risk - start
                table.bytes_copied_aside += self._saved[c][-1].nbytes
        return True

    def columns(self) -> tuple["HeldColumn", "HeldColumn"]:
        """The digests and the times, each to be read once."""
        return tuple(HeldColumn(self, c, ring) for c, ring in enumerate(self._columns))

    def slices(self, column: int, most: int) -> Iterator[np.ndarray]:
        """Column `column` (`KEYS` or `TIMES`) in order, as copies of at most `most` positions
        each; a column is given once (ValueError after)."""
        if self._read[column] != self.first:
            raise ValueError("a column of held ids is given once")
        ring, saved = self._columns[column], self._saved[column]
        size = ring.shape[0]
        while self._read[column] < self.end:
            at = self._read[column]
            if saved:
                piece = saved[0][:most]
                saved[0] = saved[0][len(piece):]
                if not len(saved[0]):
                    saved.pop(0)
            else:  # not overwritten yet: a guard would have copied it aside
                n = min(most, self.end - at, size - at % size)
                piece = ring[at % size:at % size + n].copy()
            self._read[column] += len(piece)
            yield piece


class HeldColumn:
    """One column of :class:`HeldIds`: an array of `dtype` and `shape` whose values are taken
    from the ring only as they are read, once (`slices`, or `array` for all at once)."""

    def __init__(self, held: HeldIds, column: int, ring: np.ndarray) -> None:
        self._held, self._column = held, column
        self.dtype, self.shape = ring.dtype, (len(held), *ring.shape[1:])
        self._row_bytes = ring[:1].nbytes

    @property
    def nbytes(self) -> int:
        return self._row_bytes * self.shape[0]

    def slices(self, most_bytes: int) -> Iterator[np.ndarray]:
        """The values in order, as arrays of at most `most_bytes` (at least a row) each."""
        return self._held.slices(self._column, max(1, most_bytes // self._row_bytes))

    def array(self) -> np.ndarray:
        """The values as one array (each slice copied into it once)."""
        out, at = np.empty(self.shape, self.dtype), 0
        for piece in self.slices(max(1, self.nbytes)):
            out[at:at + len(piece)] = piece
            at += len(piece)
        return out


def _copy(column: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The ring column's absolute positions [start, stop), in order, as one new array."""
    size = column.shape[0]
    lo, hi = start % size, start % size + (stop - start)
    return np.concatenate([column[lo:min(hi, size)], column[0:max(0, hi - size)]])
