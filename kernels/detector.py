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
def _peek(log_r, up, down, poisson, log_pi, x, n, rows):
    trial = log_r.copy()
    for i in rows:
        _step(trial, up, down, poisson, x[i], n[i], trial)
    return _mix(trial, log_pi)


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
        return self.peek_rows(xn[:, 0], xn[:, 1], np.arange(len(xn)))

    def peek_rows(self, x: np.ndarray, n: np.ndarray, rows: np.ndarray) -> float:
        """`peek` of the updates (x[i], n[i]) for i in `rows`, in that order: columns of a
        window result looked at without copying them."""
        return _peek(self._log_r, self._up, self._down, self.poisson, self.log_pi, x, n, rows)

    def get(self) -> float:
        return _mix(self._log_r, self.log_pi)
