"""The codec against the published contract.

Every case of one shared table is judged twice, by ``streams.codec.decode``
and by jsonschema with the schemas from ``schemas/``, and the two must agree
on accept/reject; the codec must also give the expected dead-letter reason.
The schema side reads bytes as strict JSON (RFC 8259: UTF-8, no NaN/Infinity
literals, no lone surrogates) and applies the transport size limit, the one
rule JSON Schema cannot state.
"""

import base64
import json
import math

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import schemas
from streams import codec
from streams.events import MAX_EPOCH_S, FeedbackEvent, Reason, ScoreEvent

REASONS = set(Reason.__args__)
VALIDATORS = {name: schemas.validator(name) for name in ("score", "feedback", "envelope")}
DROP = object()


def _not_json(literal):
    raise ValueError(f"{literal} is not JSON")


def contract_accepts(data: bytes) -> bool:
    if len(data) > codec.MAX_MESSAGE_BYTES:
        return False
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_not_json)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):
        return False
    kind = value.get("type") if isinstance(value, dict) else None
    return isinstance(kind, str) and kind in VALIDATORS and VALIDATORS[kind].is_valid(value)


def _with(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


SCORE = {"type": "score", "v": 1, "event_id": "e-1", "scenario_id": "sc-1", "policy_id": "p",
         "score": 0.5, "tau": 0.7, "decision": "hold", "ts": 1732770000.5}
FEEDBACK = {"type": "feedback", "v": 1, "event_id": "f-1", "scenario_id": "sc-1", "ts": 1732770100, "kind": "like"}


def score(**changes) -> dict:
    return _with(SCORE, changes)


def feedback(**changes) -> dict:
    return _with(FEEDBACK, changes)


def envelope(*events, **changes) -> dict:
    return _with({"type": "envelope", "v": 1, "events": list(events)}, changes)


def frame(data: bytes, schema_id: int) -> bytes:
    """``data`` as a Confluent Schema Registry serializer frames it."""
    return b"\x00" + schema_id.to_bytes(4, "big") + data


def js(value) -> bytes:
    """Like a careless Python producer: NaN/Infinity are written as literals."""
    return json.dumps(value).encode()


def js_raw(value, literal: bytes) -> bytes:
    """``value`` as JSON with its ``"@"`` string replaced by a raw literal."""
    return js(value).replace(b'"@"', literal)


def nested(depth: int):
    """A JSON value exactly ``depth`` deep."""
    return json.loads("[" * depth + "]" * depth)


OK: list[str] = []
CASES = [
    # accepted
    ("score_minimal", js(score()), OK),
    ("score_full", js(score(segment="eu", model_version="m-7")), OK),
    ("score_unknown_fields", js(score(experiment={"arm": "b", "tags": [1, None]}, added_later=True)), OK),
    ("score_bounds_low", js(score(score=0, tau=0, ts=0)), OK),
    ("score_bounds_high", js(score(score=1, tau=1.0)), OK),
    ("score_ids_at_max_len", js(score(event_id="😀" * 256, policy_id="p" * 256)), OK),
    ("score_depth_16", js(score(x=nested(15))), OK),
    ("score_number_near_double_max", js(score(x=1.7976931348623157e308)), OK),
    ("unknown_field_1e999", js_raw(score(x=[1, "@"]), b"-1e999"), OK),
    ("unknown_field_huge_int", js(score(x=10**400)), OK),
    ("feedback_minimal", js(feedback()), OK),
    ("feedback_full_context", js(feedback(kind="override", source="llm_judge", preferred="act", weight=1000,
                                          policy_id="p", segment="eu", score=0.6, tau=0.6, decision="abstain")), OK),
    ("feedback_nulls", js(feedback(preferred=None, policy_id=None, score=None, decision=None)), OK),
    ("feedback_tiny_weight", js(feedback(weight=1e-9)), OK),
    ("envelope_mixed", js(envelope(score(), feedback(), score(event_id="e-2"))), OK),
    ("envelope_producer_extras", js(envelope(feedback(), producer="sim", batch={"n": 1})), OK),
    ("envelope_depth_16", js(envelope(score(x=nested(13)))), OK),
    ("score_v_1.0", js(score(v=1.0)), OK),
    ("feedback_v_1.0", js(feedback(v=1.0)), OK),
    ("envelope_v_1.0", js(envelope(score(v=1.0), feedback(), v=1.0)), OK),
    ("score_exactly_0_and_1", js(score(score=0.0, tau=1)), OK),
    ("weight_bounds", js(envelope(feedback(weight=1e-300), feedback(weight=1000), feedback(weight=5e-324))), OK),
    ("ts_just_below_year_10000", js(score(ts=253402300799.99997)), OK),
    ("unicode_ids", js(score(event_id="\u00e9\u4e2d\U0001f600", segment="\u0301", policy_id=" ")), OK),
    # not_json
    ("truncated", b'{"type":"score","v":1', ["not_json"]),
    ("empty", b"", ["not_json"]),
    ("binary", b"\xff\xfe\x00{", ["unknown_magic_byte"]),
    ("trailing_garbage", js(score()) + b"}", ["not_json"]),
    ("single_quotes", b"{'type': 'score'}", ["not_json"]),
    ("lone_surrogate", js_raw(score(policy_id="@"), rb'"\ud800"'), ["not_json"]),
    # neither JSON nor a Schema Registry frame (magic byte 0, 4-byte schema id, JSON)
    ("avro_frame_magic_1", b"\x01\x00\x00\x00\x07" + js(score()), ["unknown_magic_byte"]),
    ("frame_magic_byte_only", b"\x00", ["truncated_frame"]),
    ("frame_header_cut", b"\x00\x00\x00\x07", ["truncated_frame"]),
    # unknown_type
    ("top_level_array", js([score()]), ["unknown_type"]),
    ("top_level_string", b'"score"', ["unknown_type"]),
    ("missing_type", js(score(type=DROP)), ["unknown_type"]),
    ("other_type", js(score(type="trigger")), ["unknown_type"]),
    ("type_not_string", js(score(type=["score"])), ["unknown_type"]),
    # unknown_version
    ("score_v2", js(score(v=2, score="renamed")), ["unknown_version"]),
    ("score_v_2.0", js(score(v=2.0)), ["unknown_version"]),
    ("feedback_v0", js(feedback(v=0)), ["unknown_version"]),
    ("envelope_v2", js(envelope(score(), v=2)), ["unknown_version"]),
    # schema
    ("missing_field", js(score(scenario_id=DROP)), ["schema"]),
    ("missing_v", js(score(v=DROP)), ["schema"]),
    ("v_string", js(score(v="1")), ["schema"]),
    ("v_1.5", js(score(v=1.5)), ["schema"]),
    ("v_true", js(feedback(v=True)), ["schema"]),
    ("v_null", js(score(v=None)), ["schema"]),
    ("envelope_v_1.5", js(envelope(score(), v=1.5)), ["schema"]),
    ("envelope_v_true", js(envelope(score(), v=True)), ["schema"]),
    ("envelope_v_string", js(envelope(score(), v="1")), ["schema"]),
    ("score_string", js(score(score="0.5")), ["schema"]),
    ("score_bool", js(score(score=True)), ["schema"]),
    ("decision_number", js(score(decision=1)), ["schema"]),
    ("segment_null", js(score(segment=None)), ["schema"]),
    ("weight_null", js(feedback(weight=None)), ["schema"]),
    ("envelope_empty", js(envelope()), ["schema"]),
    ("envelope_events_object", js(envelope(events={"0": score()})), ["schema"]),
    ("envelope_no_events", js(envelope(events=DROP)), ["schema"]),
    # unknown_kind and the other enums' own reasons
    ("feedback_kind", js(feedback(kind="dislike")), ["unknown_kind"]),
    ("feedback_source", js(feedback(source="crowd")), ["bad_source"]),
    ("feedback_preferred", js(feedback(kind="override", preferred="abstain")), ["bad_preferred"]),
    ("score_decision", js(score(decision="maybe")), ["bad_decision"]),
    ("feedback_decision", js(feedback(decision="Act")), ["bad_decision"]),
    # bad_value
    ("score_above_1", js(score(score=1.5)), ["bad_value"]),
    ("score_below_0", js(score(score=-0.1)), ["bad_value"]),
    ("tau_just_above_1", js(score(tau=1.0000001)), ["bad_value"]),
    ("weight_zero", js(feedback(weight=0)), ["bad_value"]),
    ("weight_above_1000", js(feedback(weight=1000.5)), ["bad_value"]),
    ("ts_negative", js(score(ts=-1)), ["bad_value"]),
    ("ts_year_10000", js(score(ts=MAX_EPOCH_S)), ["bad_value"]),
    ("empty_id", js(score(event_id="")), ["bad_value"]),
    ("score_nan_literal", js(score(score=float("nan"))), ["bad_value"]),
    ("score_infinity_literal", js(score(score=float("inf"))), ["bad_value"]),
    ("ts_minus_infinity", js(score(ts=float("-inf"))), ["bad_value"]),
    ("score_1e999", js_raw(score(score="@"), b"1e999"), ["bad_value"]),
    ("ts_huge_int", js(score(ts=10**400)), ["bad_value"]),
    ("extra_nan", js(score(x=[float("nan")])), ["bad_value"]),
    ("envelope_header_nan", js(envelope(score(), x=float("nan"))), ["bad_value"]),
    ("envelope_producer_empty", js(envelope(score(), producer="")), ["bad_value"]),
    # id_too_long
    ("id_257_chars", js(score(event_id="e" * 257)), ["id_too_long"]),
    ("unicode_id_257_chars", js(feedback(scenario_id="\U0001f600" * 257)), ["id_too_long"]),
    ("huge_string", js(score(policy_id="p" * (1 << 20))), ["id_too_long"]),
    ("producer_257_chars", js(envelope(score(), producer="p" * 257)), ["id_too_long"]),
    # oversized
    ("envelope_10001", js(envelope(*[score(event_id=f"e{i}") for i in range(10_001)])), ["oversized"]),
    ("message_over_8MiB", js(score()) + b" " * codec.MAX_MESSAGE_BYTES, ["oversized"]),
    # too_deep
    ("score_depth_17", js(score(x=nested(16))), ["too_deep"]),
    ("envelope_depth_17", js(envelope(score(x=nested(14)))), ["too_deep"]),
    ("envelope_header_depth_17", js(envelope(score(), x=nested(16))), ["too_deep"]),
    ("bare_depth_17", js(nested(17)), ["too_deep"]),
    ("depth_100000", b"[" * 100_000 + b"]" * 100_000, ["too_deep"]),
    ("unclosed_depth_100000", b'{"x":' + b"[" * 100_000, ["too_deep"]),
    ("deep_in_string_is_fine", js(score(x="[" * 100 + '\\"{{{')), OK),
    # envelopes keep their good events
    ("envelope_one_bad", js(envelope(score(), score(score=2), feedback())), ["bad_value"]),
    ("envelope_nested", js(envelope(score(), envelope(score()))), ["unknown_type"]),
    ("envelope_nan_event", js(envelope(score(), score(tau=float("nan")), feedback())), ["bad_value"]),
    ("envelope_nan_and_1e999", js_raw(envelope(score(x="@"), score(tau=float("nan")), score(ts="@")), b"1e999"),
     ["bad_value", "bad_value"]),
    ("envelope_many_bad", js(envelope(feedback(kind="x"), 7, score(v=3), score(ts=DROP), feedback())),
     ["schema", "unknown_kind", "unknown_type", "unknown_version"]),
    ("envelope_deep_event", js(envelope(score(), score(x=nested(14)), feedback())), ["too_deep"]),
    ("envelope_enum_reasons", js(envelope(score(decision="x"), feedback(source="x"), feedback(preferred="x"),
                                          score(event_id="e" * 257), score())),
     ["bad_decision", "bad_preferred", "bad_source", "id_too_long"]),
    # an envelope that is not JSON is rejected whole, whichever part breaks it
    ("envelope_event_truncated", js(envelope(score(), feedback())).replace(b', {"type": "feedback"', b', {"type"'),
     ["not_json"]),
    ("envelope_trailing_comma", js(envelope(score())).replace(b"}]", b"},]"), ["not_json"]),
    ("envelope_garbage_between_events", js(envelope(score(), score())).replace(b"}, {", b"} x, {"), ["not_json"]),
    ("envelope_unclosed_string", js(envelope(score(), score(x="a"))).replace(b'"a"}', b'"a}'), ["not_json"]),
    ("envelope_bom", b"\xef\xbb\xbf" + js(envelope(score(), score(score=2))), ["unknown_magic_byte"]),
    # what finds an envelope's events reads JSON as any parser does
    ("envelope_escaped_events_key", js(envelope(score(), score(score=2))).replace(b'"events"', b'"\\u0065vents"'),
     ["bad_value"]),
    ("envelope_escaped_type", js(envelope(score(), score(score=2))).replace(b'"envelope"', b'"envelop\\u0065"'),
     ["bad_value"]),
    ("envelope_type_last", js({"v": 1, "events": [score(), score(score=2)], "type": "envelope"}), ["bad_value"]),
    ("envelope_strings_like_structure", js(envelope(score(x='],{"[\\'), score(score=2, y='\\"]'), producer='"],')),
     ["bad_value"]),
    ("envelope_repeated_events_last_wins",
     js(envelope(score(score=2)))[:-1] + b', "events": [' + js(feedback()) + b"]}", OK),
    ("envelope_repeated_events_last_not_array", js(envelope(score(), score(score=2)))[:-1] + b', "events": 5}',
     ["schema"]),
    ("envelope_events_object_with_a_bad_one", js(envelope(events={"0": score(), "1": score(score=2)})), ["schema"]),
]


@pytest.mark.parametrize(("data", "expected"), [pytest.param(d, e, id=i) for i, d, e in CASES])
def test_codec_and_schema_agree(data, expected):
    decoded = codec.decode(data)
    assert sorted(r.reason for r in decoded.errors) == sorted(expected)
    assert contract_accepts(data) == (not decoded.errors)
    for rejected in decoded.errors:
        assert len(rejected.detail) <= 1000 and (rejected.size is None or rejected.size >= len(rejected.raw))
    if not expected:
        assert decoded.events
        assert codec.decode_strict(codec.encode_envelope(decoded.events)) == decoded.events


def test_table_covers_every_decode_reason():
    assert len(CASES) >= 30
    assert {r for _, _, expected in CASES for r in expected} == REASONS - {"join_expired", "not_msgpack"}


def test_defaults_are_applied():
    (s,) = codec.decode_strict(js(score()))
    (f,) = codec.decode_strict(js(feedback()))
    assert (s.segment, s.model_version) == ("default", None)
    assert (f.source, f.weight, f.preferred, f.policy_id, f.context_complete) == ("human", 1.0, None, None, False)
    (g,) = codec.decode_strict(js(feedback(policy_id="p", score=0.2, tau=0.5, decision="hold")))
    assert g.context_complete


def test_good_events_around_bad_ones_survive_in_order():
    data = js(envelope(score(event_id="a"), score(score=2), feedback(event_id="b"), 7, score(event_id="c")))
    decoded = codec.decode(data)
    assert [e.event_id for e in decoded.events] == ["a", "b", "c"]
    assert [json.loads(r.raw) for r in decoded.errors] == [score(score=2), 7]


def test_nan_event_is_dead_lettered_as_written():
    """NaN forces the lenient parse; an out-of-range number in an unknown field
    of a neighbour must then be ignored exactly as on the fast path."""
    data = js_raw(envelope(score(event_id="a", x="@"), score(score=float("nan"))), b"1e999")
    decoded = codec.decode(data)
    assert [e.event_id for e in decoded.events] == ["a"]
    assert decoded.errors[0].raw == js(score(score=float("nan")))


def test_a_deep_event_costs_only_itself_and_keeps_its_own_bytes():
    """A 14-deep junk field makes its event 15 deep, the envelope 17: the event is
    too deep, its siblings are not, and its dead letter holds its bytes, not the
    envelope's first 4 KiB."""
    goods = [score(event_id=f"g{i}") for i in range(100)]
    bad = score(event_id="bad", junk={"a": [nested(12)]})
    data = js(envelope(*goods[:60], bad, *goods[60:]))
    assert data.index(js(bad)) > codec.MAX_ORIGINAL_BYTES
    decoded = codec.decode(data)
    assert [e.event_id for e in decoded.events] == [g["event_id"] for g in goods]
    (rejected,) = decoded.errors
    assert (rejected.reason, rejected.raw, rejected.size) == ("too_deep", js(bad), len(js(bad)))


def test_an_event_too_deep_for_any_parser_costs_only_itself():
    deep = b'{"type":"score","v":1,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    data = b'{"type":"envelope","v":1,"events":[' + js(score(event_id="a")) + b", " + deep + b",\n" \
        + js(feedback(event_id="b")) + b"]}"
    decoded = codec.decode(data)
    assert [e.event_id for e in decoded.events] == ["a", "b"]
    (rejected,) = decoded.errors
    assert (rejected.reason, rejected.raw, rejected.size) == ("too_deep", deep[:codec.MAX_ORIGINAL_BYTES], len(deep))


def test_an_unbalanced_deep_envelope_is_rejected_whole():
    data = b'{"type":"envelope","v":1,"events":[' + js(score()) + b"," + b"[" * 100_000 + b"]}"
    assert [(r.reason, r.raw) for r in codec.decode(data).errors] == [("too_deep", data)]


def test_envelope_at_max_events_is_accepted():
    """Codec side only: jsonschema needs ~13 s for 10_000 events; the schema's
    maxItems is pinned to MAX_ENVELOPE_EVENTS in test_schemas."""
    events = [score(event_id=f"e{i}") for i in range(codec.MAX_ENVELOPE_EVENTS)]
    assert len(codec.decode_strict(js(envelope(*events)))) == codec.MAX_ENVELOPE_EVENTS


def test_bad_event_raw_is_bounded():
    decoded = codec.decode(js(envelope(score(), score(event_id="e" * 100_000))))
    (rejected,) = decoded.errors
    assert rejected.reason == "id_too_long"
    assert len(rejected.raw) == 4096 and rejected.size > 100_000


def test_decode_strict_raises_decode_error():
    with pytest.raises(codec.DecodeError) as info:
        codec.decode_strict(js(score(v=9)))
    assert info.value.reason == "unknown_version" and "v=9" in info.value.detail


def test_dead_letter_record_matches_schema():
    data = js(score(policy_id="p" * 10_000))
    (rejected,) = codec.decode(data).errors
    record = codec.dead_letter(rejected, "npo.scores", 3, 1088, now=1732773700.0)
    encoded = json.loads(codec.encode(record))
    schemas.validator("dead_letter").validate(encoded)
    assert encoded["reason"] == "id_too_long" and encoded["original_size"] == len(data)
    assert base64.b64decode(encoded["original_b64"]) == data[:4096]
    assert msgspec.json.decode(codec.encode(record), type=type(record)) == record


def test_dead_letter_without_a_source_offset():
    """join_expired records stem from no single message: offset -1."""
    raw = codec.encode(FeedbackEvent(v=1, event_id="f", scenario_id="s", ts=1.0, kind="like"))
    record = codec.dead_letter(codec.Rejected("join_expired", "no score event", raw), "npo.feedback", 0, -1, 5.0)
    encoded = json.loads(codec.encode(record))
    schemas.validator("dead_letter").validate(encoded)
    assert encoded["original_size"] == len(raw) and encoded["source"]["offset"] == -1


def test_encode_envelope_refuses_what_decode_would_reject():
    with pytest.raises(ValueError):
        codec.encode_envelope([])
    big = ScoreEvent(v=1, event_id="e" * 256, scenario_id="s" * 256, policy_id="p" * 256, score=0.5, tau=0.5,
                     decision="act", ts=1.0)
    with pytest.raises(ValueError):
        codec.encode_envelope([big] * codec.MAX_ENVELOPE_EVENTS)


def test_encode_accepts_numpy_scalars():
    np = pytest.importorskip("numpy")
    event = ScoreEvent(v=1, event_id="e", scenario_id="s", policy_id="p", score=np.float32(0.25),
                       tau=np.float64(0.5), decision="act", ts=np.int64(7))
    assert codec.decode_strict(codec.encode(event))[0].ts == 7.0


def test_v_1_0_is_version_1_and_other_non_integers_say_so():
    """JSON Schema's const 1 accepts 1.0; the decoded event is the same as for 1."""
    (s,) = codec.decode_strict(js(score(v=1.0)))
    assert s == codec.decode_strict(js(score()))[0] and type(s.v) is int
    for v in (1.5, True, "1", None):
        (rejected,) = codec.decode(js(envelope(score(), v=v))).errors
        assert rejected.reason == "schema" and "v must be the integer 1" in rejected.detail, rejected


# --- properties ------------------------------------------------------------

ids = st.text(min_size=1, max_size=256)
units = st.floats(0, 1)
times = st.floats(0, MAX_EPOCH_S, exclude_max=True)
decisions = st.sampled_from(["act", "hold", "abstain"])
score_events = st.builds(
    ScoreEvent, v=st.just(1), event_id=ids, scenario_id=ids, policy_id=ids, segment=ids, score=units, tau=units,
    decision=decisions, ts=times, model_version=st.none() | ids,
)
feedback_events = st.builds(
    FeedbackEvent, v=st.just(1), event_id=ids, scenario_id=ids, ts=times,
    kind=st.sampled_from(["like", "override", "abstain"]),
    source=st.sampled_from(["human", "reviewer", "audit", "llm_judge"]),
    preferred=st.sampled_from([None, "act", "hold"]), weight=st.floats(0, 1000, exclude_min=True),
    policy_id=st.none() | ids, segment=st.none() | ids, score=st.none() | units, tau=st.none() | units,
    decision=st.none() | decisions,
)
events = score_events | feedback_events
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=300)
    | st.sampled_from(["act", "hold", "abstain", "like", "override", "human", "audit", "", "x" * 257]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
BAD_EVENTS = [  # (an event's bytes inside an envelope, its reason)
    (js(score(score=1.5)), "bad_value"), (js(score(tau=float("nan"))), "bad_value"),
    (js_raw(feedback(weight="@"), b"1e999"), "bad_value"), (js(feedback(weight=0)), "bad_value"),
    (js(score(v=2)), "unknown_version"), (js(feedback(v=0.0)), "unknown_version"),
    (js(feedback(event_id=DROP)), "schema"), (js(score(score="0.5")), "schema"), (js(score(v=1.5)), "schema"),
    (js(feedback(v=True)), "schema"), (js(score(decision=None)), "schema"),
    (js(feedback(kind="dislike")), "unknown_kind"), (js(score(decision="maybe")), "bad_decision"),
    (js(feedback(source="crowd")), "bad_source"), (js(feedback(preferred="abstain")), "bad_preferred"),
    (js(score(policy_id="p" * 300)), "id_too_long"), (js(feedback(scenario_id="s" * 100_000)), "id_too_long"),
    (b"42", "unknown_type"), (b'"score"', "unknown_type"), (js(envelope(score())), "unknown_type"),
    (js(score(type="trigger")), "unknown_type"), (js(score(x=nested(14))), "too_deep"),
    (js(feedback(x={"y": nested(13)})), "too_deep"),
    (b'{"type":"score","x":' + b"[" * 5000 + b"]" * 5000 + b"}", "too_deep"),
]


@given(st.binary(max_size=600) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_never_raise(data):
    decoded = codec.decode(data)
    assert decoded.events or decoded.errors
    assert all(r.reason in REASONS and len(r.detail) <= 1000 for r in decoded.errors)


@given(json_values)
def test_arbitrary_json_never_raises(value):
    decoded = codec.decode(js(value))
    assert decoded.events or decoded.errors


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from([SCORE, FEEDBACK]),
    key=st.sampled_from(sorted(set(SCORE) | set(FEEDBACK) | {"weight", "source", "preferred", "extra"})),
    value=json_values | st.just(DROP),
)
def test_mutated_events_agree_with_schema(base, key, value):
    data = js(_with(base, {key: value}))
    decoded = codec.decode(data)
    assert contract_accepts(data) == (not decoded.errors), decoded.errors
    assert len(decoded.events) + len(decoded.errors) == 1


@given(events)
def test_round_trip_is_identity(event):
    data = codec.encode(event)
    assert codec.decode(data) == codec.Decoded([event], [])
    assert contract_accepts(data)


def test_bad_events_cover_every_reason_an_event_can_have():
    """not_json, oversized and the framing reasons concern the whole message, join_expired no message."""
    assert {reason for _, reason in BAD_EVENTS} \
        == REASONS - {"not_json", "oversized", "unknown_magic_byte", "truncated_frame", "join_expired", "not_msgpack"}


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(events, st.sampled_from([b'"v":1,', b'"v":1.0,', b'"v":1e0,', b'"v":1,"x":[[{}]],'])),
                max_size=8),
       st.lists(st.sampled_from(BAD_EVENTS), max_size=8),
       st.randoms(use_true_random=False), st.sampled_from([b",", b", ", b" ,\n\t", b"\r\n,"]))
def test_envelope_keeps_good_events_and_rejects_each_bad_one(good, bad, rnd, comma):
    """Good events, written in any way the schema allows, each come out once and in order;
    each bad one is dead-lettered once, in order, with its reason and its own bytes."""
    assume(good or bad)
    slots = [(codec.encode(e).replace(b'"v":1,', v, 1), e, None) for e, v in good]
    slots += [(data, None, reason) for data, reason in bad]
    rnd.shuffle(slots)
    data = b'{"type":"envelope", "v":1, "events":[ ' + comma.join(raw for raw, _, _ in slots) + b" ]}"
    decoded = codec.decode(data)
    assert decoded.events == [event for _, event, reason in slots if reason is None]
    bad_slots = [(raw, reason) for raw, _, reason in slots if reason is not None]
    assert [(r.reason, r.raw, r.size) for r in decoded.errors] \
        == [(reason, raw[:codec.MAX_ORIGINAL_BYTES], len(raw)) for raw, reason in bad_slots]


# --- the schemas' whole domain ----------------------------------------------
# Values for every field, drawn across what the schemas accept, their edges, and what lies just
# past them; each generated message is judged by the codec and by jsonschema on the same bytes.

ULP = math.ulp
WRONG_TYPES = [None, True, 0, 1.5, "1", [], {}, ["a"], {"a": 1}]


def mostly(valid, *invalid):
    """A field's value: from ``valid`` nine times in ten, else from ``invalid`` or of a wrong JSON type."""
    return st.sampled_from([True] * 9 + [False]).flatmap(
        lambda ok: valid if ok else st.one_of(*invalid, st.sampled_from(WRONG_TYPES)))


nearly_always = st.sampled_from([True] * 15 + [False])
any_ids = mostly(
    st.text(min_size=1, max_size=256) | st.integers(1, 256).map(lambda n: "\U0001f600" * n)
    | st.sampled_from([" ", "\u0301", "\x00", "x" * 256, "\u00e9" * 256]),
    st.sampled_from(["", "x" * 257, "\U0001f600" * 257, "y" * 10_000]),
)
any_units = mostly(
    st.floats(0, 1) | st.sampled_from([0, 1, 0.0, 1.0, -0.0, 5e-324, 1 - ULP(1) / 2]),
    st.floats(allow_nan=True).filter(lambda x: not 0 <= x <= 1),
    st.sampled_from([-5e-324, 1 + ULP(1), 2, -1, 2**64, 10**400]),
)
any_times = mostly(
    st.floats(0, MAX_EPOCH_S, exclude_max=True) | st.integers(0, 253402300799)
    | st.sampled_from([0, -0.0, 5e-324, MAX_EPOCH_S - ULP(MAX_EPOCH_S)]),
    st.sampled_from([MAX_EPOCH_S, 253402300800, -5e-324, -1, 2**64, 10**400, float("inf"), float("nan")]),
)
any_weights = mostly(
    st.floats(0, 1000, exclude_min=True) | st.integers(1, 1000) | st.sampled_from([1e-300, 5e-324, 1000, 1000.0]),
    st.sampled_from([0, 0.0, -0.0, -5e-324, 1000 + ULP(1000), 1001, -1, 2**64, float("inf")]),
)
any_versions = mostly(st.sampled_from([1, 1.0]),
                      st.sampled_from([2, 2.0, 0, -1, 1.5, 1 - ULP(1) / 2, 1 + ULP(1), 10**400]))


def enum(*values: str):
    return mostly(st.sampled_from(values), st.sampled_from(["", "x", values[0].upper()]))


def optional(values):
    return st.none() | values


def _nest(depth: int, shapes: list[bool], leaf):
    """A value exactly ``depth`` deep (a scalar when 0), lists and objects mixed."""
    value = leaf
    for is_list in shapes[:depth]:
        value = [value] if is_list else {"k": value}
    return value


scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from(['"', "\\", '\\"', "[{", "]}", ",", '"events":[', "\u2028"])
)
extra_values = st.builds(_nest, st.integers(0, 17), st.lists(st.booleans(), min_size=17, max_size=17), scalars)
KNOWN = set(SCORE) | set(FEEDBACK) | {"weight", "source", "preferred", "segment", "model_version", "producer", "events"}
extras = st.dictionaries(st.text(max_size=6).filter(lambda k: k not in KNOWN), extra_values, max_size=2)


