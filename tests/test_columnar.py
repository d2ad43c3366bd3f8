"""Columnar envelopes against JSON envelopes of the same events.

A columnar envelope must decode to exactly the events the JSON envelope of the same rows
gives, reject exactly the rows the JSON one rejects, for the same reasons, and never raise.
Messages are also built by hand from plain msgpack values, as a producer in another
language would build them, so the format is tested as documented, not only as encoded here.
"""
import math
import struct

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import codec, columnar
from streams.columns import EventColumns
from streams.events import MAX_ENVELOPE_EVENTS, Reason, ScoreEvent
from tests.test_codec import events as any_event
from tests.test_codec import frame, js

REASONS = set(Reason.__args__)
SCORE = {"type": "score", "v": 1, "event_id": "e-1", "scenario_id": "sc-1", "policy_id": "p", "score": 0.5,
         "tau": 0.7, "decision": "hold", "ts": 1732770000.5}
FEEDBACK = {"type": "feedback", "v": 1, "event_id": "f-1", "scenario_id": "sc-1", "ts": 1732770100.0,
            "kind": "like"}
SCORE_COLUMNS = ("policy_id", "segment", "score", "tau", "decision", "model_version")
FEEDBACK_COLUMNS = ("kind", "source", "preferred", "weight", "policy_id", "segment", "score", "tau", "decision")
FLOATS = {"score", "tau"}  # the score columns sent as bin of float64


def score(**changes) -> dict:
    return {**SCORE, **changes}


def feedback(**changes) -> dict:
    return {**FEEDBACK, **changes}


def f8(values) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


def by_hand(rows: list[dict], **extra) -> bytes:
    """The columnar envelope of JSON-event `rows`, built from plain msgpack values as the
    format documents it; a column no row has is left out, a row without it gets nil."""
    scores = [r for r in rows if r["type"] == "score"]
    fbs = [r for r in rows if r["type"] != "score"]
    message = {"type": "columns", "v": 1, "is_score": bytes(r["type"] == "score" for r in rows),
               "event_id": [r["event_id"] for r in rows], "scenario_id": [r["scenario_id"] for r in rows],
               "ts": f8([r["ts"] for r in rows])}
    if scores:
        message["scores"] = {name: f8([r[name] for r in scores]) if name in FLOATS else [r.get(name) for r in scores]
                             for name in SCORE_COLUMNS if any(name in r for r in scores)}
    if fbs:
        message["feedback"] = {name: [r.get(name) for r in fbs] for name in FEEDBACK_COLUMNS
                               if any(name in r for r in fbs)}
    message.update(extra)
    return msgspec.msgpack.encode(message)


def as_json_envelope(rows: list[dict]) -> bytes:
    return js({"type": "envelope", "v": 1, "events": rows})


def same_as_json(rows: list[dict]) -> codec.Decoded:
    """Decode the columnar and the JSON envelope of `rows`; assert they agree; return the first."""
    got, want = codec.decode(by_hand(rows)), codec.decode(as_json_envelope(rows))
    assert got.events == want.events
    assert [r.reason for r in got.errors] == [r.reason for r in want.errors]
    return got


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_event, min_size=1, max_size=40))
def test_encoded_events_decode_to_themselves_and_to_the_json_envelope_s_columns(events):
    data = columnar.encode(events, producer="p")
    assert columnar.is_columnar(data)
    assert codec.decode(data) == codec.Decoded(events, [])
    got, rejected = columnar.decode(data)
    assert not rejected
    assert_same_rows(got, EventColumns.of_events(codec.decode(codec.encode_envelope(events)).events))


