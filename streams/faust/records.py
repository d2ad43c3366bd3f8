"""`faust.Record` models of the NPO events, for Faust apps that read or write the NPO topics.

A retraining job consumes triggers with `app.topic(<prefix>triggers, value_type=Trigger)`;
an app that scores cases writes `Score` events (or an `Envelope` of many) to `<prefix>scores`.
The fields mirror the version-1 JSON Schemas in `schemas/` (and the msgspec structs the
pipeline decodes with); unknown fields of a newer minor version are not refused.
These models are for convenience at the edge: the pipeline itself decodes raw bytes with
its own bounded, typed decoder, and rejects what the schemas reject.
"""
from __future__ import annotations

from typing import Optional

import faust

_OPTIONS = {"serializer": "json", "include_metadata": False}


class Score(faust.Record, **_OPTIONS):
    """One policy decision: the model's score against threshold `tau`."""

    event_id: str
    scenario_id: str
    policy_id: str
    score: float
    tau: float
    decision: str  # act | hold | abstain
    ts: float  # event time, epoch seconds
    segment: str = "default"
    model_version: Optional[str] = None
    type: str = "score"
    v: int = 1


class Feedback(faust.Record, **_OPTIONS):
    """Feedback on a scenario's decision (like, override or abstain), optionally carrying it."""

    event_id: str
    scenario_id: str
    ts: float
    kind: str  # like | override | abstain
    source: str = "human"  # human | reviewer | audit | llm_judge
    preferred: Optional[str] = None
    weight: float = 1.0
    policy_id: Optional[str] = None
    segment: Optional[str] = None
    score: Optional[float] = None
    tau: Optional[float] = None
    decision: Optional[str] = None
    type: str = "feedback"
    v: int = 1


class Envelope(faust.Record, **_OPTIONS):
    """Up to 10,000 score and feedback events in one message (the fast path): `Score` and
    `Feedback` records to send, or, as read, their JSON objects (`typed()` makes records)."""

    events: list
    producer: Optional[str] = None
    type: str = "envelope"
    v: int = 1

    def typed(self) -> list:
        """The events as `Score` and `Feedback` records."""
        return [e if isinstance(e, faust.Record) else (Score if e.get("type") == "score" else Feedback).from_data(e)
                for e in self.events]


class Window(faust.Record, **_OPTIONS):
    """The event-time span [start, end) a statistic covers."""

    kind: str  # tumbling | hopping | cumulative
    start: float
    end: float


class WindowStats(faust.Record, **_OPTIONS):
    """Statistics of one key's window (topic `<prefix>stats`); `final` is false for early results
    of a window still open. `stats` holds every statistic by name (null where undefined)."""

    policy_id: str
    segment: str
    window: Window
    final: bool
    stats: dict
    late_events: int
    config_version: str
    type: str = "window_stats"
    v: int = 1


class Trigger(faust.Record, **_OPTIONS):
    """An action the monitor asks for (topic `<prefix>triggers`). `trigger_id` is the same
    whenever the same window fires the same rule, so a consumer acts on each id once."""

    trigger_id: str
    rule: str  # retrain | threshold_adjust | rollback | monitor_degraded
    reason: str
    policy_id: str
    segment: str
    window: Window
    evidence: dict  # the statistics behind it: loss, its interval, tau_star, coverage, ...
    config_version: str
    emitted_at: float
    type: str = "trigger"
    v: int = 1
