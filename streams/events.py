"""Typed event contract, version 1, as msgspec Structs.

The constraints here mirror ``schemas/*.schema.json`` field for field, so the
fast typed decode in :mod:`streams.codec` accepts what the published schemas
accept (``tests/test_codec.py`` checks the two agree; ``"v": 1.0``, which JSON
Schema cannot tell from 1, fails the typed decode and is accepted by the
codec's slower path).  Unknown fields are ignored, never rejected: minor versions may only add optional fields, so a
v1 consumer must read messages from a newer v1 producer.  ``v`` is a
``Literal[1]`` so that a future major version fails the typed decode and is
then classified as ``unknown_version`` by the codec.

Optional fields without a meaningful default are ``None`` and accept an
explicit JSON ``null``; ``omit_defaults`` keeps them off the wire.
"""

from typing import Annotated, Literal

from msgspec import Meta, Struct, field

MAX_ID_LEN = 256
"""Longest id or other free-text field, in characters."""
MAX_ENVELOPE_EVENTS = 10_000
"""Most events in one envelope; keeps one message's work bounded."""
MAX_DETAIL_LEN = 1000
"""Longest dead-letter ``detail``."""
MAX_ORIGINAL_BYTES = 4096
"""Most bytes of an offending message kept in a dead-letter record."""
MAX_EPOCH_S = 253_402_300_800.0
"""Exclusive upper bound of event times (year 10000); makes "finite" checkable
by a plain range constraint, in msgspec and in JSON Schema alike."""

Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)]
Unit = Annotated[float, Meta(ge=0.0, le=1.0)]
EpochSeconds = Annotated[float, Meta(ge=0.0, lt=MAX_EPOCH_S)]
Weight = Annotated[float, Meta(gt=0.0, le=1000.0)]
Count = Annotated[int, Meta(ge=0)]
Decision = Literal["act", "hold", "abstain"]
FeedbackKind = Literal["like", "override", "abstain"]
FeedbackSource = Literal["human", "reviewer", "audit", "llm_judge"]
Rule = Literal["retrain", "threshold_adjust", "rollback", "monitor_degraded"]
Reason = Literal[
    "not_json",
    "schema",
    "unknown_version",
    "bad_value",
    "oversized",
    "id_too_long",
    "unknown_kind",
    "bad_decision",
    "bad_source",
    "bad_preferred",
    "unknown_type",
    "too_deep",
    "unknown_magic_byte",
    "truncated_frame",
    "not_msgpack",
    "join_expired",
]
"""Why a message or event was dead-lettered; README.md says what each means."""

_TAGGED = {"tag_field": "type", "kw_only": True, "omit_defaults": True, "gc": False}


class ScoreEvent(Struct, tag="score", **_TAGGED):
    """One policy decision: the model's score against threshold ``tau``."""

    v: Literal[1]
    event_id: Id
    scenario_id: Id
    policy_id: Id
    segment: Id = "default"
    score: Unit
    tau: Unit
    decision: Decision
    ts: EpochSeconds
    model_version: Id | None = None


class FeedbackEvent(Struct, tag="feedback", **_TAGGED):
    """Feedback on a scenario's decision, optionally carrying that decision.

    ``preferred`` only means something for an ``override`` of an abstained
    decision; it is accepted (and ignored by consumers) elsewhere, because
    rejecting it would drop otherwise useful feedback.
    """

    v: Literal[1]
    event_id: Id
    scenario_id: Id
    ts: EpochSeconds
    kind: FeedbackKind
    source: FeedbackSource = "human"
    preferred: Literal["act", "hold"] | None = None
    weight: Weight = 1.0
    policy_id: Id | None = None
    segment: Id | None = None
    score: Unit | None = None
    tau: Unit | None = None
    decision: Decision | None = None

    @property
    def context_complete(self) -> bool:
        """Whether the feedback can be scored without joining a score event."""
        return None not in (self.policy_id, self.score, self.tau, self.decision)


class EnvelopeHeader(Struct, tag="envelope", **_TAGGED):
    """An envelope's own fields, checked apart from its events so that one bad
    event does not cost the good ones around it."""

    v: Literal[1]
    producer: Id | None = None


class Envelope(EnvelopeHeader, tag="envelope", **_TAGGED):
    """A batch of score/feedback events; envelopes do not nest."""

    events: Annotated[
        list[ScoreEvent | FeedbackEvent],
        Meta(min_length=1, max_length=MAX_ENVELOPE_EVENTS),
    ]


class Window(Struct, kw_only=True, gc=False):
    """The event-time span ``[start, end)`` a statistic covers."""

    kind: Literal["tumbling", "hopping", "cumulative"]
    start: EpochSeconds
    end: EpochSeconds