@st.composite
def fields(draw, required: dict, optionals: dict):
    """An object with each required field nearly always, each optional one half the time, and unknown fields."""
    out = draw(extras)
    for name, values in required.items():
        if draw(nearly_always):
            out[name] = draw(values)
    for name, values in optionals.items():
        if draw(st.booleans()):
            out[name] = draw(values)
    return out


schema_scores = fields(
    {"type": st.just("score"), "v": any_versions, "event_id": any_ids, "scenario_id": any_ids,
     "policy_id": any_ids, "score": any_units, "tau": any_units, "decision": enum("act", "hold", "abstain"),
     "ts": any_times},
    {"segment": any_ids, "model_version": optional(any_ids)},
)
schema_feedback = fields(
    {"type": st.just("feedback"), "v": any_versions, "event_id": any_ids, "scenario_id": any_ids,
     "ts": any_times, "kind": enum("like", "override", "abstain")},
    {"source": enum("human", "reviewer", "audit", "llm_judge"), "preferred": optional(enum("act", "hold")),
     "weight": any_weights, "policy_id": optional(any_ids), "segment": optional(any_ids),
     "score": optional(any_units), "tau": optional(any_units), "decision": optional(enum("act", "hold", "abstain"))},
)
schema_events = schema_scores | schema_feedback


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema_events)
def test_events_from_the_schemas_domain_get_the_schemas_verdict(event):
    data = js(event)
    decoded = codec.decode(data)
    assert contract_accepts(data) == (not decoded.errors), decoded.errors
    assert len(decoded.events) + len(decoded.errors) == 1
    assert all(r.reason in REASONS for r in decoded.errors)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(schema_events, max_size=5), fields({"type": st.just("envelope"), "v": any_versions},
                                                   {"producer": optional(any_ids)}))
