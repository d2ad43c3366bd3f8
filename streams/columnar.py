"""Columnar envelopes, version 1: a batch of events as columns of one msgpack map.

Why: a JSON envelope becomes a Python object per event, and one per field, before the
operators see it. A columnar envelope is one typed msgspec call into lists and float arrays
that the operators take as they are (:class:`streams.columns.EventColumns`).

The message is a msgpack map (keys are strings; unknown keys are ignored, as in JSON events):

============  ===========================================================================
``type``      ``"columns"``
``v``         ``1``
``producer``  string, optional
``is_score``  bin of n bytes, 1 <= n <= 10,000: 1 a score row, 0 a feedback row, in arrival order
``event_id``  array of n strings (1 to 256 characters), as in a JSON event
``scenario_id``  array of n strings
``ts``        bin of n float64, little-endian: event times in epoch seconds, [0, 253402300800)
``scores``    map, needed when any row is a score; each column holds the score rows in order:
              ``policy_id`` (strings), ``segment`` (strings, optional, default "default"),
              ``score`` and ``tau`` (bin of float64 LE, each in [0, 1]), ``decision``
              (strings: act, hold, abstain), ``model_version`` (strings or nil, optional)
``feedback``  map, needed when any row is feedback; each column holds the feedback rows in
              order: ``kind`` (strings: like, override, abstain) and, each optional and nil
              where a row has none, ``source`` (default human), ``preferred``, ``weight``
              (numbers, default 1), ``policy_id``, ``segment``, ``score``, ``tau``, ``decision``
============  ===========================================================================

An optional column (or map) may be left out or be nil, and an optional column may hold nil
for a row that has no value: either way the row gets the field's default. Each row must be
what the JSON event with the same fields would be (the same constraints:
``schemas/score.schema.json`` and ``schemas/feedback.schema.json``). A bad row is
dead-lettered on its own, with the reason its JSON event would get and that event as JSON
for ``original`` (a cell that is not msgpack: ``not_msgpack``); faults of the map itself (a
column missing or of the wrong length, more than 10,000 rows, an unknown ``v``) cost the
whole message, as an envelope's own do.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from kernels import msgpack_scan
from streams import codec
from streams.codec import MAX_MESSAGE_BYTES, DecodeError, Rejected
from streams.columns import EventColumns, FeedbackFields
from streams.events import (
    MAX_ENVELOPE_EVENTS,
    MAX_EPOCH_S,
    MAX_ORIGINAL_BYTES,
    Decision,
    FeedbackEvent,
    FeedbackKind,
    FeedbackSource,
    Id,
    ScoreEvent,
    Unit,
    Weight,
)

_F8 = np.dtype("<f8")
_MSGPACK_MAP = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
"""First bytes of a msgpack map; no JSON text and no Schema Registry frame starts with one."""


class ScoreColumns(msgspec.Struct, kw_only=True, gc=False):
    """The score rows' columns (``scores``)."""

    policy_id: list[Id]
    segment: list[Id | None] | None = None
    score: bytes
    tau: bytes
    decision: list[Decision]
    model_version: list[Id | None] | None = None


class FeedbackColumns(msgspec.Struct, kw_only=True, gc=False):
    """The feedback rows' columns (``feedback``)."""

    kind: list[FeedbackKind]
    source: list[FeedbackSource | None] | None = None
    preferred: list[Literal["act", "hold"] | None] | None = None
    weight: list[Weight | None] | None = None
    policy_id: list[Id | None] | None = None
    segment: list[Id | None] | None = None
    score: list[Unit | None] | None = None
    tau: list[Unit | None] | None = None
    decision: list[Decision | None] | None = None


class ColumnarEnvelope(msgspec.Struct, kw_only=True, gc=False):
    """The typed decode of the fast path; lengths, flags and numbers' ranges are checked after
    it (:func:`_columns`)."""

    type: Literal["columns"]
    v: Literal[1]
    producer: Id | None = None
    is_score: bytes
    event_id: Annotated[list[Id], msgspec.Meta(min_length=1, max_length=MAX_ENVELOPE_EVENTS)]
    scenario_id: list[Id]
    ts: bytes
    scores: ScoreColumns | None = None
    feedback: FeedbackColumns | None = None


