"""Batch version of `kernels.reference.sequential.MixtureSR`: many simulated runs at once.

`first_alarms` runs one detector over `runs` independent streams of `windows`
updates each and returns the update at which each first alarms, so the
false-alarm probability within a horizon and the detection delay of a rule can
be measured by simulation with the exact arithmetic the rule uses.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

#: How the simulated labels are weighted: all 1, or drawn from the whole accepted range.
UNIT_WEIGHTS, ANY_WEIGHTS = 0, 1


@njit(cache=True)
def _draw_weight(mode):
    """A label's capped weight min(w, 1) for w drawn from (0, 1000]: a third at the heaviest
    weight 1000, a third log-uniform on [1, 1000], a third log-uniform on [1e-12, 1]."""
    if mode == 0:
        return 1.0
    u = np.random.random()
    if u < 2.0 / 3.0:
        return 1.0  # 1000, or anything from 1 up: counts as one observation
    return math.exp(np.random.random() * math.log(1e-12))


@njit(cache=True)
def _mixture(log_r, log_pi):
    m = -np.inf
    for v in log_r:
        m = max(m, v)
    if m == -np.inf:
        return m
    total = 0.0
    for v in log_r:
        total += math.exp(v - m)
    return m + math.log(total) + log_pi


@njit(cache=True)
def _grown(log_r_j):
    """log(1 + R_j) from log R_j."""
    if log_r_j == -np.inf:
        return 0.0
    return max(0.0, log_r_j) + math.log1p(math.exp(-abs(log_r_j)))


@njit(cache=True)
def first_alarms(p0, p1, log_threshold, rates, n_per_window, runs, seed, weight_mode=0, poisson=False, looks=1):
    """First alarm (update index, or -1) of a mixture SR detector in each of `runs` streams.

    rates[t]: the true rate in update t (Bernoulli label rate, or Poisson count rate per
    unit of n). n_per_window: labels (or decisions, with `poisson`) per update. `looks`:
    how many times each update is looked at as its labels arrive (the statistic
    continued over the partial update), the last look being the update itself.
    """
    np.random.seed(seed)
    k = p1.shape[0]
    log_pi = -math.log(k)
    up = np.empty(k)
    down = np.empty(k)
    for j in range(k):
        if poisson:
            up[j] = math.log(p1[j] / p0)
            down[j] = p0 - p1[j]  # per unit of n
        else:
            up[j] = math.log(p1[j] / p0)
            down[j] = math.log((1.0 - p1[j]) / (1.0 - p0))
    out = np.full(runs, -1, np.int64)
    log_r = np.empty(k)
    trial = np.empty(k)
    for r in range(runs):
        log_r[:] = -np.inf
        for t in range(rates.shape[0]):
            p = rates[t]
            x = 0.0
            n = 0.0
            alarmed = False
            for look in range(looks):
                chunk = n_per_window // looks + (1 if look < n_per_window % looks else 0)
                if poisson:
                    x += np.random.poisson(p * chunk)
                    n += chunk
                else:
                    for _ in range(chunk):
                        c = _draw_weight(weight_mode)
                        n += c
                        if np.random.random() < p:
                            x += c
                for j in range(k):
                    if poisson:
                        trial[j] = _grown(log_r[j]) + x * up[j] + n * down[j]
                    else:
                        trial[j] = _grown(log_r[j]) + x * up[j] + (n - x) * down[j]
                if _mixture(trial, log_pi) >= log_threshold:
                    alarmed = True
                    break
            if alarmed:
                out[r] = t
                break
            log_r[:] = trial
    return out


def alarm_summary(first: np.ndarray, horizon: int) -> dict:
    """Share of runs alarmed within `horizon` updates, with its Monte-Carlo standard error,
    and the mean delay (updates until the alarm, counting the alarming one) of those that did."""
    hit = (first >= 0) & (first < horizon)
    rate = float(hit.mean())
    se = math.sqrt(max(rate * (1.0 - rate), 1.0 / len(first)) / len(first))
    delays = first[hit] + 1
    return {"runs": int(len(first)), "alarm_rate": rate, "alarm_rate_se": se,
            "mean_delay": float(delays.mean()) if len(delays) else math.nan,
            "mean_delay_se": float(delays.std(ddof=1) / math.sqrt(len(delays))) if len(delays) > 1 else math.nan}