def assert_same_rows(got: EventColumns, want: EventColumns) -> None:
    for name in ("event_id", "scenario_id", "policy_id", "segment", "decision", "model_version", "feedback"):
        assert getattr(got, name) == getattr(want, name), name
    for name in ("is_score", "ts", "score", "tau"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name


def test_nil_in_an_optional_column_is_a_field_not_given():
    """Unlike JSON's null for `segment` or `source`, which is refused: a column needs a value per row."""
    message = _columns([score(segment="eu"), score(event_id="e-2"), feedback(source="audit"), feedback(event_id="f-2")])
    message["scores"]["segment"][1] = None
    message["feedback"]["source"][1] = None
    decoded = codec.decode(_encoded(message))
    assert not decoded.errors
    assert [getattr(e, "segment", None) or e.source for e in decoded.events] == ["eu", "default", "audit", "human"]


def test_a_message_built_by_hand_decodes_with_its_defaults():
    rows = [score(), feedback(), score(event_id="e-2", segment="eu", model_version="m3"),
            feedback(event_id="f-2", kind="override", source="audit", preferred="act", weight=2.5, policy_id="p",
                     score=0.4, tau=0.5, decision="abstain")]
    decoded = same_as_json(rows)
    assert not decoded.errors
    first, second = decoded.events[:2]
    assert (first.segment, first.model_version) == ("default", None)
    assert (second.source, second.weight, second.preferred, second.context_complete) == ("human", 1.0, None, False)
    assert decoded.events[3].context_complete


BAD_ROWS = [  # (a row, the reason the JSON event gets, and the columnar row must get)
    (score(score=1.5), "bad_value"), (score(tau=math.nan), "bad_value"), (score(ts=-1.0), "bad_value"),
    (score(ts=math.inf), "bad_value"), (feedback(ts=2.6e11), "bad_value"), (feedback(weight=0), "bad_value"),
    (feedback(weight=1000.5), "bad_value"), (feedback(score=-0.1), "bad_value"), (score(event_id=""), "bad_value"),
    (score(decision="maybe"), "bad_decision"), (feedback(decision="maybe"), "bad_decision"),
    (feedback(kind="dislike"), "unknown_kind"), (feedback(source="crowd"), "bad_source"),
    (feedback(preferred="abstain"), "bad_preferred"), (score(policy_id="p" * 257), "id_too_long"),
    (feedback(scenario_id="s" * 1000), "id_too_long"), (score(model_version="m" * 257), "id_too_long"),
    (score(event_id=7), "schema"), (feedback(policy_id=["p"]), "schema"),
    (feedback(weight="1"), "schema"), (score(policy_id=None), "schema"), (feedback(kind=None), "schema"),
]


@pytest.mark.parametrize(("row", "reason"), BAD_ROWS, ids=[f"{r}-{i}" for i, (_, r) in enumerate(BAD_ROWS)])
def test_a_bad_row_is_rejected_alone_as_its_json_event_would_be(row, reason):
    rows = [score(event_id="before"), row, feedback(event_id="after")]
    decoded = same_as_json(rows)
    assert [e.event_id for e in decoded.events] == ["before", "after"]
    (rejected,) = decoded.errors
    assert rejected.reason == reason
    assert rejected.size == len(rejected.raw) or len(rejected.raw) == 4096
    assert msgspec.json.decode(rejected.raw)["type"] == row["type"] or rejected.size > 4096


def test_every_row_reason_is_covered():
    assert {r for _, r in BAD_ROWS} == {"bad_value", "bad_decision", "unknown_kind", "bad_source", "bad_preferred",
                                        "id_too_long", "schema"}


def _whole(data: bytes) -> str:
    decoded = codec.decode(data)
    assert not decoded.events and len(decoded.errors) == 1 and decoded.errors[0].raw == data
    return decoded.errors[0].reason


def _columns(rows=(SCORE, FEEDBACK)) -> dict:
    return msgspec.msgpack.decode(by_hand(list(rows)))


def _encoded(message: dict) -> bytes:
    return msgspec.msgpack.encode(message)


MESSAGE_FAULTS = [  # (what is wrong with the message itself, its change, the reason it costs every row)
    ("v 2", {"v": 2}, "unknown_version"), ("v 1.5", {"v": 1.5}, "schema"), ("v missing", {"v": None}, "schema"),
    ("type missing", {"type": None}, "unknown_type"), ("type envelope", {"type": "envelope"}, "unknown_type"),
    ("producer too long", {"producer": "p" * 257}, "id_too_long"), ("producer empty", {"producer": ""}, "bad_value"),
    ("no rows", {"event_id": [], "scenario_id": [], "is_score": b"", "ts": b""}, "schema"),
    ("ids short", {"scenario_id": ["sc-1"]}, "schema"), ("flags short", {"is_score": b"\x01"}, "schema"),
    ("flag 2", {"is_score": b"\x01\x02"}, "schema"), ("ts as a list", {"ts": [1.0, 2.0]}, "schema"),
    ("ts ragged", {"ts": f8([1.0, 2.0]) + b"\x00"}, "schema"), ("scores missing", {"scores": None}, "schema"),
    ("feedback missing", {"feedback": None}, "schema"), ("scores not a map", {"scores": [1]}, "schema"),
    ("score column short", {"scores": {**_columns()["scores"], "score": f8([])}}, "schema"),
    ("decision column short", {"scores": {**_columns()["scores"], "decision": []}}, "schema"),
    ("kind column missing", {"feedback": {"source": ["human"]}}, "schema"),
    *((f"{name} column missing", {"scores": {k: v for k, v in _columns()["scores"].items() if k != name}}, "schema")
      for name in ("policy_id", "score", "tau", "decision")),
    ("tau column nil", {"scores": {**_columns()["scores"], "tau": None}}, "schema"),
    ("weight column long", {"feedback": {"kind": ["like"], "weight": [1.0, 2.0]}}, "schema"),
]


@pytest.mark.parametrize(("change", "reason"), [pytest.param(c, r, id=i) for i, c, r in MESSAGE_FAULTS])
def test_a_fault_of_the_message_itself_rejects_it_whole(change, reason):
    message = {**_columns(), **change}
    assert _whole(_encoded({k: v for k, v in message.items() if v is not None})) == reason


def test_feedback_columns_given_with_no_feedback_row_reject_the_message():
    assert _whole(_encoded({**_columns([SCORE]), "feedback": {"kind": []}})) == "schema"


def test_limits_of_size_and_rows():
    rows = [score(event_id=f"e{i}") for i in range(MAX_ENVELOPE_EVENTS + 1)]
    assert _whole(by_hand(rows)) == "oversized"
    assert not codec.decode(by_hand(rows[:-1])).errors
    with pytest.raises(ValueError):
        columnar.encode([])
    big = by_hand([SCORE], padding="x" * codec.MAX_MESSAGE_BYTES)
    assert _whole(big) == "oversized"
    assert _whole(by_hand([SCORE])[:-3]) == "not_msgpack"
    assert _whole(b"\x81\xc1") == "not_msgpack"  # 0xc1 is never used in msgpack
    assert _whole(b"\xdf" + b"\xff" * 4) == "not_msgpack"  # a map of 2^32 - 1 entries, truncated


def test_unknown_keys_are_ignored_in_the_map_and_in_its_column_maps():
    message = _columns()
    message["scores"]["later_field"] = [1]
    message["feedback"]["later_field"] = "x"
    decoded = codec.decode(_encoded({**message, "later": {"x": [1, 2]}}))
    assert not decoded.errors and [e.event_id for e in decoded.events] == ["e-1", "f-1"]


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=24) | st.sampled_from(["columns", "act", "like", "human", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12)
keys = st.sampled_from(["type", "v", "producer", "is_score", "event_id", "scenario_id", "ts", "scores", "feedback"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, msgpack_values, max_size=9), st.sampled_from(["replace", "merge"]))
def test_any_msgpack_map_never_raises_and_every_row_is_kept_or_rejected(changes, how):
    message = _columns([SCORE, FEEDBACK, score(event_id="e-2")])
    message = {**message, **changes} if how == "replace" else {**changes, **message}
    decoded = codec.decode(_encoded(message))
    assert all(r.reason in REASONS and len(r.detail) <= 1000 for r in decoded.errors)
    whole = [r for r in decoded.errors if r.size is None]
    if whole:
        assert not decoded.events and len(decoded.errors) == 1
    else:
        assert len(decoded.events) + len(decoded.errors) == len(message["event_id"])


@given(st.sampled_from([*range(0x80, 0x90), 0xDE, 0xDF]), st.binary(max_size=300))
def test_any_bytes_after_a_map_byte_never_raise(first, rest):
    decoded = codec.decode(bytes([first]) + rest)
    assert decoded.events or decoded.errors
    assert all(r.reason in REASONS for r in decoded.errors)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["json", "framed", "columnar", "single", "bad"]),
                          st.lists(any_event, min_size=1, max_size=4)), max_size=8))
