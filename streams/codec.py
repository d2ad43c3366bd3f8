"""Bytes to events and back: fast for good input, never raising on bad input.

Good traffic costs one typed msgspec decode straight into Structs.  Only a
failed decode pays for the slow path, which works out *why* it failed, so the
dead-letter topic carries a reason an operator can act on, and which salvages
the good events of an envelope whose own fields are fine.

Messages framed by a Confluent Schema Registry serializer (magic byte 0, a
4-byte big-endian schema id, then the JSON) are read too.  Plain JSON cannot
start with byte 0, so it never pays for this: a framed message fails the fast
decode at its first byte and is unwrapped on the way to the slow path.
"""

import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import msgspec
import msgspec.inspect as mi
import numpy as np

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
    "MAX_EVENT_DEPTH",
    "MAX_ID_LEN",
    "MAX_MESSAGE_BYTES",
    "MAX_SCHEMA_IDS",
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
    "schema_ids",
]

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""Larger messages are rejected as ``oversized`` before any parsing."""
MAX_DEPTH = 16
"""Deepest nesting of a whole message ({} and [] count one level each)."""
MAX_EVENT_DEPTH = MAX_DEPTH - 2
"""Deepest nesting of one event of an envelope: the envelope and its events
array take two levels of the message's MAX_DEPTH."""
MAX_SCHEMA_IDS = 1024
"""Most distinct schema ids :data:`schema_ids` keeps apart, so hostile frames
cannot grow it without bound; later new ids are counted under -1."""

schema_ids: Counter[int] = Counter()
"""Messages read in this process per Schema Registry schema id, whether or not
the JSON in their frames was good (a message over MAX_MESSAGE_BYTES is not read),
for a metric to export."""

Event = ScoreEvent | FeedbackEvent


class DecodeError(Exception):
    """Raised by :func:`decode_strict`; ``reason`` is a dead-letter reason."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Rejected(NamedTuple):
    """A rejected message or envelope event.  ``raw`` is the whole message, or
    for one event of an envelope its own bytes cut to MAX_ORIGINAL_BYTES, in
    which case ``size`` is the uncut length (None: ``raw`` is whole)."""

    reason: Reason
    detail: str
    raw: bytes
    size: int | None = None


class Decoded(NamedTuple):
    events: list[Event]
    errors: list[Rejected]


_DECODER = msgspec.json.Decoder(ScoreEvent | FeedbackEvent | Envelope)
_EVENT_DECODER = msgspec.json.Decoder(Event)
_EVENT_TYPES = {"score": ScoreEvent, "feedback": FeedbackEvent}


def decode(data: bytes) -> Decoded:
    """Decode one score/feedback event or an envelope of them, bare or in a
    Schema Registry frame (its id counted in :data:`schema_ids`).  Never raises:
    every problem comes back as a :class:`Rejected` in ``errors``."""
    if len(data) > MAX_MESSAGE_BYTES:
        return _rejected("oversized", f"{len(data)} bytes > {MAX_MESSAGE_BYTES}", data)
    try:
        message = _DECODER.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return _not_plain_json(data)
    if _too_deep(data, message):
        return _slow(data)
    return Decoded(message.events if type(message) is Envelope else [message], [])


def _known_structure(message: ScoreEvent | FeedbackEvent | Envelope) -> tuple[int, int]:
    """(depth, containers) of a decoded message's known fields."""
    return (3, len(message.events) + 2) if type(message) is Envelope else (1, 1)


def _too_deep(data: bytes, message: ScoreEvent | FeedbackEvent | Envelope) -> bool:
    """Nested deeper than MAX_DEPTH. Unknown fields were skipped unseen; each bracket beyond
    the known structure can add at most one level, so most messages need no scan."""
    known_depth, known_containers = _known_structure(message)
    return known_depth + _brackets(data) - known_containers > MAX_DEPTH \
        and _depth(data) > MAX_DEPTH


