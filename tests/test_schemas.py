"""The shipped JSON Schemas are valid, self-consistent, and agree with the
codec's bounds and Structs on their own examples."""

import json
import re
import typing
from importlib import resources
from pathlib import Path

import msgspec
import pytest
from jsonschema import Draft202012Validator

import schemas
from streams import codec, events

EXAMPLE_FILES = sorted(
    entry for entry in resources.files("schemas").joinpath("examples").iterdir() if entry.name.endswith(".json")
)
STRUCTS = {
    "window": events.Window,
    "trigger": events.TriggerEvent,
    "window_stats": events.WindowStatsEvent,
    "dead_letter": events.DeadLetter,
    "action": events.ActionEvent,
}


def all_examples():
    for name in schemas.names():
        for i, example in enumerate(schemas.load(name)["examples"]):
            yield pytest.param(name, example, id=f"{name}[{i}]")
    for entry in EXAMPLE_FILES:
        yield pytest.param(entry.name.split(".")[0], json.loads(entry.read_text("utf-8")), id=entry.name)


def test_names_cover_every_event_type():
    assert schemas.names() == [
        "action", "common", "dead_letter", "envelope", "feedback", "score", "trigger", "window", "window_stats",
    ]


@pytest.mark.parametrize("name", schemas.names())
def test_schema_is_valid_draft_2020_12(name):
    schema = schemas.load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{name}.schema.json")
    assert schema["title"] and schema["description"] and schema["examples"]


@pytest.mark.parametrize(("name", "example"), list(all_examples()))
def test_example_validates(name, example):
    schemas.validator(name).validate(example)


def test_every_example_file_names_a_schema():
    assert EXAMPLE_FILES
    for entry in EXAMPLE_FILES:
        assert entry.name.split(".")[0] in schemas.names(), entry.name


@pytest.mark.parametrize(("name", "example"), [p for p in all_examples() if p.values[0] != "common"])
def test_example_decodes_and_round_trips(name, example):
    """Schema and Structs describe the same contract: each example decodes
    and survives a round trip through the Structs."""
    data = json.dumps(example).encode()
    if name in STRUCTS:
        decoded = msgspec.json.decode(data, type=STRUCTS[name])
        assert msgspec.json.decode(codec.encode(decoded), type=STRUCTS[name]) == decoded
    else:
        decoded = codec.decode_strict(data)
        assert codec.decode_strict(codec.encode_envelope(decoded)) == decoded


def test_load_refuses_names_outside_the_package():
    with pytest.raises(KeyError):
        schemas.load("../pyproject")


def test_load_returns_a_fresh_copy():
    schemas.load("score")["title"] = "changed"
    assert schemas.load("score")["title"] != "changed"


def _walk(node):
    stack = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def test_schema_bounds_match_codec_constants():
    common = schemas.load("common")["$defs"]
    assert common["id"]["maxLength"] == common["optional_id"]["maxLength"] == codec.MAX_ID_LEN
    assert common["epoch_s"]["exclusiveMaximum"] == events.MAX_EPOCH_S
    assert max(int(k[1:]) for k in common if k.startswith("d") and k[1:].isdigit()) == codec.MAX_DEPTH
    assert schemas.load("common")["$ref"] == f"#/$defs/d{codec.MAX_DEPTH}"
    assert schemas.load("envelope")["properties"]["events"]["maxItems"] == codec.MAX_ENVELOPE_EVENTS
    dead = schemas.load("dead_letter")["properties"]
    assert dead["detail"]["maxLength"] == events.MAX_DETAIL_LEN
    assert dead["original_b64"]["maxLength"] == 4 * -(-events.MAX_ORIGINAL_BYTES // 3)
    lengths = {n["maxLength"] for name in schemas.names() for n in _walk(schemas.load(name)) if "maxLength" in n}
    assert lengths == {codec.MAX_ID_LEN, events.MAX_DETAIL_LEN, dead["original_b64"]["maxLength"]}


def test_depth_bound_is_exact():
    validator = schemas.validator("common")
    assert validator.is_valid(json.loads("[" * 16 + "]" * 16))
    assert not validator.is_valid(json.loads("[" * 17 + "]" * 17))


def test_dead_letter_reasons_are_the_codecs_and_each_is_documented():
    """One list of reasons in three places: the Reason type, the published
    schema and the README's table of what each means."""
    reasons = list(typing.get_args(events.Reason))
    assert schemas.load("dead_letter")["properties"]["reason"]["enum"] == reasons
    readme = (Path(__file__).parents[1] / "README.md").read_text("utf-8")
    table = re.search(r"\n((?:\|.*\n)+)", readme.split("**Dead-letter reasons.**")[1])[1]
    assert re.findall(r"^\| `(\w+)` \|", table, re.M) == reasons