def test_a_batch_of_any_mix_of_formats_is_its_messages_one_after_another(messages):
    """Runs of JSON messages are decoded together; columnar ones alone; the rows come out in
    message order and each rejection names its message."""
    encode = {"json": codec.encode_envelope, "framed": lambda evs: frame(codec.encode_envelope(evs), 9),
              "columnar": columnar.encode, "single": lambda evs: codec.encode(evs[0]), "bad": lambda evs: b"{"}
    data = [encode[kind](evs) for kind, evs in messages]
    got, rejected = columnar.decode_batch(data)
    want = [ev for (kind, evs) in messages if kind != "bad" for ev in (evs[:1] if kind == "single" else evs)]
    assert_same_rows(got, EventColumns.of_events(want))
    assert [i for i, _ in rejected] == [i for i, (kind, _) in enumerate(messages) if kind == "bad"]


@settings(max_examples=200, deadline=None)
@given(st.lists(any_event, min_size=1, max_size=30), st.data())
def test_a_batch_without_some_rows_is_the_batch_of_the_rest(events, data):
    gone = sorted(data.draw(st.sets(st.integers(0, len(events) - 1))))
    batch = EventColumns.of_events(events).without(np.array(gone, np.int64))
    assert_same_rows(batch, EventColumns.of_events([ev for i, ev in enumerate(events) if i not in gone]))