def decode_all_good(messages: Sequence[bytes]) -> list[Event] | None:
    """The events of `messages` in order, if every message is good; None if any is not
    (then :func:`decode` each, to find which and why).

    Single events cost little to decode but much to decode one call at a time. Small
    messages are joined as JSON lines and decoded in one msgspec call: only when no message
    holds a newline byte, so each line is exactly one message, and decoding lines is
    decoding each message on its own. Large ones (envelopes, some 4 KB and more on average)
    are decoded a call each, which costs less than joining and scanning them. Schema
    Registry frames make the first try fail; their JSON is then tried the same way, and
    their ids counted if it is good."""
    events = _all_good(messages)
    if events is None and any(m[:1] == b"\0" for m in messages):
        return _all_good_framed(messages)
    return events


def _all_good_framed(messages: Sequence[bytes]) -> list[Event] | None:
    """:func:`_all_good` of the JSON of the framed messages and the others as they are."""
    if max(map(len, messages)) > MAX_MESSAGE_BYTES:
        return None
    headers = [m[:_FRAME] for m in messages if m[:1] == b"\0"]
    if min(map(len, headers)) < _FRAME:
        return None
    events = _all_good([m[_FRAME:] if m[:1] == b"\0" else m for m in messages])
    if events is not None:
        for header, n in Counter(headers).items():
            _count_schema_id(header, n)
    return events


def _all_good(messages: Sequence[bytes]) -> list[Event] | None:
    """:func:`decode_all_good` for plain JSON messages."""
    n = len(messages)
    if not n:
        return []
    size = sum(map(len, messages))
    if max(map(len, messages)) > MAX_MESSAGE_BYTES:
        return None
    try:
        if size < n * _LINES_BELOW:  # small messages: one call for all of them
            joined = b"\n".join(messages)
            if _count(joined, b"\n") != n - 1:
                return None
            decoded = _DECODER.decode_lines(joined)
            if len(decoded) != n:  # blank messages are skipped as blank lines
                return None
            brackets = _brackets(joined)
        else:  # envelopes: a call a message costs less than joining and scanning them
            decoded = list(map(_DECODER.decode, messages))
            brackets = sum(map(_brackets, messages))
    except (msgspec.DecodeError, RecursionError):
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
    if known_depth + brackets - known_containers > MAX_DEPTH:
        if any(map(_too_deep, messages, decoded)):
            return None
    return events


_LINES_BELOW = 4096
"""Messages shorter than this on average are decoded as JSON lines in one call."""


def _count(data: bytes, byte: bytes) -> int:
    """How often `byte` occurs in `data` (numpy counts twice as fast as bytes.count)."""
    return int(np.count_nonzero(np.frombuffer(data, np.uint8) == ord(byte)))


def _brackets(data: bytes) -> int:
    """How many `{` and `[` bytes `data` holds, in one pass: they are the two bytes that read
    `{` with bit 5 set."""
    return int(np.count_nonzero((np.frombuffer(data, np.uint8) | 0x20) == ord("{")))


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


_FRAME = 5
"""Bytes of a Schema Registry frame's header: magic byte 0, 4-byte schema id."""
_JSON_START = frozenset(b' \t\n\r{["-0123456789tfn')
"""The bytes a JSON text can start with (RFC 8259); byte 0 is none of them."""


def _starts_json(data: bytes) -> bool:
    return not data or data[0] in _JSON_START


def _not_plain_json(data: bytes) -> Decoded:
    """A message that failed the fast decode: judged by the slow path if JSON can start with
    its first byte, unwrapped if it is a Schema Registry frame, decoded as a columnar envelope
    if it is a msgpack map, else rejected as unknown_magic_byte."""
    if _starts_json(data):
        return _slow(data)
    if data[0] == 0:
        return _framed(data)
    from streams import columnar  # it builds on this module

    if columnar.is_columnar(data):
        return columnar.decode_events(data)
    return _rejected("unknown_magic_byte", f"first byte 0x{data[0]:02x} starts neither JSON, a Schema "
                     "Registry frame (0x00) nor a msgpack map (a columnar envelope)", data)


def _count_schema_id(data: bytes, n: int = 1) -> None:
    """Counts ``n`` messages of the schema id in the frame header ``data`` starts with."""
    schema_id = int.from_bytes(data[1:_FRAME], "big")
    if schema_id not in schema_ids and len(schema_ids) >= MAX_SCHEMA_IDS:
        schema_id = -1
    schema_ids[schema_id] += n