def test_envelopes_from_the_schemas_domain_get_the_schemas_verdict_event_by_event(items, header):
    """The whole envelope's verdict is the schema's; when only events are bad,
    exactly the events the schema accepts inside an envelope come out, in order."""
    data = js({**header, "events": items})
    decoded = codec.decode(data)
    assert contract_accepts(data) == (not decoded.errors), decoded.errors
    if contract_accepts(js({**header, "events": [SCORE]})) and items:
        one_by_one = [codec.decode(js(item)).events for item in items if contract_accepts(js(envelope(item)))]
        assert decoded.events == [e for events in one_by_one for e in events]
        assert len(decoded.errors) == len(items) - len(one_by_one)
    else:
        assert not decoded.events and len(decoded.errors) == 1


# --------------------------------------------------------------------------- batches of messages

def _one_at_a_time(messages: list[bytes]) -> tuple[list, list]:
    events, errors = [], []
    for m in messages:
        d = codec.decode(m)
        events += d.events
        errors += d.errors
    return events, errors


_LARGE = js(score(event_id="big")) + b" " * 60_000
"""A good message long enough that a batch holding it is decoded a message at a time."""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([data for _, data, _ in CASES] + [js(score()).replace(b",", b",\n", 1),
                                                                   b"   ", b"\n", js(score()) + b"\n",
                                                                   _LARGE, _LARGE[:-1]]
                                 + [frame(data, 10) for _, data, _ in CASES[::7]]),
                max_size=12))