# --- the slow path takes a message apart without decoding it whole --------------------------

def _with_cell(rows: list[dict], marker: str, cell: bytes, **extra) -> bytes:
    """`by_hand(rows)` with the str cell `marker` (4 characters) replaced by raw msgpack `cell`."""
    data = by_hand(rows, **extra)
    assert data.count(b"\xa4" + marker.encode()) == 1
    return data.replace(b"\xa4" + marker.encode(), cell)


UNREADABLE = {  # msgpack the typed decode skips unread in an unknown key, but a plain decode refuses
    "invalid utf-8": b"\xa3\xff\xfe\xfd",
    "timestamp of 10^9 ns": b"\xd7\xff" + ((0x3FFFFFFF << 34) | 5).to_bytes(8, "big"),
    "a map as a key": b"\x81\x81\x01\x01\x01", "nested 5,000 deep": b"\x91" * 5000 + b"\x90",
    "8 MB of empty maps": b"\xdd" + (7_000_000).to_bytes(4, "big") + b"\x80" * 7_000_000,
}


@pytest.mark.parametrize("cell", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_an_unknown_key_is_skipped_unread_when_a_row_is_bad(cell):
    data = _with_cell([SCORE, feedback(event_id="")], "@@@@", cell, zz="@@@@")
    decoded = codec.decode(data)
    assert [e.event_id for e in decoded.events] == ["e-1"]
    assert [r.reason for r in decoded.errors] == ["bad_value"]


@pytest.mark.parametrize(("depth", "reason"), [(1, "schema"), (12, "schema"), (13, "schema"), (14, "too_deep"),
                                               (2000, "too_deep"), (100_000, "too_deep")])
def test_a_nested_cell_costs_its_row_alone_with_the_reason_of_its_json_event(depth, reason):
    rows = [score(event_id="a"), feedback(policy_id="@@@@"), score(event_id="b")]
    decoded = codec.decode(_with_cell(rows, "@@@@", b"\x91" * (depth - 1) + b"\x90"))
    assert [e.event_id for e in decoded.events] == ["a", "b"]
    assert [r.reason for r in decoded.errors] == [reason]
    assert b"container of" in decoded.errors[0].raw  # shown by its kind, never decoded
    if depth < 1000:  # the JSON envelope of the same rows (deeper, Python's json gives up)
        value: list = []
        for _ in range(depth - 1):
            value = [value]
        want = codec.decode(as_json_envelope([rows[0], feedback(policy_id=value), rows[2]]))
        assert [r.reason for r in want.errors] == [reason]


def test_an_ext_cell_shows_in_the_dead_letter_by_its_type_and_size():
    decoded = codec.decode(_with_cell([score(event_id="a"), feedback(policy_id="@@@@")], "@@@@", b"\xd6\x05abcd"))
    (rejected,) = decoded.errors
    assert (rejected.reason, msgspec.json.decode(rejected.raw)["policy_id"]) == (
        "schema", "<msgpack ext of type 5, 4 bytes>")


def test_a_cell_that_is_not_msgpack_costs_its_row_alone():
    decoded = codec.decode(_with_cell([score(event_id="a"), feedback(policy_id="@@@@")], "@@@@", b"\xa3\xff\xfe\xfd"))
    assert [e.event_id for e in decoded.events] == ["a"] and [r.reason for r in decoded.errors] == ["not_msgpack"]


def test_taking_apart_a_hostile_message_builds_none_of_its_containers():
    import tracemalloc

    huge = b"\xdd" + (7_000_000).to_bytes(4, "big") + b"\x80" * 7_000_000
    for data in (_with_cell([SCORE, feedback(policy_id="@@@@")], "@@@@", huge),  # in a row's cell
                 _with_cell([SCORE], "@@@@", huge, v=2, zz="@@@@")):  # in an unknown key, the message bad
        codec.decode(data)  # compiled once
        tracemalloc.start()
        try:
            decoded = codec.decode(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert decoded.errors and peak < 2 * len(data), peak


def test_a_message_too_short_for_what_it_declares_is_not_msgpack():
    data = by_hand([SCORE, feedback(event_id="")])
    for cut in range(1, len(data)):
        decoded = codec.decode(data[:cut])
        assert not decoded.events and [r.reason for r in decoded.errors] == ["not_msgpack"], cut


@pytest.mark.parametrize("bad_row", [False, True], ids=["fast path", "slow path"])
def test_nil_for_a_whole_optional_column_or_map_is_not_given_on_both_paths(bad_row):
    """As a Go producer's nil slice or pointer arrives; the slow path must read it as the typed
    decode does, or one bad row would cost the message."""
    rows = [score(), score(event_id="e-2", score=2.0 if bad_row else 0.5), feedback()]
    message = {**_columns(rows), "producer": None}
    message["scores"]["segment"] = message["scores"]["model_version"] = None
    message["feedback"]["source"] = None
    decoded = codec.decode(_encoded(message))
    assert [e.event_id for e in decoded.events] == (["e-1", "f-1"] if bad_row else ["e-1", "e-2", "f-1"])
    assert [r.reason for r in decoded.errors] == (["bad_value"] if bad_row else [])
    assert {e.segment for e in decoded.events if type(e) is ScoreEvent} == {"default"}
    message = {**_columns([score(), score(event_id="e-2", score=2.0 if bad_row else 0.5)]), "feedback": None}
    assert len(codec.decode(_encoded(message)).events) == (1 if bad_row else 2)


cell_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300) | st.sampled_from(["act", "hold", "abstain", "like", "override", "audit", "", "x" * 257]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_event, min_size=1, max_size=6), st.data())
def test_one_mutated_field_gives_the_json_envelope_s_events_and_reasons(events, data):
    rows = [msgspec.to_builtins(ev) for ev in events]
    i = data.draw(st.integers(0, len(rows) - 1))
    fields = sorted(set(rows[i]) - {"type", "v"} | ({"segment", "weight", "source", "preferred"}
                                                    if rows[i]["type"] == "feedback" else {"segment"}))
    name = data.draw(st.sampled_from(fields))
    value = data.draw(cell_values)
    optional = name not in ("event_id", "scenario_id", "ts", "policy_id", "score", "tau", "decision", "kind") \
        or rows[i]["type"] == "feedback" and name not in ("event_id", "scenario_id", "ts", "kind")
    if value is None and optional:  # nil in an optional column is "not given", unlike JSON's null
        return
    if name == "ts" or rows[i]["type"] == "score" and name in FLOATS:  # a bin column holds float64 alone
        if type(value) is not float:
            return
    rows[i] = {**rows[i], name: value}
    same_as_json(rows)
