"""Parameters of the derived statistics, shared by kernels and references."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StatsParams:
    """What turns accumulated sums into reported statistics.

    l_budget: the alignment-loss budget the retrain rule defends.
    confidence / interval: the loss interval ("wilson" or "jeffreys").
    a0, b0: Beta prior for the posterior exceedance probability.
    c_fp, c_fn: cost of an override of `act` (false positive) and of `hold`.
    """

    l_budget: float = 0.10
    confidence: float = 0.95
    interval: str = "wilson"
    a0: float = 1.0
    b0: float = 1.0
    c_fp: float = 1.0
    c_fn: float = 1.0

    def __post_init__(self) -> None:
        for name in ("l_budget", "confidence", "a0", "b0", "c_fp", "c_fn"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if not 0.0 < self.l_budget < 1.0:
            raise ValueError(f"l_budget must be in (0, 1), got {self.l_budget}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.interval not in ("wilson", "jeffreys"):
            raise ValueError(f"interval must be 'wilson' or 'jeffreys', got {self.interval!r}")
        if self.a0 <= 0 or self.b0 <= 0:
            raise ValueError("the Beta prior needs a0 > 0 and b0 > 0")
        if self.c_fp < 0 or self.c_fn < 0 or self.c_fp + self.c_fn == 0:
            raise ValueError("costs must be non-negative and not both zero")