def test_a_batch_decodes_as_its_messages_do_or_not_at_all(messages):
    events, errors = _one_at_a_time(messages)
    batch = codec.decode_all_good(messages)
    if errors:
        assert batch is None  # a bad message is never decoded past: each gets its own dead letter
    else:  # None only sends good messages one at a time (a newline, brackets in strings)
        assert batch is None or batch == events


def test_ordinary_good_messages_decode_in_one_call():
    messages = [data for _, data, expected in CASES if expected == OK and b"\n" not in data][:12]
    assert len(messages) >= 10
    assert codec.decode_all_good(messages) == _one_at_a_time(messages)[0]


def test_messages_that_make_valid_lines_only_when_joined_are_not_taken_as_a_batch():
    # each message is bad alone; joined by newlines they would read as two good events
    one, two = js(score()), js(score(event_id="e-2"))
    assert codec.decode_all_good([one[:-1], b"}" + b"\n" + two]) is None
    assert codec.decode_all_good([one + b"\n" + two, b""]) is None


def test_a_batch_too_deep_or_too_large_goes_one_message_at_a_time():
    assert codec.decode_all_good([js(score(x=nested(16)))]) is None
    assert codec.decode_all_good([js(score()), b" " * (codec.MAX_MESSAGE_BYTES + 1)]) is None
    assert codec.decode_all_good([js(score(x=nested(15)))]) == codec.decode(js(score(x=nested(15)))).events
    pad = b" " * codec._LINES_BELOW  # the same, decoded a message at a time
    assert codec.decode_all_good([js(score(x=nested(16))) + pad]) is None
    assert codec.decode_all_good([js(score(x=nested(15))) + pad]) == codec.decode(js(score(x=nested(15)))).events


