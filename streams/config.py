"""One configuration object for the whole job: statistics, windows, rules, state bounds.

Kafka, Redis and metrics settings join it in `streams.settings`; this part
is what shapes results, so it alone feeds the configuration version.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from kernels.layout import StateLayout
from kernels.params import StatsParams
from kernels.seen_ids import MAX_SLOTS
from streams.operators.triggers import TriggerConfig, config_version
from streams.operators.windows import WindowSpec


@dataclass(frozen=True)
class MonitorConfig:
    """Everything that decides statistics and triggers."""

    stats: StatsParams = field(default_factory=StatsParams)
    windows: WindowSpec = field(default_factory=WindowSpec)
    triggers: TriggerConfig = field(default_factory=TriggerConfig)
    n_bins: int = 20
    dedup_horizon_s: float = 86_400.0
    dedup_max_ids: int = 2_000_000
    join_horizon_s: float = 7 * 86_400.0
    abstention_handling: bool = True  # False (ablation): abstain feedback counted as a like

    def __post_init__(self) -> None:
        if self.stats.l_budget != self.triggers.l_budget:
            raise ValueError("stats.l_budget and triggers.l_budget must agree")
        if self.dedup_horizon_s <= 0 or self.join_horizon_s <= 0 or not 1 <= self.dedup_max_ids < MAX_SLOTS // 2:
            raise ValueError("dedup and join horizons must be > 0, dedup_max_ids in [1, 2^31)")

    @property
    def layout(self) -> StateLayout:
        return StateLayout(self.n_bins)

    @property
    def version(self) -> str:
        return config_version(self.stats, self.windows, self.triggers, _Shape(self.n_bins, self.abstention_handling))


@dataclass(frozen=True)
class _Shape:
    n_bins: int
    abstention_handling: bool


def monitor_config_from(data: dict | None, l_budget: float | None = None) -> MonitorConfig:
    """A MonitorConfig from the `monitor` table of a config file: sections `stats`, `windows`,
    `triggers`, plus top-level fields (n_bins, dedup_horizon_s, ...). Unknown names are errors."""
    data = dict(data or {})
    parts = {}
    for name, cls in (("stats", StatsParams), ("windows", WindowSpec), ("triggers", TriggerConfig)):
        section = dict(data.pop(name, {}) or {})
        if l_budget is not None and name in ("stats", "triggers"):
            section["l_budget"] = l_budget
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(section) - known
        if unknown:
            raise ValueError(f"unknown monitor.{name} settings: {sorted(unknown)}")
        parts[name] = cls(**section)
    known = {f.name for f in dataclasses.fields(MonitorConfig)} - set(parts)
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown monitor settings: {sorted(unknown)}")
    return MonitorConfig(**parts, **data)
