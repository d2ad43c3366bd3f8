"""The join's label states in native arrays: per labelled scenario, the first label from a
channel other than the audit, the audit's state, and the latest event time at which it changed.

Why: the states were read from the store (a RocksDB multi-get of keys in no order) and
stepped through in Python for every labelled feedback event, about 5 µs each. Here one
kernel takes a batch in order. The store keeps, with each batch's expiry entry, the states
the batch changed; this table is derived from those entries (:meth:`LabelStates.merge`), so
it is rebuilt after a load and never checkpointed.

A state is one int64: ``ms << 4 | (audit + 1) << 2 | (channel + 1)``, where ``channel`` is
the first channel label (LIKE 0, OVERRIDE 1, or -1 for none yet), ``audit`` is the first
audit label, -1 for none yet, or 2 once the scenario's audit pair is complete, and ``ms`` is
the latest event time (in milliseconds) of the batches that changed it. A state holds a
label, so it is never 0, which stands for "no state".

A scenario is forgotten once every batch that changed it is past the horizon, with those
batches' entries, so the store's entries that name a scenario all came after it was last
forgotten. A change only ever sets a field that was unset or completes the pair, so each
field of the latest state is the largest of those entries: they merge in any order.

>>> import numpy as np
>>> states = LabelStates()
>>> d = np.array([[1, 2], [1, 2], [3, 4]], np.uint64)  # scenario (1, 2) twice
>>> audit, labels = np.array([True, False, False]), np.array([1, 0, 0])  # LIKE 0, OVERRIDE 1
>>> codes, repeats, changed = states.label(d, audit, labels, 5_000)
>>> codes.tolist(), repeats.tolist(), changed.tolist()  # the channel's like completes the pair
([-1, 1, -1], [False, True, False], [True, True, True])
>>> [x.tolist() for x in unpack(states.get(d[:1]))]  # (channel, audit, ms)
[[0], [2], [5000]]
>>> codes, _, _ = states.label(d[2:], np.array([True]), np.array([1]), 4_000)  # an earlier batch
>>> codes.tolist(), [x.tolist() for x in unpack(states.get(d[2:]))]  # pairs, keeps the latest time
([1], [[0], [2], [5000]])
>>> states.forget_older(d, 6_000).tolist(), len(states)  # the second row names a forgotten one
([True, False, True], 0)
"""
from __future__ import annotations

import numba
import numpy as np

from kernels.digest_map import DigestMap, claim, delete
from kernels.layout import PAIR_AGREE, PAIR_AUDIT_OVERRIDES, PAIR_CHANNEL_OVERRIDES
from kernels.seen_ids import find_slot

NONE, PAIRED = -1, 2
"""A label not given yet; the audit field's value once the scenario's pair is complete."""
_PAIR_CODE = np.array([[PAIR_AGREE, PAIR_CHANNEL_OVERRIDES], [PAIR_AUDIT_OVERRIDES, PAIR_AGREE]], np.int8)
"""Pair code of (audit label, channel label), labels LIKE 0 / OVERRIDE 1."""