def _framed(data: bytes) -> Decoded:
    """A message in a Schema Registry frame: its schema id is counted and its JSON decoded
    (a frame inside a frame is no JSON).  A rejection of the whole message keeps the whole
    frame, so the dead letter holds the bytes as sent."""
    if len(data) < _FRAME:
        return _rejected("truncated_frame", f"{len(data)} bytes; a Schema Registry frame has a "
                         f"{_FRAME}-byte header (magic byte 0, 4-byte schema id)", data)
    _count_schema_id(data)
    payload = data[_FRAME:]
    decoded = decode(payload) if _starts_json(payload) else _slow(payload)
    if not decoded.errors:
        return decoded
    return Decoded(decoded.events, [r if r.size is not None else r._replace(raw=data) for r in decoded.errors])


def _rejected(reason: Reason, detail: str, data: bytes) -> Decoded:
    return Decoded([], [Rejected(reason, detail[:MAX_DETAIL_LEN], data)])


def _slow(data: bytes) -> Decoded:
    """Why ``data`` failed the fast decode.  An envelope is cut at its event
    boundaries first, so that each event is judged on its own bytes and only
    the envelope's own faults cost all of its events."""
    try:
        split = _split_envelope(data)
        if split is None:
            return Decoded([_message(data)], [])
        return _envelope(data, *split)
    except DecodeError as exc:
        return _rejected(exc.reason, exc.detail, data)


def _message(data: bytes) -> Event:
    """The one event in ``data``, which is no envelope with an events array;
    DecodeError says why not."""
    if _deeper_than(data, MAX_DEPTH):
        raise DecodeError("too_deep", f"nested deeper than {MAX_DEPTH}")
    value, lenient = _parse(data)
    if isinstance(value, dict) and value.get("type") == "envelope":
        _check_header(value, lenient)
        raise DecodeError("schema", f"events must be an array of 1..{MAX_ENVELOPE_EVENTS} events")
    return _check(value, lenient)


def _envelope(data: bytes, header: bytes, bounds: np.ndarray, depths: np.ndarray) -> Decoded:
    """The good events of an envelope and a rejection, with its own bytes, for
    each bad one.  DecodeError for faults of the envelope itself: its own
    fields, its number of events, or JSON syntax anywhere in it."""
    if _deeper_than(header, MAX_DEPTH):
        raise DecodeError("too_deep", f"nested deeper than {MAX_DEPTH}")
    _check_header(*_parse(header))
    n = len(bounds) - 1
    if n == 0:
        raise DecodeError("schema", "events must be a non-empty array")
    if n > MAX_ENVELOPE_EVENTS:
        raise DecodeError("oversized", f"{n} events > {MAX_ENVELOPE_EVENTS}")
    bounds, depths = bounds.tolist(), depths.tolist()
    good, bad = [], []
    for i in range(n):
        raw = data[bounds[i] + 1 : bounds[i + 1]].strip(_WS)
        try:
            good.append(_event(raw, depths[i]))
        except DecodeError as exc:
            if exc.reason == "not_json":
                raise DecodeError("not_json", f"event {i}: {exc.detail}") from None
            bad.append(Rejected(exc.reason, exc.detail[:MAX_DETAIL_LEN], raw[:MAX_ORIGINAL_BYTES], len(raw)))
    return Decoded(good, bad)


def _event(raw: bytes, depth: int) -> Event:
    """One event of an envelope, ``depth`` deep; DecodeError says why not."""
    if depth > MAX_EVENT_DEPTH:
        raise DecodeError("too_deep", f"an event of an envelope nested deeper than {MAX_EVENT_DEPTH}")
    try:
        return _EVENT_DECODER.decode(raw)
    except msgspec.DecodeError:
        return _check(*_parse(raw))


def _parse(data: bytes) -> tuple[object, bool]:
    """``data`` as Python values, and whether only the lenient parse read it."""
    try:
        return msgspec.json.decode(data), False
    except (msgspec.DecodeError, RecursionError) as exc:
        value = _parse_lenient(data)
        if value is None:
            raise DecodeError("not_json", str(exc)) from None
        return value, True


