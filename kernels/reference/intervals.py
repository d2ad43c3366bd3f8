"""Uncertainty of the loss: Wilson and Jeffreys intervals, Beta posterior exceedance.

Weighted data enter through the effective sample size `n_eff = (sum w)^2 / sum w^2`
and `x = L * n_eff`, so unit weights give the textbook binomial formulas.
Pure Python on purpose: an independent check of the scipy-based batch code.
"""
from __future__ import annotations

import math
import sys
from statistics import NormalDist

#: Squares of weights are summed as (w * 2**W2_SHIFT)**2, because a plain w**2 underflows for
#: w below ~1e-162 (and the schema accepts any w in (0, 1000]). The shift is exact, so the sums
#: stay additive; it keeps squares normal for w >= 2**-991 while 2**44 labels of weight 1000
#: still sum below the float64 maximum.
W2_SHIFT = 480


def scaled_square(weight: float) -> float:
    """The term a label adds to a sum of squared weights."""
    return math.ldexp(weight, W2_SHIFT) ** 2


def effective_size(w: float, w2: float) -> float:
    """n_eff = (sum w)^2 / sum w^2 from `w` = sum w and `w2` = sum of `scaled_square`s.

    If `w2` is not a normal float every weight was below 2**-991 and the squares are lost to
    underflow; then sum w^2 < sum w * 2**-991, and n_eff is the lower bound this gives,
    max(1, sum w * 2**991): exact for one label, never more than the count.

    >>> effective_size(3.0, 3 * scaled_square(1.0)), effective_size(1e-300, scaled_square(1e-300))
    (3.0, 1.0)
    """
    if w2 >= sys.float_info.min:
        m, e = math.frexp(math.ldexp(w, W2_SHIFT))  # (m * 2**e)**2 could overflow, m * m cannot
        return m * m / math.ldexp(w2, -2 * e)
    return max(1.0, math.ldexp(w, 511 + W2_SHIFT)) if w > 0 else 0.0


def z_value(confidence: float) -> float:
    """Two-sided standard-normal quantile, e.g. 1.96 for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def z_lower(confidence: float, k: int = 1) -> float:
    """One-sided standard-normal quantile for lower bounds that hold for `k` candidates at
    once (Bonferroni), e.g. 1.645 for 0.95 and k = 1.

    >>> round(z_lower(0.95), 3), round(z_lower(0.95, 20), 3)
    (1.645, 2.807)
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / k)


def wilson_interval(p: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion `p` observed on `n` (effective) trials.

    >>> lo, hi = wilson_interval(0.2, 100)
    >>> round(lo, 4), round(hi, 4)
    (0.1334, 0.2888)
    """
    if n <= 0 or math.isnan(p):
        return 0.0, 1.0
    z = z_value(confidence)
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta I_x(a, b), the CDF of Beta(a, b) at x.

    >>> round(beta_cdf(0.3, 2.0, 5.0), 6)
    0.579825
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """Quantile of Beta(a, b) by bisection on `beta_cdf` (monotone, so exact to 1e-12)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def jeffreys_interval(p: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Equal-tailed Jeffreys interval: quantiles of Beta(x + 1/2, n - x + 1/2).

    >>> lo, hi = jeffreys_interval(0.2, 100)
    >>> round(lo, 4), round(hi, 4)
    (0.1308, 0.2863)
    """
    if n <= 0 or math.isnan(p):
        return 0.0, 1.0
    x = p * n
    alpha = 1.0 - confidence
    return beta_ppf(alpha / 2.0, x + 0.5, n - x + 0.5), beta_ppf(1.0 - alpha / 2.0, x + 0.5, n - x + 0.5)


class ExceedanceProbability:
    """`p_exceed = P(L > budget | data)` under the posterior Beta(a0 + x, b0 + n_eff - x).

    >>> pe = ExceedanceProbability(budget=0.1)
    >>> for y in [1] * 3 + [0] * 17:
    ...     pe.update(y)
    >>> round(pe.get(), 4)
    0.848
    """

    def __init__(self, budget: float, a0: float = 1.0, b0: float = 1.0) -> None:
        if not 0.0 < budget < 1.0 or a0 <= 0 or b0 <= 0:
            raise ValueError("need 0 < budget < 1 and a positive prior")
        self.budget, self.a0, self.b0 = budget, a0, b0
        self.w = self.wy = self.w2 = 0.0

    def update(self, y: int, weight: float = 1.0) -> None:
        self.w += weight
        self.wy += weight * y
        self.w2 += scaled_square(weight)

    def merge(self, other: "ExceedanceProbability") -> None:
        self.w += other.w
        self.wy += other.wy
        self.w2 += other.w2

    def get(self) -> float:
        return exceedance(self.wy, self.w, self.w2, self.budget, self.a0, self.b0)


def exceedance(wy: float, w: float, w2: float, budget: float, a0: float = 1.0, b0: float = 1.0) -> float:
    """Posterior exceedance from weighted sums (shared by the composite reference); `w2` is a
    sum of `scaled_square`s."""
    n_eff = effective_size(w, w2)
    x = wy / w * n_eff if w > 0 else 0.0
    return 1.0 - beta_cdf(budget, a0 + x, b0 + n_eff - x)