def unpack(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(channel label, audit field, ms) of states."""
    return (values & 3) - 1, ((values >> 2) & 3) - 1, values >> 4


class LabelStates(DigestMap):
    """Scenario digest -> its label state (one int64, as the module says)."""

    def label(self, digests: np.ndarray, audit: np.ndarray, labels: np.ndarray,
              ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Take a batch of labelled feedback in order (its scenarios, whether each is from the
        audit, its label); states it changes are stamped `ms`, unless stamped later already.
        Returns, per event, the code of the audit pair it completes (-1 for none), whether its
        scenario had a state before it, and whether it changed the state.

        A scenario pairs its first audit label with its first label from any other channel;
        the event that brings the second of the two gets the pair's code, once."""
        n = len(digests)
        if not len(audit) == len(labels) == n:
            raise ValueError("digests, audit and labels differ in length")
        self._reserve(n)
        codes, repeats, changed = np.empty(n, np.int8), np.empty(n, np.bool_), np.empty(n, np.bool_)
        _label(digests, np.asarray(audit, np.bool_), np.asarray(labels, np.int8), np.int64(ms), _PAIR_CODE,
               self.keys, self.state, self.values, self.meta, self.salt, codes, repeats, changed)
        return codes, repeats, changed

    def get(self, digests: np.ndarray) -> np.ndarray:
        """The scenarios' states, 0 where none."""
        return self.values_of(digests)

    def merge(self, digests: np.ndarray, values: np.ndarray) -> None:
        """Merge states into the scenarios' (a rebuild from the store's entries, in any
        order): each field, and the event time, the larger of the two."""
        self._reserve(len(digests))
        _merge(digests, np.asarray(values, np.int64), self.keys, self.state, self.values, self.meta, self.salt)

    def forget_older(self, digests: np.ndarray, ms: int) -> np.ndarray:
        """Forget those of the scenarios whose state is stamped before `ms` (the latest event
        time of their changes); which were."""
        out = np.empty(len(digests), np.bool_)
        _forget_older(digests, np.int64(ms), self.keys, self.state, self.values, self.meta, self.salt, out)
        self._reserve(0)
        return out


def warm_up() -> None:
    """Run every kernel once: Numba loads (or compiles) each on first use, a few tenths of a
    second that would otherwise fall in the first batch that labels, grows or expires."""
    states, d = LabelStates(2), np.arange(4, dtype=np.uint64).reshape(2, 2)
    states.label(d, np.array([True, False]), np.array([0, 1]), 1)  # grows: rehashes
    states.merge(d, states.get(d))
    states.forget_older(d, 2)


@numba.njit(cache=True, nogil=True)
def _label(digests, audit, labels, ms, pair_code, keys, state, values, meta, salt, codes, repeats, changed):
    for i in range(digests.shape[0]):
        hi, lo = digests[i, 0], digests[i, 1]
        slot = find_slot(keys, state, hi, lo, salt)
        if slot >= 0:
            v = values[slot]
            channel, audit_state, change = (v & 3) - 1, ((v >> 2) & 3) - 1, False
            repeats[i] = True
        else:
            slot = claim(keys, state, slot, hi, lo, meta)
            channel, audit_state, change = NONE, NONE, True
            repeats[i] = False
        label, code = labels[i], -1
        if not audit[i] and channel == NONE:
            channel, change = label, True
            if audit_state != NONE and audit_state != PAIRED:
                code, audit_state = pair_code[audit_state, label], PAIRED
        elif audit[i] and audit_state == NONE:
            change = True
            if channel == NONE:
                audit_state = label
            else:
                code, audit_state = pair_code[label, channel], PAIRED
        if change:
            stamp = ms if not repeats[i] else max(ms, values[slot] >> 4)
            values[slot] = (stamp << 4) | ((audit_state + 1) << 2) | (channel + 1)
        codes[i], changed[i] = code, change


@numba.njit(cache=True, nogil=True)
def _merge(digests, new, keys, state, values, meta, salt):
    for i in range(digests.shape[0]):
        hi, lo = digests[i, 0], digests[i, 1]
        slot = find_slot(keys, state, hi, lo, salt)
        if slot < 0:
            values[claim(keys, state, slot, hi, lo, meta)] = new[i]
            continue
        v, w = values[slot], new[i]
        values[slot] = (max(v >> 4, w >> 4) << 4) | max(v & 12, w & 12) | max(v & 3, w & 3)


@numba.njit(cache=True, nogil=True)
def _forget_older(digests, ms, keys, state, values, meta, salt, out):
    for i in range(digests.shape[0]):
        slot = find_slot(keys, state, digests[i, 0], digests[i, 1], salt)
        out[i] = slot >= 0 and values[slot] >> 4 < ms
        if out[i]:
            delete(state, slot, meta)