def _check_header(envelope: dict, lenient: bool) -> None:
    """DecodeError if an envelope's own fields are bad; its events are not looked at."""
    header = _version_1({key: value for key, value in envelope.items() if key != "events"})
    if lenient:
        _check_literals(header)
    try:
        msgspec.convert(header, EnvelopeHeader)
    except msgspec.ValidationError as exc:
        raise DecodeError(_classify(EnvelopeHeader, header, str(exc)), str(exc)) from None


def _check(item: object, lenient: bool) -> Event:
    """The event in ``item``; DecodeError says why not.  The order of checks
    sets precedence: a message of another type or major version is not blamed
    for fields it may legitimately lack.  Only a ``lenient`` parse can have
    put NaN/Infinity literals in ``item``."""
    if not isinstance(item, dict):
        raise DecodeError("unknown_type", f"expected an object, got {type(item).__name__}")
    kind = item.get("type")
    if kind == "envelope":
        raise DecodeError("unknown_type", "envelopes do not nest")
    cls = _EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise DecodeError("unknown_type", f"type {_show(kind)} is not score, feedback or envelope")
    item = _version_1(item)
    if lenient:
        _check_literals(item)
    try:
        return msgspec.convert(item, cls)
    except msgspec.ValidationError as exc:
        raise DecodeError(_classify(cls, item, str(exc)), str(exc)) from None


def _version_1(obj: dict) -> dict:
    """``obj`` with ``v`` as the int 1, which the Structs require; JSON Schema's
    ``"const": 1`` also takes 1.0.  DecodeError for any other ``v``."""
    v = obj.get("v")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise DecodeError("schema", f"v must be the integer 1, got {_show(v)}")
    if v != 1:
        raise DecodeError("unknown_version", f"v={_show(v)}; this consumer reads v=1")
    return obj if type(v) is int else {**obj, "v": 1}


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


def _check_literals(value: object) -> None:
    if any(type(x) is _Literal for x in _floats(value)):
        raise DecodeError("bad_value", "NaN or Infinity, which JSON cannot carry")


def _parse_lenient(data: bytes) -> object | None:
    """Python's json reads what msgspec refuses as NaN/Infinity literals or as
    numbers beyond a double.  Using it only for such input lets the events
    carrying them be rejected as bad_value while their neighbours survive;
    anything else msgspec refused (Python would accept lone surrogates, which
    the UTF-8 encoding below refuses) stays not_json."""
    try:
        value = json.loads(data, parse_constant=_Literal)
        json.dumps(value, ensure_ascii=False).encode()
    except (ValueError, RecursionError):
        return None
    return value if any(not math.isfinite(x) for x in _floats(value)) else None


_AT_FIELD = re.compile(r" - at `\$\.(\w+)`$")
_ENUM_REASONS: dict[str, Reason] = {
    "kind": "unknown_kind",
    "decision": "bad_decision",
    "source": "bad_source",
    "preferred": "bad_preferred",
}


def _field_kinds(cls: type) -> dict[str, str]:
    """What each field of ``cls`` holds: "number", "string", or for a string
    enum the reason an unlisted value gets (a KeyError here, at import, names
    an enum field that has none)."""
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
            kinds[field.encode_name] = _ENUM_REASONS[field.encode_name]
    return kinds


_KINDS = {cls: _field_kinds(cls) for cls in (ScoreEvent, FeedbackEvent, EnvelopeHeader)}


def _classify(cls: type, obj: dict, message: str) -> Reason:
    """Reason for msgspec's first validation error on ``obj``: a value of the
    right JSON type that breaks a bound is bad_value (a string too long:
    id_too_long; an unlisted enum string: that enum's reason); anything else,
    such as a missing field or a wrong type, is schema."""
    match = _AT_FIELD.search(message)
    if match is None:
        return "schema"
    value, kind = obj.get(match[1]), _KINDS[cls].get(match[1])
    if kind == "number":
        return "bad_value" if type(value) in (int, float) else "schema"
    if kind == "string":
        if not isinstance(value, str):
            return "schema"
        return "id_too_long" if len(value) > MAX_ID_LEN else "bad_value"
    if kind is not None and isinstance(value, str):
        return kind
    return "schema"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_WS = b" \t\n\r"