class Evidence(Struct, kw_only=True, gc=False):
    """Why a trigger fired; every key is always written (``null`` if unknown)
    so downstream tables get a fixed set of columns."""

    n_decisions: Count
    n_feedback: Count
    n_labels: Count
    loss: float | None = None
    loss_lo: float | None = None
    loss_hi: float | None = None
    p_exceed: float | None = None
    phi: float | None = None
    tau: float | None = None
    tau_star: float | None = None
    cost_saved: float | None = None
    cost_saved_lo: float | None = None
    heldout_saving: float | None = None
    heldout_saving_lo: float | None = None
    heldout_labels: Count | None = None
    log_r: float | None = None
    coverage: float | None = None
    abstention_rate: float | None = None
    audit_loss: float | None = None
    audit_pairs: Count | None = None
    audit_pairs_b: Count | None = None
    audit_pairs_c: Count | None = None
    evaluated_end: float | None = None


class TriggerEvent(Struct, tag="trigger", **_TAGGED):
    """An action the monitor asks for, with the evidence behind it."""

    v: Literal[1]
    trigger_id: Annotated[str, Meta(pattern="^[0-9a-f]{32}$")]
    rule: Rule
    reason: Id
    policy_id: Id
    segment: Id
    window: Window
    evidence: Evidence
    config_version: Id
    emitted_at: EpochSeconds


class WindowStats(Struct, kw_only=True, gc=False):
    """Statistics of one window; like :class:`Evidence`, all keys are written."""

    n_decisions: Count
    n_act: Count
    n_hold: Count
    n_abstain_decisions: Count
    n_feedback: Count
    n_like: Count
    n_override: Count
    n_abstain_feedback: Count
    n_labels: Count
    weight_sum: float
    loss: float | None = None
    loss_cost: float | None = None
    loss_lo: float | None = None
    loss_hi: float | None = None
    n_eff: float | None = None
    p_exceed: float | None = None
    coverage: float | None = None
    abstention_rate: float | None = None
    deferral_rate: float | None = None
    brier: float | None = None
    ece: float | None = None
    tau: float | None = None
    tau_star: float | None = None
    cost_saved: float | None = None
    cost_saved_lo: float | None = None
    audit_loss: float | None = None
    audit_n: Count | None = None
    audit_pairs: Count | None = None
    audit_pairs_b: Count | None = None
    audit_pairs_c: Count | None = None


class WindowStatsEvent(Struct, tag="window_stats", **_TAGGED):
    """Per-(policy, segment, window) statistics; ``final`` marks the last
    emission for a window, after which late events only bump counters."""

    v: Literal[1]
    policy_id: Id
    segment: Id
    window: Window
    final: bool
    stats: WindowStats
    late_events: Count
    config_version: Id


KafkaPosition = Annotated[int, Meta(ge=-1)]
"""-1 where a record stems from no single message (e.g. ``join_expired``)."""


class Source(Struct, kw_only=True, gc=False):
    """Where a dead-lettered message was read from, for replay."""

    topic: Id
    partition: KafkaPosition
    offset: KafkaPosition


class DeadLetter(Struct, tag="dead_letter", **_TAGGED):
    """A rejected message or event, with enough of it kept to diagnose and
    replay; ``original`` travels as base64 in ``original_b64``."""

    v: Literal[1]
    reason: Reason
    detail: Annotated[str, Meta(max_length=MAX_DETAIL_LEN)]
    source: Source
    original: Annotated[bytes, Meta(max_length=MAX_ORIGINAL_BYTES)] = field(
        name="original_b64"
    )
    original_size: Count
    at: EpochSeconds


Hex32 = Annotated[str, Meta(pattern="^[0-9a-f]{32}$")]
ActionDecision = Literal["applied", "advised", "skipped", "reverted", "kept"]
SkipReason = Literal["not_validated", "probation", "cooldown", "stale", "no_change"]


class ActionEvent(Struct, tag="action", **_TAGGED):
    """A decision of ``npo actuator`` on a threshold_adjust trigger, or the verdict of a change's
    probation. ``action_id`` hashes the trigger id and the decision, so a consumer de-duplicates
    republished actions by it; ``tau_after`` is the threshold in force after the action."""

    v: Literal[1]
    action_id: Hex32
    decision: ActionDecision
    skip_reason: SkipReason | None = None
    reason: Id
    policy_id: Id
    segment: Id
    trigger_id: Hex32
    change_id: Hex32 | None = None
    rollback_trigger_id: Hex32 | None = None
    event_time: EpochSeconds
    tau_before: Unit | None = None
    tau_after: Unit | None = None
    tau_target: Unit | None = None
    tau_star: Unit | None = None
    heldout_saving_lo: float | None = None
    probation_end: EpochSeconds | None = None
    loss_before: float | None = None
    loss_after: float | None = None
    n_eff_before: float | None = None
    n_eff_after: float | None = None
    z: float | None = None
    advisory: bool
    config_version: Id
    emitted_at: EpochSeconds