_DECODER = msgspec.msgpack.Decoder(ColumnarEnvelope)
_ENCODER = msgspec.msgpack.Encoder()
_FEEDBACK_FIELDS = tuple(f.name for f in msgspec.structs.fields(FeedbackColumns))
_FEEDBACK_OPTIONAL = tuple(f.name for f in msgspec.structs.fields(FeedbackColumns) if not f.required)
_FEEDBACK_DEFAULTS = {f.name: f.default for f in msgspec.structs.fields(FeedbackEvent)
                      if f.name in _FEEDBACK_OPTIONAL}  # what a nil cell stands for


def is_columnar(data: bytes) -> bool:
    """Whether `data` is a msgpack map, as a columnar envelope is."""
    return bool(data) and data[0] in _MSGPACK_MAP


def encode(events: Sequence, producer: str | None = None) -> bytes:
    """One columnar envelope of score and feedback events (Structs), in their order;
    ValueError where :func:`decode` would reject it for its size."""
    if not 1 <= len(events) <= MAX_ENVELOPE_EVENTS:
        raise ValueError(f"an envelope holds 1..{MAX_ENVELOPE_EVENTS} events, not {len(events)}")
    batch = EventColumns.of_events(events)
    message: dict = {"type": "columns", "v": 1, "is_score": batch.is_score.astype(np.uint8).tobytes(),
                     "event_id": batch.event_id, "scenario_id": batch.scenario_id, "ts": batch.ts.astype(_F8).tobytes()}
    if producer is not None:
        message["producer"] = producer
    if batch.policy_id:
        message["scores"] = {"policy_id": batch.policy_id, "segment": batch.segment,
                             "score": batch.score.astype(_F8).tobytes(), "tau": batch.tau.astype(_F8).tobytes(),
                             "decision": batch.decision}
        if any(version is not None for version in batch.model_version):
            message["scores"]["model_version"] = batch.model_version
    if len(batch.feedback):
        message["feedback"] = {"kind": batch.feedback.kind}
        for name in _FEEDBACK_OPTIONAL:
            column = getattr(batch.feedback, name)
            if any(value is not None for value in column):  # a column of nils is left out
                message["feedback"][name] = column
    data = _ENCODER.encode(message)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"envelope of {len(data)} bytes > {MAX_MESSAGE_BYTES}")
    return data


def decode(data: bytes) -> tuple[EventColumns, list[Rejected]]:
    """The good rows of a columnar envelope, and a rejection for each bad one (or one for
    the whole message). Never raises."""
    if len(data) > MAX_MESSAGE_BYTES:
        return EventColumns.empty(), [Rejected("oversized", f"{len(data)} bytes > {MAX_MESSAGE_BYTES}", data)]
    try:
        columns = _columns(_DECODER.decode(data))
    except (msgspec.DecodeError, RecursionError):  # a ValidationError is a DecodeError
        columns = None
    if columns is not None:
        return columns, []
    try:
        events, rejected = _slow(data)
    except DecodeError as e:
        return EventColumns.empty(), [Rejected(e.reason, e.detail[:codec.MAX_DETAIL_LEN], data)]
    return EventColumns.of_events(events), rejected


def decode_events(data: bytes) -> codec.Decoded:
    """:func:`decode` as event Structs (slow: for callers that want objects)."""
    columns, rejected = decode(data)
    scores = zip(columns.policy_id, columns.segment, columns.score.tolist(), columns.tau.tolist(),
                 columns.decision, columns.model_version)
    feedback = iter(columns.feedback_events())
    events = []
    for score, eid, sid, ts in zip(columns.is_score.tolist(), columns.event_id, columns.scenario_id,
                                   columns.ts.tolist()):
        if score:
            policy, segment, value, tau, decision, version = next(scores)
            events.append(ScoreEvent(v=1, event_id=eid, scenario_id=sid, policy_id=policy, segment=segment,
                                     score=value, tau=tau, decision=decision, ts=ts, model_version=version))
        else:
            events.append(next(feedback))
    return codec.Decoded(events, rejected)


