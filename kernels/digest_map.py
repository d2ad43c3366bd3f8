"""A map from 128-bit digests to int64 values in native arrays: the table the join's
compiled indexes (:mod:`kernels.scenario_index`, :mod:`kernels.label_states`) share.

Open addressing with :mod:`kernels.seen_ids`' linear probing and a secret salt of its own
(so crafted ids cannot pile onto one probe path). A slot costs 25 bytes (digest, value,
state). When live and deleted entries would fill over three quarters of it, the table is
rebuilt in place if its live entries fill five eighths of it at most, which reclaims the
deleted slots, else it grows until they do: to twice its size while it is small, by a quarter
from `DOUBLE_BELOW` slots on (a table of millions of scenarios then grows in steps of tens
of megabytes, not hundreds). It halves when live entries fill less than a sixteenth. A
growing table's live entries fill five sixteenths to three quarters of it, 33 to 80 bytes an
entry (past `DOUBLE_BELOW`, a half to three quarters: 33 to 50 bytes). The subclasses add the
kernels that read and write the values; they grow the table (:meth:`DigestMap._reserve`)
between batches.

>>> table = DigestMap()
>>> len(table), table.nbytes
(0, 25600)
"""
from __future__ import annotations

import secrets

import numba
import numpy as np

from kernels.seen_ids import DELETED, FULL, MAX_SLOTS, claim_slot, find_slot

LIVE, DEAD = range(2)  # meta (int64): live entries, deleted slots not yet reclaimed
DOUBLE_BELOW = 1 << 20
"""Slots (26 MB) below which a table doubles as it grows; from here on it grows by a quarter,
which moves its entries four times as often while it grows, but holds less RAM idle."""


class DigestMap:
    """The arrays (keys, slot states, values, meta) and their growth."""

    def __init__(self, slots: int = 1024) -> None:
        if not 2 <= slots < MAX_SLOTS:
            raise ValueError(f"slots must be at least 2 and below 2^32: {slots}")
        self.keys = np.zeros((slots, 2), np.uint64)
        self.state = np.zeros(slots, np.uint8)
        self.values = np.zeros(slots, np.int64)
        self.meta = np.zeros(2, np.int64)
        self.salt = np.uint64(secrets.randbits(64))

    def __len__(self) -> int:
        return int(self.meta[LIVE])

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.state.nbytes + self.values.nbytes

    def values_of(self, digests: np.ndarray) -> np.ndarray:
        """The value of each digest, 0 where it has none."""
        out = np.empty(len(digests), np.int64)
        _values_of(digests, self.keys, self.state, self.values, self.salt, out)
        return out

    def _reserve(self, more: int) -> None:
        """Room for `more` new entries: at most three quarters of the slots taken, by live or
        deleted entries. Past that, the deleted slots are reclaimed by rebuilding in place
        while the live ones fill at most five eighths of it (a rebuild then buys an eighth of
        the slots), else the table grows until they do (`DOUBLE_BELOW`). A table whose live
        entries fill less than a sixteenth of it (most were deleted) halves until they fill
        more, down to 1,024 slots."""
        live, dead, slots = int(self.meta[LIVE]) + more, int(self.meta[DEAD]), len(self.state)
        size = slots
        while size > 1024 and 16 * live < size:
            size = max(1024, size // 2)
        if size == slots and 4 * (live + dead) <= 3 * slots:
            return
        while 8 * live > 5 * size:
            size = 2 * size if size < DOUBLE_BELOW else size + max(1, size // 4)
        if size >= MAX_SLOTS:
            raise ValueError(f"a table of {size} slots: over 2^32")
        self._rehash(size)

    def _rehash(self, slots: int) -> None:
        keys, state, values = np.zeros((slots, 2), np.uint64), np.zeros(slots, np.uint8), np.zeros(slots, np.int64)
        _move(self.keys, self.state, self.values, keys, state, values, self.salt)
        self.keys, self.state, self.values = keys, state, values
        self.meta[DEAD] = 0


@numba.njit(cache=True, nogil=True)
def _values_of(digests, keys, state, values, salt, out):
    for i in range(digests.shape[0]):
        slot = find_slot(keys, state, digests[i, 0], digests[i, 1], salt)
        out[i] = values[slot] if slot >= 0 else 0


@numba.njit(cache=True, inline="always")
def claim(keys, state, absent, hi, lo, meta):
    """Enter digest (hi, lo) where `find_slot` found it absent (`absent`, its negative answer);
    its slot."""
    slot = -1 - absent
    claim_slot(keys, state, slot, hi, lo, meta, DEAD)
    meta[LIVE] += 1
    return slot


@numba.njit(cache=True, inline="always")
def delete(state, slot, meta):
    """Delete the entry in `slot` (its slot is reclaimed when the table is next rebuilt)."""
    state[slot] = DELETED
    meta[LIVE] -= 1
    meta[DEAD] += 1


@numba.njit(cache=True, nogil=True)
def _move(keys, state, values, to_keys, to_state, to_values, salt):
    for i in range(state.shape[0]):
        if state[i] != FULL:
            continue
        slot = -1 - find_slot(to_keys, to_state, keys[i, 0], keys[i, 1], salt)
        to_keys[slot, 0], to_keys[slot, 1] = keys[i, 0], keys[i, 1]
        to_state[slot] = FULL
        to_values[slot] = values[i]
