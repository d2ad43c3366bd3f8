"""Bytes to events and back: fast for good input, never raising on bad input.

Good traffic costs one typed msgspec decode straight into Structs.  Only a
failed decode pays for the slow path, which works out *why* it failed, so the
dead-letter topic carries a reason an operator can act on, and which salvages
the good events of an envelope whose own fields are fine.
"""

import json
import math
import re
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import msgspec
import msgspec.inspect as mi

from streams.events import (
    MAX_DETAIL_LEN,
    MAX_ENVELOPE_EVENTS,
    MAX_ID_LEN,
    MAX_ORIGINAL_BYTES,
    DeadLetter,
    Envelope,
    EnvelopeHeader,
    FeedbackEvent,
    Reason,
    ScoreEvent,
    Source,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_ENVELOPE_EVENTS",
    "MAX_ID_LEN",
    "MAX_MESSAGE_BYTES",
    "DecodeError",
    "Decoded",
    "Event",
    "Rejected",
    "dead_letter",
    "decode",
    "decode_all_good",
    "decode_batch",
    "decode_strict",
    "encode",
    "encode_envelope",
]

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""Larger messages are rejected as ``oversized`` before any parsing."""
MAX_DEPTH = 16
"""Deepest nesting of a whole message ({} and [] count one level each)."""

Event = ScoreEvent | FeedbackEvent


class DecodeError(Exception):
    """Raised by :func:`decode_strict`; ``reason`` is a dead-letter reason."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Rejected(NamedTuple):
    """A rejected message or envelope event.  ``raw`` is the whole message, or
    for one event of an envelope its re-encoding cut to MAX_ORIGINAL_BYTES,
    in which case ``size`` is the uncut length (None: ``raw`` is whole)."""

    reason: Reason
    detail: str
    raw: bytes
    size: int | None = None


class Decoded(NamedTuple):
    events: list[Event]
    errors: list[Rejected]


_DECODER = msgspec.json.Decoder(ScoreEvent | FeedbackEvent | Envelope)
_EVENT_TYPES = {"score": ScoreEvent, "feedback": FeedbackEvent}


def decode(data: bytes) -> Decoded:
    """Decode one score/feedback event or an envelope of them.  Never raises:
    every problem comes back as a :class:`Rejected` in ``errors``."""
    if len(data) > MAX_MESSAGE_BYTES:
        return _rejected("oversized", f"{len(data)} bytes > {MAX_MESSAGE_BYTES}", data)
    try:
        message = _DECODER.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return _slow(data)
    if _too_deep(data, message):
        return _rejected("too_deep", f"nested deeper than {MAX_DEPTH}", data)
    return Decoded(message.events if type(message) is Envelope else [message], [])


def _known_structure(message: ScoreEvent | FeedbackEvent | Envelope) -> tuple[int, int]:
    """(depth, containers) of a decoded message's known fields."""
    return (3, len(message.events) + 2) if type(message) is Envelope else (1, 1)


def _too_deep(data: bytes, message: ScoreEvent | FeedbackEvent | Envelope) -> bool:
    """Nested deeper than MAX_DEPTH. Unknown fields were skipped unseen; each bracket beyond
    the known structure can add at most one level, so most messages need no scan."""
    known_depth, known_containers = _known_structure(message)
    return known_depth + data.count(b"{") + data.count(b"[") - known_containers > MAX_DEPTH \
        and _depth(data) > MAX_DEPTH


def decode_all_good(messages: Sequence[bytes]) -> list[Event] | None:
    """The events of `messages` in order, in one msgspec call, if every message is good;
    None if any is not (then :func:`decode` each, to find which and why).

    Single events cost little to decode but much to decode one call at a time. The messages
    are joined as JSON lines: no message holds a newline byte, so each line is exactly one
    message, and decoding lines is decoding each message on its own."""
    n = len(messages)
    if not n:
        return []
    if max(map(len, messages)) > MAX_MESSAGE_BYTES:
        return None
    joined = b"\n".join(messages)
    if joined.count(b"\n") != n - 1:
        return None
    try:
        decoded = _DECODER.decode_lines(joined)
    except (msgspec.DecodeError, RecursionError):
        return None
    if len(decoded) != n:  # blank messages are skipped as blank lines
        return None
    if Envelope not in set(map(type, decoded)):  # single events: no per-message Python work
        events, known_depth, known_containers = decoded, 1, n
    else:
        events = []
        known_depth, known_containers = 1, 0
        for message in decoded:
            depth, containers = _known_structure(message)
            known_depth, known_containers = max(known_depth, depth), known_containers + containers
            if type(message) is Envelope:
                events.extend(message.events)
            else:
                events.append(message)
    # as in _too_deep, for all messages at once: the extra brackets of all bound those of each
    if known_depth + joined.count(b"{") + joined.count(b"[") - known_containers > MAX_DEPTH:
        if any(map(_too_deep, messages, decoded)):
            return None
    return events