def decode_batch(messages: Sequence[bytes]) -> tuple[EventColumns, list[tuple[int, Rejected]]]:
    """The events of `messages` (JSON, framed JSON or columnar, in any mix) in order, as
    columns, and (message index, rejection) for every problem. A run of messages that are
    not columnar is decoded by :func:`streams.codec.decode_batch` in one go."""
    parts, rejected = [], []
    run: list[int] = []

    def flush() -> None:
        if run:
            events, bad = codec.decode_batch([messages[i] for i in run])
            parts.append(EventColumns.of_events(events))
            rejected.extend((run[i], r) for i, r in bad)
            run.clear()

    for i, data in enumerate(messages):
        if not is_columnar(data):
            run.append(i)
            continue
        flush()
        columns, bad = decode(data)
        parts.append(columns)
        rejected.extend((i, r) for r in bad)
    flush()
    return EventColumns.concat(parts), rejected


def _columns(m: ColumnarEnvelope) -> EventColumns | None:
    """The rows of a typed-decoded envelope, or None if any check the types could not make
    fails (lengths, flags, numbers' ranges): then the slow path says which and why."""
    n = len(m.event_id)
    if len(m.scenario_id) != n or len(m.is_score) != n or len(m.ts) != 8 * n:
        return None
    flags = np.frombuffer(m.is_score, np.uint8)
    ts = np.frombuffer(m.ts, _F8).astype(np.float64)
    if flags.max() > 1 or not ((ts >= 0) & (ts < MAX_EPOCH_S)).all():
        return None
    is_score = flags.astype(np.bool_)
    n_scores = int(np.count_nonzero(is_score))
    s, f = m.scores, m.feedback
    if (s is None) != (n_scores == 0) or (f is None) != (n_scores == n):
        return None
    policy, segment, decision, version, score, tau = [], [], [], [], np.zeros(0), np.zeros(0)
    if s is not None:
        lengths = [len(s.policy_id), len(s.decision), len(s.score) / 8, len(s.tau) / 8,
                   *(len(c) for c in (s.segment, s.model_version) if c is not None)]
        if any(length != n_scores for length in lengths):
            return None
        score, tau = np.frombuffer(s.score, _F8).astype(np.float64), np.frombuffer(s.tau, _F8).astype(np.float64)
        if not (((score >= 0) & (score <= 1)).all() and ((tau >= 0) & (tau <= 1)).all()):
            return None
        policy, decision = s.policy_id, s.decision
        segment = s.segment if s.segment is not None else ["default"] * n_scores
        if None in segment:  # nil: not given
            segment = [x if x is not None else "default" for x in segment]
        version = s.model_version if s.model_version is not None else [None] * n_scores
    feedback = EventColumns.empty().feedback
    if f is not None:
        n_feedback = n - n_scores
        optional = [getattr(f, name) for name in _FEEDBACK_OPTIONAL]
        if any(len(column) != n_feedback for column in (f.kind, *optional) if column is not None):
            return None
        feedback = FeedbackFields(f.kind, *(_filled(column, _FEEDBACK_DEFAULTS[name], n_feedback)
                                            for name, column in zip(_FEEDBACK_OPTIONAL, optional)))
    return EventColumns(is_score, m.event_id, m.scenario_id, ts, policy, segment, score, tau, decision, version,
                        feedback)


def _filled(column: list | None, default, n: int) -> list:
    """A feedback column with `default` for its nils (all of it, if it was left out)."""
    if column is None:
        return [default] * n
    if default is not None and None in column:
        return [default if value is None else value for value in column]
    return column


# --- slow path: only a failed fast decode gets here ------------------------
#
# The message is taken apart by where its values lie (kernels.msgpack_scan), never decoded
# whole: only scalar cells are decoded, one at a time, so no nesting recurses and no container
# a hostile message holds is built. Unknown keys are skipped unread, as by the typed decode.