# --------------------------------------------------------------------------- Schema Registry frames

FRAMING_REASONS = {"unknown_magic_byte": "not_json", "truncated_frame": "not_json"}
"""Inside a frame, bytes that start no JSON are simply not JSON."""


@pytest.mark.parametrize(("data", "expected"), [pytest.param(d, e, id=i) for i, d, e in CASES])
def test_a_framed_message_decodes_as_its_json_and_its_schema_id_is_counted(data, expected):
    """Same events and reasons as the bare JSON; a whole-message rejection keeps the whole frame,
    an envelope's bad event its own bytes. Every frame's id is counted, good or bad, unless the
    message is too large to be read at all."""
    framed, schema_id = frame(data, 0x01020304), 0x01020304
    before = codec.schema_ids[schema_id]
    decoded, bare = codec.decode(framed), codec.decode(data)
    assert decoded.events == bare.events
    assert sorted(r.reason for r in decoded.errors) == sorted(FRAMING_REASONS.get(r, r) for r in expected)
    for got, want in zip(decoded.errors, bare.errors):
        assert got.raw == (framed if got.size is None else want.raw)
    oversized = len(framed) > codec.MAX_MESSAGE_BYTES
    assert codec.schema_ids[schema_id] - before == (0 if oversized else 1)


def test_every_first_byte_is_json_a_frame_a_columnar_envelope_or_an_unknown_magic_byte():
    for byte in range(256):
        data = bytes([byte]) + js(score())
        reasons = [r.reason for r in codec.decode(data).errors]
        if byte in b" \t\n\r":
            assert reasons == [], byte
        elif byte == 0:  # a frame of id '{"ty' around 'pe": "score", ...', which is not JSON
            assert reasons == ["not_json"], byte
        elif byte in b'{["-0123456789tfn':
            assert reasons == ["not_json"], byte
        elif 0x80 <= byte <= 0x8F or byte in (0xDE, 0xDF):  # a msgpack map: a columnar envelope
            assert reasons == ["not_msgpack"], byte
        else:
            assert reasons == ["unknown_magic_byte"], byte


