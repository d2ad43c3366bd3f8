"""The join's index of scenarios: a scenario id's 128-bit digest to the serial number of its
latest score, and whether it was scored before that one.

Why: the join numbers its scores in arrival order and keeps them in pages under keys that
follow that order, so RocksDB appends them to its memtable instead of inserting each at a
random place in a skip list (which cost 2 to 2.5 µs a score on UUID scenario ids); what a
feedback event needs, its scenario's scores, is then found here, in a
:class:`kernels.digest_map.DigestMap` (33 to 50 bytes a scenario in a large table: 10M
pending scenarios take 330 to 500 MB; while the table grows, the old and the new are held at
once, 2.25 times the old's size from a million slots on, where it grows by a quarter). The
table is derived from the store's expiry entries (which list every stored score's scenario),
so it is rebuilt after a load and never checkpointed.
The kernels take a batch one scenario at a time, in order.

>>> import numpy as np
>>> index = ScenarioIndex()
>>> d = np.array([[1, 2], [3, 4], [1, 2]], np.uint64)  # the first scenario twice
>>> [x.tolist() for x in index.put(d, np.array([10, 11, 12]))]  # what each had before
[[0, 0, 10], [False, False, False]]
>>> [x.tolist() for x in index.get(d[:2])]  # (latest, scored before it)
[[12, 11], [True, False]]
>>> index.replace(d[:1], np.array([12]), np.array([0]), np.array([False]))  # forget it
>>> index.get(d[:1])[0].tolist(), len(index)
([0], 1)
"""
from __future__ import annotations

import numba
import numpy as np

from kernels.digest_map import DigestMap, claim, delete
from kernels.seen_ids import find_slot


class ScenarioIndex(DigestMap):
    """Scenario digest -> (serial of its latest score, scored more than once); a value is
    serial << 1 | scored more than once."""

    def put(self, digests: np.ndarray, serials: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Make `serials` (positive) the scenarios' latest scores, in order; what `get` said of
        each just before. A scenario that had a latest score is marked as scored more than once."""
        self._reserve(len(digests))
        before = np.empty(len(digests), np.int64)
        _put(digests, np.asarray(serials, np.int64), self.keys, self.state, self.values, self.meta, self.salt, before)
        return before >> 1, (before & 1).astype(np.bool_)

    def merge(self, digests: np.ndarray, serials: np.ndarray) -> None:
        """`put` in any order: each scenario's latest is the highest of its serials seen, and
        one seen twice is marked as scored more than once (a rebuild from stored batches)."""
        self._reserve(len(digests))
        _merge(digests, np.asarray(serials, np.int64), self.keys, self.state, self.values, self.meta, self.salt)

    def get(self, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(serial of the latest score, 0 for none; scored more than once) of each scenario."""
        out = self.values_of(digests)
        return out >> 1, (out & 1).astype(np.bool_)

    def replace(self, digests: np.ndarray, latest: np.ndarray, serials: np.ndarray, rescored: np.ndarray) -> None:
        """For each scenario whose latest score is still `latest`, make it `serials` (0: forget
        the scenario), marked with `rescored`; in order. Others are left as they are."""
        _replace(digests, np.asarray(latest, np.int64), np.asarray(serials, np.int64), np.asarray(rescored, np.bool_),
                 self.keys, self.state, self.values, self.meta, self.salt)
        self._reserve(0)


def warm_up() -> None:
    """Run every kernel once: Numba loads (or compiles) each on first use, a few tenths of a
    second that would otherwise fall in the first batch that grows or expires the index."""
    index, d = ScenarioIndex(2), np.arange(4, dtype=np.uint64).reshape(2, 2)
    index.put(d, np.array([1, 2]))  # grows: rehashes
    index.merge(d, np.array([3, 4]))
    index.replace(d, *index.get(d)[:1], np.zeros(2), np.zeros(2, np.bool_))


@numba.njit(cache=True, nogil=True)
def _put(digests, serials, keys, state, values, meta, salt, before):
    for i in range(digests.shape[0]):
        hi, lo = digests[i, 0], digests[i, 1]
        slot = find_slot(keys, state, hi, lo, salt)
        if slot >= 0:
            before[i] = values[slot]
            values[slot] = (serials[i] << 1) | 1
            continue
        values[claim(keys, state, slot, hi, lo, meta)] = serials[i] << 1
        before[i] = 0


@numba.njit(cache=True, nogil=True)
def _merge(digests, serials, keys, state, values, meta, salt):
    for i in range(digests.shape[0]):
        hi, lo = digests[i, 0], digests[i, 1]
        slot = find_slot(keys, state, hi, lo, salt)
        if slot >= 0:
            values[slot] = (max(values[slot] >> 1, serials[i]) << 1) | 1
            continue
        values[claim(keys, state, slot, hi, lo, meta)] = serials[i] << 1


@numba.njit(cache=True, nogil=True)
def _replace(digests, latest, serials, rescored, keys, state, values, meta, salt):
    for i in range(digests.shape[0]):
        slot = find_slot(keys, state, digests[i, 0], digests[i, 1], salt)
        if slot < 0 or values[slot] >> 1 != latest[i]:
            continue
        if serials[i] == 0:
            delete(state, slot, meta)
        else:
            values[slot] = (serials[i] << 1) | (1 if rescored[i] else 0)
