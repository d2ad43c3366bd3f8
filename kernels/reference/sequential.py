"""Sequential change detection with a false-alarm guarantee that holds however often it is looked at.

Why sequential: checking "p_exceed >= 0.95" in every window raises a false alarm
about once in twenty windows whenever the loss sits at the budget, so over a day
of 5-minute windows a false retrain is all but certain. These detectors instead
accumulate evidence across windows.

The detector is a Shiryaev-Roberts procedure mixed over a grid of alternatives.
For each alternative rate `p_j` it keeps `R_j <- (1 + R_j) * LR_j`, where `LR_j`
is the likelihood ratio of the new observations under `p_j` against the in-control
rate `p0`; the statistic is the mixture `R = sum_j pi_j R_j` and it alarms when
`R >= A`. While the process is in control every `LR_j` has mean at most 1 given
the past, so `R_n - n` is a supermartingale started at 0 (n = starts so far, one
per update); by Ville's inequality applied to `R_n + (H - n)`,

    P(alarm within H updates) <= H / A,

at every time the statistic is looked at, not only at updates. With
`A = H / alpha` the false-alarm probability over the horizon is at most alpha.
A mixture detects rates just past `p0` far sooner than a CUSUM tuned to one
alternative at the same guarantee, at a cost of at most log(K) nats of threshold.

Observations are Bernoulli with a weight each; the detector sees per update the
sums `x = sum c_i y_i` and `n = sum c_i` with `c_i = min(w_i, 1)`. Since
`E[LR^c] <= 1` for c in [0, 1] (Jensen), the guarantee holds for every weight;
a heavy weight counts as one observation, never as many.
Counts that are not Bernoulli (feedback per decision) use the Poisson ratio
`(p1/p0)^x * exp((p0 - p1) n)`, whose mean is at most 1 for a binomial or
Poisson count with rate at least p0 when p1 < p0.
"""
from __future__ import annotations

import math

#: Odds ratios of the alternatives against p0 (the mixture grid), equal weights.
ODDS_RATIOS = (1.1, 1.25, 1.4, 1.6, 2.0, 2.5, 3.5, 5.0, 8.0)


def sr_threshold(starts: int, alpha: float) -> float:
    """log A with A = starts / alpha: P(false alarm within `starts` updates) <= alpha."""
    if starts < 1 or not 0.0 < alpha < 1.0:
        raise ValueError("need starts >= 1 and 0 < alpha < 1")
    return math.log(starts / alpha)


def alternatives(p0: float, upper: bool = True, ratios: tuple[float, ...] = ODDS_RATIOS) -> list[float]:
    """Rates whose odds are those of p0 times (upper) or divided by (lower) each ratio."""
    if not 0.0 < p0 < 1.0:
        raise ValueError(f"p0 must be in (0, 1), got {p0}")
    odds = p0 / (1.0 - p0)
    out = []
    for r in ratios:
        o = odds * r if upper else odds / r
        out.append(o / (1.0 + o))
    return out


def llr_weights(p0: float, p1: float) -> tuple[float, float]:
    """Log-likelihood-ratio increments for one success (y=1) and one failure (y=0)."""
    if not (0.0 < p0 < 1.0 and 0.0 < p1 < 1.0) or p0 == p1:
        raise ValueError(f"need 0 < p0, p1 < 1 and p0 != p1, got p0={p0}, p1={p1}")
    return math.log(p1 / p0), math.log((1.0 - p1) / (1.0 - p0))


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


class MixtureSR:
    """Mixture Shiryaev-Roberts detector of a Bernoulli rate above (or below) `p0`.

    >>> d = MixtureSR(p0=0.10, log_threshold=sr_threshold(8640, 0.05))
    >>> [d.update(x=10, n=100) for _ in range(3)]          # at the budget: no alarm
    [False, False, False]
    >>> alarms = [d.update(x=25, n=100) for _ in range(4)]  # 0.25: alarms in the 2nd update
    >>> alarms.index(True)
    1

    `poisson=True` (lower tail only) reads x as a count with mean p * n.
    """

    def __init__(self, p0: float, log_threshold: float, upper: bool = True, poisson: bool = False,
                 ratios: tuple[float, ...] = ODDS_RATIOS) -> None:
        if poisson and upper:
            raise ValueError("the Poisson ratio is for the lower tail (upper=False)")
        self.p0, self.log_threshold, self.upper, self.poisson = p0, log_threshold, upper, poisson
        self.p1 = alternatives(p0, upper, ratios)
        self.log_pi = -math.log(len(self.p1))
        self.log_r = [-math.inf] * len(self.p1)

    def _llr(self, p1: float, x: float, n: float) -> float:
        if self.poisson:
            return x * math.log(p1 / self.p0) + (self.p0 - p1) * n
        up, down = llr_weights(self.p0, p1)
        return x * up + (n - x) * down

    def _step(self, log_r: list[float], x: float, n: float) -> list[float]:
        return [_logaddexp(0.0, r) + self._llr(p1, x, n) for r, p1 in zip(log_r, self.p1)]

    def _mix(self, log_r: list[float]) -> float:
        total = -math.inf
        for r in log_r:
            total = _logaddexp(total, r + self.log_pi)
        return total

    def update(self, x: float, n: float) -> bool:
        """Add one update's sums (`x` successes in `n`); True when the statistic reaches the threshold."""
        self.log_r = self._step(self.log_r, x, n)
        return self.get() >= self.log_threshold

    def peek(self, updates: list[tuple[float, float]]) -> float:
        """log R as it would be after `updates`, without keeping them (a mid-window look)."""
        log_r = self.log_r
        for x, n in updates:
            log_r = self._step(log_r, x, n)
        return self._mix(log_r)

    def get(self) -> float:
        """log R, the log of the mixture statistic (-inf before any evidence)."""
        return self._mix(self.log_r)

    def reset(self) -> None:
        self.log_r = [-math.inf] * len(self.p1)
