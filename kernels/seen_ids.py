"""The de-duplicator's kernel: a set of 128-bit id digests that forgets oldest-inserted first.

Why: a Python dict of id strings cost about 240 bytes an id and, under steady churn,
resized itself to a larger table long after its size had levelled off (a step of some
60 MB a partition, well into a soak). Here an id costs 17 bytes a slot in an
open-addressing table (linear probing, at most half full) and 24 in a ring of (digest,
time) in insertion order, both sized in powers of two: 58 to 116 bytes an id. A steady
number of ids keeps the arrays' sizes, since deleted slots are reclaimed by rebuilding
the table in place from the ring.

:class:`Table` owns the arrays and grows them between batches; :func:`fresh` takes a
batch one id at a time, exactly as the reference (``tests/test_dedup.py``) does. Scalars
travel in two small arrays, ``meta`` and ``times``, indexed by the names below.
"""
from __future__ import annotations

import secrets
import weakref

import numba
import numpy as np

HEAD, TAIL, LIVE, DEAD, DUPLICATES, EVICTED = range(6)  # meta (int64): ring positions are absolute
CLOCK, NEXT_EXPIRY = range(2)  # times (float64)
EMPTY, FULL, DELETED = 0, 1, 2  # a slot's state (kernels.scenario_index's table uses them too)
MAX_SLOTS = 1 << 32
"""The most slots a table may have: a digest's home slot is scaled from 32 bits of its hash."""


