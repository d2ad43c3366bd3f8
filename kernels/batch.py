"""Column batches, checked before any kernel sees them.

The kernels trust their input (a jitted loop cannot raise a useful error),
so every batch passes through `ScoreBatch.check` / `FeedbackBatch.check`
first, which name the first bad row and value.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from kernels.layout import DECISIONS, KINDS, PREFERRED, SOURCES
from kernels.update import update


class BatchError(ValueError):
    """A batch the statistics layer refuses: which column, which row, what value."""


def _first_bad(name: str, values: np.ndarray, bad: np.ndarray, rule: str) -> None:
    if bad.any():
        i = int(np.argmax(bad))
        raise BatchError(f"{name}[{i}] = {values[i]!r}: {rule}")


def _check_slots(slot: np.ndarray, n_slots: int) -> None:
    _first_bad("slot", slot, (slot >= n_slots) | (slot < -1), f"must be -1 (skip) or a row of the state's {n_slots}")


def _codes(name: str, values: np.ndarray, names: tuple[str, ...]) -> None:
    _first_bad(name, values, (values < 0) | (values >= len(names)), f"unknown {name} code (known: {names})")


def _as(values, dtype) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=dtype)


def _as_code(name: str, values) -> np.ndarray:
    """int8 codes, refusing values a cast would wrap (256 must not become code 0)."""
    raw = np.asarray(values)
    if raw.dtype != np.int8 and raw.size:
        if not np.issubdtype(raw.dtype, np.integer):
            raise BatchError(f"{name} codes must be integers, got dtype {raw.dtype}")
        _first_bad(name, raw, (raw < -128) | (raw > 127), f"unknown {name} code")
    return np.ascontiguousarray(raw, dtype=np.int8)


@dataclass
class ScoreBatch:
    """Decisions: the state row (slot) each goes to, its decision code and threshold."""

    slot: np.ndarray
    decision: np.ndarray
    tau: np.ndarray

    def __post_init__(self) -> None:
        self.slot, self.decision, self.tau = _as(self.slot, np.int64), _as_code("decision", self.decision), _as(self.tau, np.float64)
        _same_length(self)

    def check(self, n_slots: int) -> "ScoreBatch":
        _check_slots(self.slot, n_slots)
        _codes("decision", self.decision, DECISIONS)
        _first_bad("tau", self.tau, ~((self.tau >= 0.0) & (self.tau <= 1.0)), "must be a finite number in [0, 1]")
        return self

    @classmethod
    def empty(cls) -> "ScoreBatch":
        return cls(np.empty(0, np.int64), np.empty(0, np.int8), np.empty(0))


@dataclass
class FeedbackBatch:
    """Labelled feedback joined to its decision: slot, codes, the decision's score, weight."""

    slot: np.ndarray
    kind: np.ndarray
    source: np.ndarray
    decision: np.ndarray
    preferred: np.ndarray
    score: np.ndarray
    weight: np.ndarray
    pair: np.ndarray | None = None  # audit-pair codes (kernels.layout.PAIR_*); None: no pairs
    repeat: np.ndarray | None = None  # labels on decisions labelled before; None: none is
    lag: np.ndarray | None = None  # panes from the decision's pane to this one; None: 0 (the same pane)

    def __post_init__(self) -> None:
        self.slot = _as(self.slot, np.int64)
        if self.pair is None:
            self.pair = np.full(len(self.slot), -1, np.int8)
        self.repeat = np.zeros(len(self.slot), np.bool_) if self.repeat is None else _as(self.repeat, np.bool_)
        self.lag = np.zeros(len(self.slot), np.int64) if self.lag is None else _as(self.lag, np.int64)
        for name in ("kind", "source", "decision", "preferred", "pair"):
            setattr(self, name, _as_code(name, getattr(self, name)))
        self.score, self.weight = _as(self.score, np.float64), _as(self.weight, np.float64)
        _same_length(self)

    def check(self, n_slots: int) -> "FeedbackBatch":
        _check_slots(self.slot, n_slots)
        _codes("kind", self.kind, KINDS)
        _codes("source", self.source, SOURCES)
        _codes("decision", self.decision, DECISIONS)
        _codes("preferred", self.preferred, PREFERRED)
        _first_bad("pair", self.pair, (self.pair < -1) | (self.pair > 2), "unknown audit-pair code (-1 to 2)")
        _first_bad("score", self.score, ~((self.score >= 0.0) & (self.score <= 1.0)), "must be a finite number in [0, 1]")
        _first_bad("weight", self.weight, ~((self.weight > 0.0) & np.isfinite(self.weight)), "must be finite and > 0")
        return self

    @classmethod
    def empty(cls) -> "FeedbackBatch":
        z8 = np.empty(0, np.int8)
        return cls(np.empty(0, np.int64), z8, z8, z8, z8, np.empty(0), np.empty(0))


def _same_length(batch) -> None:
    lengths = {f.name: len(getattr(batch, f.name)) for f in fields(batch)}
    if len(set(lengths.values())) > 1:
        raise BatchError(f"columns differ in length: {lengths}")


def apply(state: np.ndarray, scores: ScoreBatch, feedback: FeedbackBatch) -> None:
    """Check both batches, then add them to `state` in one kernel call."""
    n = state.shape[0]
    scores.check(n)
    feedback.check(n)
    f = feedback
    update(state, scores.slot, scores.decision, scores.tau, f.slot, f.kind, f.source, f.decision, f.preferred, f.score, f.weight,
           f.pair, f.repeat, f.lag)