_TOP = tuple(f.name for f in msgspec.structs.fields(ColumnarEnvelope))
_SCORE_FIELDS = tuple(f.name for f in msgspec.structs.fields(ScoreColumns))
_NIL = b"\xc0"
_FLOATS = {f.name for f in msgspec.structs.fields(ScoreColumns) if f.type is bytes}  # sent as bin of float64
_OPTIONAL = {"scores": {f.name for f in msgspec.structs.fields(ScoreColumns) if not f.required},
             "feedback": set(_FEEDBACK_OPTIONAL)}  # columns, by map
_NAMES = {fields: msgpack_scan.names([f.encode() for f in fields])
          for fields in (_TOP, _SCORE_FIELDS, _FEEDBACK_FIELDS)}


class _Cell:
    """A cell that is no scalar of the format: a container (`depth` > 0) or bytes that are not
    msgpack. Never decoded; it fails the row's check, and shows in the dead letter as its kind."""

    def __init__(self, kind: str, size: int, depth: int = 0) -> None:
        self.kind, self.size, self.depth = kind, size, depth

    def __repr__(self) -> str:
        return f"<{self.kind} of {self.size} msgpack bytes>"


class _Message:
    """A columnar envelope's bytes, taken apart value by value."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.buf = np.frombuffer(data, np.uint8)

    def fields(self, at: int, names: tuple[str, ...], what: str) -> dict[str, tuple[int, int, int]]:
        """(start, end, depth) of each of `names` the map at `at` holds."""
        status, start, end, depth = msgpack_scan.map_fields(self.buf, at, *_NAMES[names])
        if status == msgpack_scan.MALFORMED:
            raise DecodeError("not_msgpack", f"{what}: not valid msgpack")
        if status != msgpack_scan.OK:
            raise DecodeError("schema", f"{what} must be a map")
        return {name: (s, e, d) for name, s, e, d in zip(names, start.tolist(), end.tolist(), depth.tolist())
                if s >= 0 and self.data[s:e] != _NIL}  # nil: not given, as the typed decode reads it

    def scalar(self, span: tuple[int, int, int], kind=Any):
        """The value at `span` if it is a scalar (decoded as `kind`), else a _Cell."""
        start, end, depth = span
        if depth > 0:
            return _Cell("container", end - start, depth)
        try:
            return msgspec.msgpack.decode(self.data[start:end], type=kind)
        except msgspec.DecodeError:  # a ValidationError too
            return _Cell("bad value", end - start)

    def column(self, span: tuple[int, int, int], name: str, rows: int, floats: bool = False) -> list:
        """The `rows` values of a column: its cells, or with `floats` the numbers of its bin."""
        if floats:
            value = self.scalar(span, bytes)
            if not isinstance(value, bytes) or len(value) != 8 * rows:
                raise DecodeError("schema", f"{name} must be bin of {rows} float64")
            return np.frombuffer(value, _F8).tolist()
        status, count, start, end, depth = msgpack_scan.array_items(self.buf, span[0], rows)
        if status == msgpack_scan.MALFORMED:
            raise DecodeError("not_msgpack", f"{name}: not valid msgpack")
        if status != msgpack_scan.OK or count != rows:
            raise DecodeError("schema", f"{name} must be an array of {rows}")
        return [self.scalar(cell) for cell in zip(start.tolist(), end.tolist(), depth.tolist())]


def _slow(data: bytes) -> tuple[list, list[Rejected]]:
    """The good rows of `data` as events, and a rejection for each bad row; DecodeError for
    faults of the message itself."""
    message = _Message(data)
    if msgpack_scan.value_end(message.buf, 0) != len(data):
        raise DecodeError("not_msgpack", "a columnar envelope is one msgpack map: bytes are missing or follow it")
    top = message.fields(0, _TOP, "a columnar envelope")
    kind = message.scalar(top["type"]) if "type" in top else None
    if kind != "columns":
        raise DecodeError("unknown_type", 'a msgpack message must be a map with "type": "columns"')
    header = {name: message.scalar(top[name]) for name in ("v", "producer") if name in top}
    codec._check_header({**header, "type": "envelope"}, False)
    n, is_score = _rows(message, top)
    groups = {"scores": (_SCORE_FIELDS, sum(is_score)), "feedback": (_FEEDBACK_FIELDS, n - sum(is_score))}
    columns: dict[str, dict[str, list]] = {}
    for group, (names, rows) in groups.items():
        if group not in top:
            if rows:
                raise DecodeError("schema", f"{group} must be a map of columns: {rows} rows are {group}")
            continue
        if not rows:
            raise DecodeError("schema", f"{group} given, but no row is one")
        given = message.fields(top[group][0], names, group)
        for name in names:
            if name not in given and name not in _OPTIONAL[group]:
                raise DecodeError("schema", f"{group} lacks the column {name}")
        columns[group] = {name: message.column(given[name], name, rows, group == "scores" and name in _FLOATS)
                          for name in names if name in given}
    ts = message.column(top["ts"], "ts", n, floats=True)
    ids, sids = message.column(top["event_id"], "event_id", n), message.column(top["scenario_id"], "scenario_id", n)
    good, bad = [], []
    taken = {"scores": 0, "feedback": 0}
    for i, score in enumerate(is_score):
        group = "scores" if score else "feedback"
        j = taken[group]
        taken[group] += 1
        row = {"type": "score" if score else "feedback", "v": 1, "event_id": ids[i], "scenario_id": sids[i],
               "ts": ts[i]}
        for name, column in columns.get(group, {}).items():
            if column[j] is not None or name not in _OPTIONAL[group]:  # nil in an optional column: not given
                row[name] = column[j]
        try:
            good.append(_event(row))
        except DecodeError as e:
            raw = _json(row)
            bad.append(Rejected(e.reason, e.detail[:codec.MAX_DETAIL_LEN], raw[:MAX_ORIGINAL_BYTES], len(raw)))
    return good, bad


def _event(row: dict):
    """The event of a row; DecodeError says why not: as for its JSON event, and a cell that is
    not msgpack is not_msgpack, one nested deeper than an event may be too_deep."""
    cells = [(name, v) for name, v in row.items() if type(v) is _Cell]
    for name, cell in cells:
        if cell.kind == "bad value":
            raise DecodeError("not_msgpack", f"{name}: not valid msgpack for the format")
        if 1 + cell.depth > codec.MAX_EVENT_DEPTH:
            raise DecodeError("too_deep", f"an event nested deeper than {codec.MAX_EVENT_DEPTH}")
    return codec._check(row, False)


def _rows(message: _Message, top: dict) -> tuple[int, list[bool]]:
    """The number of rows and which are scores; DecodeError if the row columns do not agree."""
    if "event_id" not in top:
        raise DecodeError("schema", "event_id must be a non-empty array")
    status, n, *_ = msgpack_scan.array_items(message.buf, top["event_id"][0], 0)  # its length alone
    if status == msgpack_scan.NOT_THIS_KIND or (status == msgpack_scan.OK and n == 0):
        raise DecodeError("schema", "event_id must be a non-empty array")
    if n > MAX_ENVELOPE_EVENTS:
        raise DecodeError("oversized", f"{n} events > {MAX_ENVELOPE_EVENTS}")
    for name in ("scenario_id", "ts", "is_score"):
        if name not in top:
            raise DecodeError("schema", f"a columnar envelope lacks {name}")
    flags = message.scalar(top["is_score"], bytes)
    if not isinstance(flags, bytes) or len(flags) != n or flags.count(0) + flags.count(1) != n:
        raise DecodeError("schema", f"is_score must be bin of {n} bytes, each 0 or 1")
    return n, [b == 1 for b in flags]


def _shown(value) -> str:
    """What JSON cannot hold, shown by its kind: a _Cell, or a msgpack ext."""
    if isinstance(value, msgspec.msgpack.Ext):
        return f"<msgpack ext of type {value.code}, {len(value.data)} bytes>"
    return repr(value)


def _json(row: dict) -> bytes:
    """A rejected row as JSON, for the dead letter's `original` (a cell that is no scalar of
    the format shows as its kind and size)."""
    try:
        return msgspec.json.encode(row, enc_hook=_shown)
    except (TypeError, OverflowError, UnicodeEncodeError) as e:
        return f'{{"unencodable row": "{type(e).__name__}"}}'.encode()