"""JSON's whitespace."""
_STEP = np.zeros(256, np.int8)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1


def _scan(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per byte of ``data``: the byte, or 0 inside a string; +1 or -1 where a
    container opens or closes, else 0; and the nesting depth after it.

    Vectorised byte scans, so no input is too deep for it.  Escaped
    backslashes and quotes are blanked first, so the quotes left delimit
    strings."""
    codes = np.frombuffer(data.replace(b"\\\\", b"  ").replace(b'\\"', b"  "), np.uint8)
    quote = codes == ord('"')
    in_string = np.bitwise_xor.accumulate(quote.view(np.uint8)).view(np.bool_) | quote
    structure = np.where(in_string, np.uint8(0), codes)
    step = _STEP[structure]
    return structure, step, np.cumsum(step, dtype=np.int32)


def _depth(data: bytes) -> int:
    """Nesting depth of ``data``.  On malformed input it is the most containers
    open at once, which bounds how deep a parser could get: an unclosed
    ``[[[[...`` is too deep rather than a parser's recursion problem."""
    return int(_scan(data)[2].max(initial=0))


def _deeper_than(data: bytes, limit: int) -> bool:
    """Whether ``data`` nests deeper than ``limit``; scanned only when it has
    enough brackets to."""
    return data.count(b"[") + data.count(b"{") > limit and _depth(data) > limit


def _split_envelope(data: bytes) -> tuple[bytes, np.ndarray, np.ndarray] | None:
    """Where the events of an envelope lie in ``data``, found by byte scans
    rather than by parsing, so that an event too deep for any parser, or bad
    in any other way, does not hide its neighbours.

    Returns the envelope with its events array emptied (its own fields, to be
    checked apart), the offsets of the array's brackets and separating commas
    (event i lies between bounds i and i+1) and each event's nesting depth.
    None unless ``data`` is an object, balanced in its brackets, whose
    top-level fields (read by json from a copy with every nested container
    blanked out) name type "envelope" and hold events as an array."""
    if b"envelope" not in data and b"\\u" not in data:  # no string in it can read "envelope"
        return None
    first, last = len(data) - len(data.lstrip(_WS)), len(data.rstrip(_WS)) - 1
    if data[first : first + 1] != b"{" or data[last : last + 1] != b"}":
        return None
    structure, step, depth = _scan(data)
    if depth[last] != 0 or depth[first:last].min(initial=1) < 1:
        return None
    opens = np.flatnonzero((step == 1) & (depth == 2))  # the top-level fields' containers,
    closes = np.flatnonzero((step == -1) & (depth == 1))  # pairing up in order
    blank = np.zeros(len(data) + 1, np.int8)
    blank[opens + 1] += 1
    blank[closes] -= 1
    skeleton = np.where(np.cumsum(blank[:-1], dtype=np.int8) > 0, np.uint8(32), np.frombuffer(data, np.uint8))
    try:
        fields = json.loads(skeleton.tobytes().decode("utf-8"), object_pairs_hook=list)
    except ValueError:
        return None
    names = [name for name, _ in fields]
    last_value = dict(fields)  # a repeated name means its last value, as in every parser used here
    if last_value.get("type") != "envelope" or not isinstance(last_value.get("events"), list):
        return None
    at = len(names) - 1 - names[::-1].index("events")
    k = [type(value) for _, value in fields[:at]].count(list)  # blanked containers all read as []
    start, end = int(opens[k]), int(closes[k])
    if structure[start] != ord("["):
        return None
    seps = start + 1 + np.flatnonzero((structure[start + 1 : end] == ord(",")) & (depth[start + 1 : end] == 2))
    header = data[:start] + b"[]" + data[end + 1 :]
    if not len(seps) and not data[start + 1 : end].strip(_WS):
        return header, np.array([start]), np.array([], np.int32)
    bounds = np.concatenate(([start], seps, [end]))
    return header, bounds, np.maximum.reduceat(depth[:end], bounds[:-1]) - 2
