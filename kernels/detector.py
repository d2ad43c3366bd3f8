"""The rules' detector with its arithmetic compiled: `kernels.reference.sequential.MixtureSR`
bit for bit (the same operations, in the same order, on the same doubles), at a fraction of
the cost per look. Every key has six of these and the rules look at them once per window and
once per early snapshot, so the interpreted loop over the grid was a quarter of the pipeline.

>>> from kernels.reference.sequential import sr_threshold
>>> d = MixtureSR(p0=0.10, log_threshold=sr_threshold(8640, 0.05))
>>> [d.update(x=10, n=100) for _ in range(3)]
[False, False, False]
>>> d.peek([(25, 100), (25, 100)]) >= d.log_threshold  # a look: nothing kept
True
>>> alarms = [d.update(x=25, n=100) for _ in range(4)]
>>> alarms.index(True)
1
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from kernels.reference.sequential import ODDS_RATIOS, llr_weights
from kernels.reference.sequential import MixtureSR as ReferenceMixtureSR


@njit(cache=True)
def _logaddexp(a, b):
    if a == -np.inf:
        return b
    if b == -np.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


@njit(cache=True)
def _step(log_r, up, down, poisson, x, n, out):
    """One update of every component into `out` (which may be `log_r`)."""
    for j in range(log_r.shape[0]):
        if poisson:
            llr = x * up[j] + down[j] * n
        else:
            llr = x * up[j] + (n - x) * down[j]
        out[j] = _logaddexp(0.0, log_r[j]) + llr
    return out


@njit(cache=True)
def _mix(log_r, log_pi):
    total = -np.inf
    for r in log_r:
        total = _logaddexp(total, r + log_pi)
    return total


@njit(cache=True)
def _update(log_r, up, down, poisson, log_pi, x, n):
    _step(log_r, up, down, poisson, x, n, log_r)
    return _mix(log_r, log_pi)


@njit(cache=True)
def _peek_each(log_r, up, down, poisson, log_pi, x, n, rows, bounds):
    out = np.empty(log_r.shape[0])
    trial = np.empty(log_r.shape[1])
    for k in range(log_r.shape[0]):
        trial[:] = log_r[k]
        for i in rows[bounds[k]:bounds[k + 1]]:
            _step(trial, up, down, poisson, x[i], n[i], trial)
        out[k] = _mix(trial, log_pi)
    return out


class MixtureSR(ReferenceMixtureSR):
    """`ReferenceMixtureSR` with `update`, `peek` and `get` compiled; `log_r` reads and takes
    a plain list of floats, as a checkpoint holds it."""

    def __init__(self, p0: float, log_threshold: float, upper: bool = True, poisson: bool = False,
                 ratios: tuple[float, ...] = ODDS_RATIOS) -> None:
        super().__init__(p0, log_threshold, upper, poisson, ratios)
        if poisson:  # the reference's Poisson ratio: x log(p1 / p0) + (p0 - p1) n
            self._up = np.array([math.log(p1 / p0) for p1 in self.p1])
            self._down = np.array([p0 - p1 for p1 in self.p1])
        else:
            weights = [llr_weights(p0, p1) for p1 in self.p1]
            self._up = np.array([w[0] for w in weights])
            self._down = np.array([w[1] for w in weights])

    @property
    def log_r(self) -> list[float]:
        return self._log_r.tolist()

    @log_r.setter
    def log_r(self, values) -> None:
        self._log_r = np.array(values, dtype=np.float64)

    def update(self, x: float, n: float) -> bool:
        return _update(self._log_r, self._up, self._down, self.poisson, self.log_pi, float(x), float(n)) \
            >= self.log_threshold

    def peek(self, updates: list[tuple[float, float]]) -> float:
        """log R after `updates` ((x, n) pairs), without keeping them."""
        xn = np.array(updates, dtype=np.float64).reshape(-1, 2)
        return float(peek_each([self], xn[:, 0], xn[:, 1], np.arange(len(xn)), np.array([0, len(xn)]))[0])

    def get(self) -> float:
        return _mix(self._log_r, self.log_pi)


def peek_each(detectors: list[MixtureSR], x: np.ndarray, n: np.ndarray, rows: np.ndarray,
              bounds: np.ndarray) -> np.ndarray:
    """`peek` of detector k of the updates (x[i], n[i]) for i in rows[bounds[k]:bounds[k + 1]],
    in that order, for every k in one call: the rules look at every key's rollback detector in
    each early snapshot, and a call a key cost more than the arithmetic. The detectors must
    share their parameters (p0, tail, alternatives), as one rule's detectors of all keys do.

    >>> from kernels.reference.sequential import sr_threshold
    >>> a, b = MixtureSR(0.10, sr_threshold(8640, 0.05)), MixtureSR(0.10, sr_threshold(8640, 0.05))
    >>> x, n = np.array([25.0, 5.0, 25.0]), np.array([100.0, 100.0, 100.0])
    >>> looks = peek_each([a, b], x, n, rows=np.array([0, 2, 1]), bounds=np.array([0, 2, 3]))
    >>> bool(looks[0] == a.peek([(25, 100), (25, 100)])), bool(looks[1] == b.peek([(5, 100)]))
    (True, True)
    """
    if not detectors:
        return np.empty(0)
    first = detectors[0]
    log_r = np.stack([d._log_r for d in detectors])
    return _peek_each(log_r, first._up, first._down, first.poisson, first.log_pi, np.ascontiguousarray(x, np.float64),
                      np.ascontiguousarray(n, np.float64), np.asarray(rows, np.int64), np.asarray(bounds, np.int64))