def test_framed_envelope_keeps_its_good_events_and_counts_once():
    before = codec.schema_ids[42]
    data = frame(js(envelope(score(event_id="a"), score(event_id="b", score=2), feedback(event_id="c"))), 42)
    decoded = codec.decode(data)
    assert [e.event_id for e in decoded.events] == ["a", "c"]
    (rejected,) = decoded.errors
    assert (rejected.reason, json.loads(rejected.raw)) == ("bad_value", score(event_id="b", score=2))
    assert codec.schema_ids[42] - before == 1


def test_a_batch_of_frames_decodes_in_one_call_and_counts_each_id_once(monkeypatch):
    """Ids whose bytes hold a newline or a bracket do not disturb the batch; plain JSON may
    sit between frames; a batch with a bad frame counts nothing itself (its caller decodes
    each message, which counts)."""
    monkeypatch.setattr(codec, "schema_ids", codec.Counter())
    good = [frame(js(score(event_id="a")), 10), js(feedback(event_id="b")),
            frame(js(envelope(score(event_id="c"), feedback(event_id="d"))), 0x5B7B0A00)]
    monkeypatch.setattr(codec, "decode", None)  # one call: never one message at a time
    assert [e.event_id for e in codec.decode_all_good(good)] == ["a", "b", "c", "d"]
    assert codec.schema_ids == {10: 1, 0x5B7B0A00: 1}
    assert codec.decode_all_good([*good, frame(js(score(score=2)), 10)]) is None
    assert codec.decode_all_good([*good, b"\x00\x00"]) is None
    assert codec.decode_all_good([frame(frame(js(score()), 10), 10)]) is None
    assert codec.decode_all_good([frame(js(score()) + b" " * (codec.MAX_MESSAGE_BYTES - len(js(score()))), 1)]) \
        is None
    assert codec.schema_ids == {10: 1, 0x5B7B0A00: 1}