def decode_batch(messages: Sequence[bytes]) -> tuple[list[Event], list[tuple[int, Rejected]]]:
    """The events of `messages` in order, and (message index, rejection) for every problem:
    one msgspec call when all are good (:func:`decode_all_good`), one per message otherwise."""
    events = decode_all_good(messages)
    if events is not None:
        return events, []
    events, rejected = [], []
    for i, data in enumerate(messages):
        decoded = decode(data)
        events.extend(decoded.events)
        rejected.extend((i, r) for r in decoded.errors)
    return events, rejected


def decode_strict(data: bytes) -> list[Event]:
    """All-or-nothing :func:`decode`, for callers with no dead-letter topic."""
    events, errors = decode(data)
    if errors:
        raise DecodeError(errors[0].reason, errors[0].detail)
    return events


def _enc_hook(obj: object) -> object:
    """Statistics computed with numpy arrive as numpy scalars."""
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_ENCODER = msgspec.json.Encoder(enc_hook=_enc_hook)


def encode(obj: msgspec.Struct) -> bytes:
    """JSON for any event Struct (non-finite floats are written as null)."""
    return _ENCODER.encode(obj)


def encode_envelope(events: Sequence[Event], producer: str | None = None) -> bytes:
    """One envelope message; ValueError where :func:`decode` would reject it
    for its size, since producing one would only feed the dead-letter topic."""
    if not 1 <= len(events) <= MAX_ENVELOPE_EVENTS:
        raise ValueError(f"an envelope holds 1..{MAX_ENVELOPE_EVENTS} events, not {len(events)}")
    data = _ENCODER.encode(Envelope(v=1, producer=producer, events=list(events)))
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"envelope of {len(data)} bytes > {MAX_MESSAGE_BYTES}")
    return data


def dead_letter(rejected: Rejected, topic: str, partition: int, offset: int, now: float) -> DeadLetter:
    """The dead-letter record for ``rejected`` read at topic/partition/offset."""
    return DeadLetter(
        v=1,
        reason=rejected.reason,
        detail=rejected.detail[:MAX_DETAIL_LEN],
        source=Source(topic=topic, partition=partition, offset=offset),
        original=bytes(rejected.raw[:MAX_ORIGINAL_BYTES]),
        original_size=len(rejected.raw) if rejected.size is None else rejected.size,
        at=now,
    )


# --- slow path: only failed decodes get here -------------------------------


def _rejected(reason: Reason, detail: str, data: bytes) -> Decoded:
    return Decoded([], [Rejected(reason, detail[:MAX_DETAIL_LEN], data)])


def _slow(data: bytes) -> Decoded:
    if _depth(data) > MAX_DEPTH:
        return _rejected("too_deep", f"nested deeper than {MAX_DEPTH}", data)
    lenient = False
    try:
        value = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        value, lenient = _parse_lenient(data), True
        if value is None:
            return _rejected("not_json", str(exc), data)
    if isinstance(value, dict) and value.get("type") == "envelope":
        return _salvage(value, data, lenient)
    checked = _check(value, lenient)
    if isinstance(checked, tuple):
        return _rejected(*checked, data)
    return Decoded([checked], [])


def _salvage(envelope: dict, data: bytes, lenient: bool) -> Decoded:
    """Reject the whole envelope only for envelope-level faults; otherwise keep
    each good event and reject each bad one on its own."""
    header = {key: value for key, value in envelope.items() if key != "events"}
    problem = _header_problem(header, lenient)
    if problem is not None:
        return _rejected(*problem, data)
    events = envelope.get("events")
    if not isinstance(events, list) or not events:
        return _rejected("schema", "events must be a non-empty array", data)
    if len(events) > MAX_ENVELOPE_EVENTS:
        return _rejected("oversized", f"{len(events)} events > {MAX_ENVELOPE_EVENTS}", data)
    good, bad = [], []
    for item in events:
        checked = _check(item, lenient)
        if isinstance(checked, tuple):
            raw = _reencode(item)
            bad.append(Rejected(*checked, raw[:MAX_ORIGINAL_BYTES], len(raw)))
        else:
            good.append(checked)
    return Decoded(good, bad)


def _header_problem(header: dict, lenient: bool) -> tuple[Reason, str] | None:
    problem = _version_problem(header)
    if problem is None and lenient:
        problem = _literal_problem(header)
    if problem is None:
        try:
            msgspec.convert(header, EnvelopeHeader)
        except msgspec.ValidationError as exc:
            problem = _classify(EnvelopeHeader, header, str(exc)), str(exc)
    return problem