class Table:
    """The arrays :func:`fresh` works on, and their growth (done here, between batches)."""

    def __init__(self, slots: int = 1024, ring: int = 512) -> None:
        self.keys = np.zeros((slots, 2), np.uint64)
        self.state = np.zeros(slots, np.uint8)
        self.ring_keys = np.zeros((ring, 2), np.uint64)
        self.ring_ts = np.zeros(ring, np.float64)
        self.meta = np.zeros(6, np.int64)
        self.times = np.array([-np.inf, -np.inf])
        # where a digest sits depends on a secret: crafted ids cannot pile onto one probe path
        # (the table is rebuilt from the ring on load, so the salt need not persist)
        self.salt = np.uint64(secrets.randbits(64))
        self.holds: list[weakref.ref] = []  # captures of the ring not yet read (`kernels.held_ids`)
        self.bytes_copied_aside = 0  # by those captures, before batches overwrote what they had not read

    @classmethod
    def holding(cls, keys: np.ndarray, ts: np.ndarray, counters: tuple[int, int],
                times: tuple[float, float]) -> "Table":
        """A table holding `keys` (oldest first) with their times, counters (duplicates,
        evicted) and (clock, next expiry): what :meth:`in_order` and the scalars gave.
        ValueError if a key is listed twice."""
        t, n = cls(), len(keys)
        t.reserve(n)
        t.ring_keys[:n], t.ring_ts[:n] = keys, ts
        t.meta[TAIL], t.meta[LIVE] = n, n
        t.meta[DUPLICATES], t.meta[EVICTED] = counters
        t.times[:] = times
        if rebuild(t.keys, t.state, t.ring_keys, t.meta, t.salt):
            raise ValueError("an id is listed twice")
        return t

    def take(self, digests: np.ndarray, ts: np.ndarray, horizon_s: float, max_ids: int) -> np.ndarray:
        """Positions of the batch's ids seen for the first time (:func:`fresh`), after making
        room for them, and after the captures of the ring still being read copy aside what the
        batch may overwrite (:meth:`HeldIds.guard <kernels.held_ids.HeldIds.guard>`): room first,
        as a ring that grows leaves the old arrays, and what they hold, as they are."""
        self.reserve(min(int(self.meta[LIVE]) + len(digests), max_ids + 1))
        if self.holds:
            self.holds = [r for r in self.holds if (h := r()) is not None and h.guard(self, len(digests))]
        out = np.empty(len(digests), np.int64)
        n = fresh(digests, ts, self.keys, self.state, self.ring_keys, self.ring_ts, self.meta, self.times,
                  self.salt, horizon_s, max_ids, out)
        return out[:n]

    def held(self) -> int:
        """Captures of the ring still guarded (:mod:`kernels.held_ids`): alive and not yet read."""
        self.holds = [r for r in self.holds if (h := r()) is not None and h.guarded_by(self)]
        return len(self.holds)

    def reserve(self, held: int) -> None:
        """Room for `held` ids at once: the table at most half full, the ring holding them all."""
        if held > self.ring_ts.shape[0]:
            self._resize_ring(_pow2(held))
        if 2 * held > self.state.shape[0]:
            self.keys = np.zeros((_pow2(2 * held), 2), np.uint64)
            self.state = np.zeros(self.keys.shape[0], np.uint8)
            rebuild(self.keys, self.state, self.ring_keys, self.meta, self.salt)

    def _resize_ring(self, size: int) -> None:
        head, tail = int(self.meta[HEAD]), int(self.meta[TAIL])
        at = np.arange(head, tail)
        keys, ts = np.zeros((size, 2), np.uint64), np.zeros(size, np.float64)
        keys[at % size], ts[at % size] = self.ring_keys[at % self.ring_ts.shape[0]], \
            self.ring_ts[at % self.ring_ts.shape[0]]
        self.ring_keys, self.ring_ts = keys, ts

    def in_order(self) -> tuple[np.ndarray, np.ndarray]:
        """(digests, times) of the ids held, oldest first."""
        return self.between(int(self.meta[HEAD]), int(self.meta[TAIL]))

    def between(self, first: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """(digests, times) of the ring's absolute positions [first, end), all held: copies of
        at most two runs of the ring (a dump takes every id held, and an index array of their
        positions would cost a third as much again)."""
        size = self.ring_ts.shape[0]
        lo, hi = first % size, first % size + (end - first)
        runs = [slice(lo, min(hi, size)), slice(0, max(0, hi - size))]
        return np.concatenate([self.ring_keys[r] for r in runs]), np.concatenate([self.ring_ts[r] for r in runs])

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.state.nbytes + self.ring_keys.nbytes + self.ring_ts.nbytes


def _pow2(n: int) -> int:
    return 1 << max(1, int(n) - 1).bit_length()


@numba.njit(cache=True, nogil=True)
def _home(hi, salt, slots):
    """A digest's first slot of `slots` (up to `MAX_SLOTS`): splitmix64's finalizer of its
    high half xor the table's salt, its top 32 bits scaled to the table (a multiply and a
    shift, so a table need not be a power of two)."""
    z = hi ^ salt
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.int64(((z >> np.uint64(32)) * np.uint64(slots)) >> np.uint64(32))


@numba.njit(cache=True, nogil=True)
def find_slot(keys, state, hi, lo, salt):
    """Slot of digest (hi, lo), or -1-(first free slot on its probe path) when absent."""
    slots = state.shape[0]
    i = _home(hi, salt, slots)
    free = np.int64(-1)
    while True:
        s = state[i]
        if s == EMPTY:
            return -1 - (i if free < 0 else free)
        if s == FULL and keys[i, 0] == hi and keys[i, 1] == lo:
            return i
        if s == DELETED and free < 0:
            free = i
        i += 1
        if i == slots:
            i = 0


@numba.njit(cache=True, nogil=True)
def claim_slot(keys, state, slot, hi, lo, meta, dead):
    """Put digest (hi, lo) in the free `slot` that `find_slot` gave; a deleted slot taken
    again is one fewer counted at `meta[dead]`."""
    if state[slot] == DELETED:
        meta[dead] -= 1
    keys[slot, 0], keys[slot, 1] = hi, lo
    state[slot] = FULL


@numba.njit(cache=True, nogil=True)
def rebuild(keys, state, ring_keys, meta, salt):
    """Refill the table from the ring: deleted slots become free again. Returns how many ring
    entries repeat an earlier one (none, unless the ring came from a corrupt checkpoint)."""
    state[:] = EMPTY
    rc = ring_keys.shape[0]
    repeats = 0
    for p in range(meta[HEAD], meta[TAIL]):
        hi, lo = ring_keys[p % rc, 0], ring_keys[p % rc, 1]
        slot = find_slot(keys, state, hi, lo, salt)
        if slot >= 0:
            repeats += 1
            continue
        keys[-1 - slot, 0], keys[-1 - slot, 1] = hi, lo
        state[-1 - slot] = FULL
    meta[DEAD] = 0
    return repeats


@numba.njit(cache=True, nogil=True)
def _forget_oldest(keys, state, ring_keys, meta, salt):
    rc = ring_keys.shape[0]
    p = meta[HEAD] % rc
    state[find_slot(keys, state, ring_keys[p, 0], ring_keys[p, 1], salt)] = DELETED
    meta[HEAD] += 1
    meta[LIVE] -= 1
    meta[DEAD] += 1


@numba.njit(cache=True, nogil=True)
def fresh(digests, ts, keys, state, ring_keys, ring_ts, meta, times, salt, horizon_s, max_ids, out):
    """Positions of the ids seen for the first time within the horizon, into `out`; their
    number is returned. Each event moves the event-time clock; each 1% of the horizon the
    ids older than it are forgotten (oldest-inserted first, stopping at the first that is
    not), and beyond `max_ids` the oldest is evicted."""
    rc = ring_ts.shape[0]
    n_out = 0
    for pos in range(digests.shape[0]):
        t = ts[pos]
        if t > times[CLOCK]:
            times[CLOCK] = t
            if t >= times[NEXT_EXPIRY]:
                cutoff = t - horizon_s
                while meta[LIVE] > 0 and ring_ts[meta[HEAD] % rc] < cutoff:
                    _forget_oldest(keys, state, ring_keys, meta, salt)
                times[NEXT_EXPIRY] = t + horizon_s / 100.0
        hi, lo = digests[pos, 0], digests[pos, 1]
        slot = find_slot(keys, state, hi, lo, salt)
        if slot >= 0:
            meta[DUPLICATES] += 1
            continue
        claim_slot(keys, state, -1 - slot, hi, lo, meta, DEAD)
        p = meta[TAIL] % rc
        ring_keys[p, 0], ring_keys[p, 1] = hi, lo
        ring_ts[p] = t
        meta[TAIL] += 1
        meta[LIVE] += 1
        if meta[LIVE] > max_ids:
            _forget_oldest(keys, state, ring_keys, meta, salt)
            meta[EVICTED] += 1
        if 4 * (meta[LIVE] + meta[DEAD]) > 3 * state.shape[0]:
            rebuild(keys, state, ring_keys, meta, salt)
        out[n_out] = pos
        n_out += 1
    return n_out