def test_batches_count_as_messages_decoded_one_at_a_time(monkeypatch):
    messages = [frame(js(score()), 1), frame(js(score(score=2)), 2), frame(js(feedback()), 1), b"\x00\x00"]
    monkeypatch.setattr(codec, "schema_ids", codec.Counter())
    events, rejected = codec.decode_batch(messages)
    assert len(events) == 2 and [(i, r.reason) for i, r in rejected] == [(1, "bad_value"), (3, "truncated_frame")]
    assert codec.schema_ids == {1: 2, 2: 1}


def test_distinct_schema_ids_are_bounded(monkeypatch):
    """Hostile frames with ever new ids cannot grow the counter: past the bound they count as -1."""
    monkeypatch.setattr(codec, "schema_ids", codec.Counter())
    monkeypatch.setattr(codec, "MAX_SCHEMA_IDS", 3)
    for schema_id in (1, 2, 3, 4, 5, 1):
        codec.decode(frame(js(score()), schema_id))
    assert codec.schema_ids == {1: 2, 2: 1, 3: 1, -1: 2}


def test_plain_json_never_reaches_the_frame_code(monkeypatch):
    """The fast paths for plain JSON are as before: the framing code runs only after a
    decode failed."""
    def unreachable(*_):
        raise AssertionError("frame code on the fast path")

    for name in ("_not_plain_json", "_framed", "_all_good_framed", "_count_schema_id"):
        monkeypatch.setattr(codec, name, unreachable)
    assert len(codec.decode(js(score())).events) == 1
    assert len(codec.decode(js(envelope(score(), feedback()))).events) == 2
    assert len(codec.decode_all_good([js(score()), js(envelope(score(), feedback()))])) == 3
    assert codec.decode_all_good([js(score()), b"{"]) is None
