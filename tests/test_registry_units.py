"""The documents `npo schemas register` sends: each subject's bundle judges messages exactly as
the shipped schemas do, offline (every ``$ref`` resolves inside the bundle). The registry itself:
tests/integration/test_schema_registry.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

import schemas
from streams.cli import main
from streams.kafka import registry
from streams.settings import load

EXAMPLES = {path.name: json.loads(path.read_text("utf-8"))
            for path in (Path(schemas.__file__).parent / "examples").glob("*.json")}


def _messages() -> list[dict]:
    """Every example, and each one broken in a way its schema rejects."""
    out = []
    for value in EXAMPLES.values():
        out.append(value)
        if isinstance(value, dict):
            out += [{**value, "v": 2}, {k: v for k, v in value.items() if k != "type"}]
    return out


@pytest.mark.parametrize("role", sorted(registry.TOPIC_SCHEMAS))
def test_each_bundle_accepts_what_its_schemas_accept(role):
    bundle = Draft202012Validator(registry.bundle(registry.TOPIC_SCHEMAS[role], f"{role}-value.schema.json"))
    shipped = [schemas.validator(name) for name in registry.TOPIC_SCHEMAS[role]]
    verdicts = [(bundle.is_valid(m), any(v.is_valid(m) for v in shipped)) for m in _messages()]
    assert all(a == b for a, b in verdicts)
    assert any(a for a, _ in verdicts) and not all(a for a, _ in verdicts)


def test_subjects_are_the_topics_value_subjects():
    subjects = registry.subjects(load(overrides={"topic_prefix": "acme."}, env={}))
    assert sorted(subjects) == sorted(f"acme.{role}-value" for role in registry.TOPIC_SCHEMAS)
    embedded = subjects["acme.scores-value"]["$defs"]
    assert sorted(embedded) == ["common", "envelope", "feedback", "score"]
    assert all(embedded[name] == schemas.load(name) for name in embedded)


def test_register_needs_a_url(monkeypatch, capsys):
    monkeypatch.delenv(registry.URL_ENV, raising=False)
    assert main(["schemas", "register"]) == 2
    assert registry.URL_ENV in capsys.readouterr().err


def test_an_unreachable_registry_is_one_line_and_exit_2(capsys):
    assert main(["schemas", "register", "--registry-url", "http://127.0.0.1:9/apis/ccompat/v7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npo schemas register: POST http://127.0.0.1:9/") and err.count("\n") == 1