def _check(item: object, lenient: bool) -> Event | tuple[Reason, str]:
    """The event in ``item``, or the (reason, detail) it is rejected for.  The
    order of checks sets precedence: a message of another type or major
    version is not blamed for fields it may legitimately lack.  Only a
    ``lenient`` parse can have put NaN/Infinity literals in ``item``."""
    if not isinstance(item, dict):
        return "unknown_type", f"expected an object, got {type(item).__name__}"
    kind = item.get("type")
    if kind == "envelope":
        return "unknown_type", "envelopes do not nest"
    cls = _EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return "unknown_type", f"type {_show(kind)} is not score, feedback or envelope"
    problem = _version_problem(item)
    if problem is None and lenient:
        problem = _literal_problem(item)
    if problem is not None:
        return problem
    try:
        return msgspec.convert(item, cls)
    except msgspec.ValidationError as exc:
        return _classify(cls, item, str(exc)), str(exc)


def _version_problem(obj: dict) -> tuple[Reason, str] | None:
    v = obj.get("v")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "schema", f"v must be the integer 1, got {_show(v)}"
    return None if v == 1 else ("unknown_version", f"v={_show(v)}; this consumer reads v=1")


class _Literal(float):
    """A NaN or Infinity literal, which is not JSON; told apart from a number
    overflowing a double (1e999), which is JSON, merely out of range."""


def _floats(value: object) -> Iterator[float]:
    """Every float in a parsed value, found without recursion."""
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, float):
            yield value


def _literal_problem(value: object) -> tuple[Reason, str] | None:
    if any(type(x) is _Literal for x in _floats(value)):
        return "bad_value", "NaN or Infinity, which JSON cannot carry"
    return None


def _parse_lenient(data: bytes) -> object | None:
    """Python's json reads what msgspec refuses as NaN/Infinity literals or as
    numbers beyond a double.  Using it only for such input lets the events
    carrying them be rejected as bad_value while their neighbours survive;
    anything else msgspec refused (Python would accept lone surrogates, say)
    stays not_json."""
    try:
        value = json.loads(data, parse_constant=_Literal)
        _reencode(value)
    except (ValueError, RecursionError):
        return None
    return value if any(not math.isfinite(x) for x in _floats(value)) else None


def _reencode(value: object) -> bytes:
    """An event's bytes for its dead letter; NaN literals are kept as written."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


_AT_FIELD = re.compile(r" - at `\$\.(\w+)`$")


def _field_kinds(cls: type) -> dict[str, str]:
    kinds = {}
    for field in mi.type_info(cls).fields:
        t = field.type
        if isinstance(t, mi.UnionType):
            t = next(member for member in t.types if not isinstance(member, mi.NoneType))
        if isinstance(t, (mi.FloatType, mi.IntType)):
            kinds[field.encode_name] = "number"
        elif isinstance(t, mi.StrType):
            kinds[field.encode_name] = "string"
        elif isinstance(t, mi.LiteralType) and all(isinstance(x, str) for x in t.values):
            kinds[field.encode_name] = "enum"
    return kinds


_KINDS = {cls: _field_kinds(cls) for cls in (ScoreEvent, FeedbackEvent, EnvelopeHeader)}


def _classify(cls: type, obj: dict, message: str) -> Reason:
    """Reason for msgspec's first validation error on ``obj``: a value of the
    right JSON type that breaks a bound is bad_value (too long a string:
    oversized; an unlisted enum string: unknown_kind); anything else, such as a
    missing field or a wrong type, is schema."""
    match = _AT_FIELD.search(message)
    if match is None:
        return "schema"
    value, kind = obj.get(match[1]), _KINDS[cls].get(match[1])
    if kind == "enum" and isinstance(value, str):
        return "unknown_kind"
    if kind == "string" and isinstance(value, str):
        return "oversized" if len(value) > MAX_ID_LEN else "bad_value"
    if kind == "number" and type(value) in (int, float):
        return "bad_value"
    return "schema"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_STRING = re.compile(rb'"[^"]*"')
_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_BRACKET_OR_QUOTE = bytes(b for b in range(256) if b not in b'[]{}"')


def _depth(data: bytes) -> int:
    """Nesting depth from C-level byte scans alone, capped just past MAX_DEPTH.

    Escaped backslashes and quotes go first, so the quotes left delimit
    strings; with everything but quotes and brackets deleted, deleting the
    strings leaves the brackets; each pass deleting adjacent pairs then peels
    off one level.  Brackets no pass can pair (malformed input) count as
    depth, so an unclosed ``[[[[...`` is too deep rather than a parser's
    recursion problem."""
    brackets = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_BRACKET_OR_QUOTE)
    brackets = _STRING.sub(b"", brackets).replace(b'"', b"")
    depth = 0
    while brackets and depth <= MAX_DEPTH:
        peeled = _PAIR.sub(b"", brackets)
        if len(peeled) == len(brackets):
            return depth + len(brackets)
        brackets, depth = peeled, depth + 1
    return depth
