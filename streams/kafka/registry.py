"""`npo schemas register`: the event schemas in a Confluent-compatible Schema Registry.

Producers that use Confluent's JSON Schema serializer look up the schema registered under
``<topic>-value`` and frame each message with its id; :mod:`streams.codec` reads those frames.
Each subject gets one self-contained document (JSON Schema 2020-12 bundling): the schemas a
topic's messages follow, with every schema they reference embedded under ``$defs`` by its own
``$id``, so the relative ``$ref``s resolve unchanged and no subject depends on another.
Only the standard library is used: the command needs no Kafka client.
"""
from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

import schemas
from streams.settings import Settings

URL_ENV = "NPO_SCHEMA_REGISTRY_URL"

#: topic role -> the schemas its messages follow (any one of them); the internal topics
#: (partials, checkpoints) are binary and have none
TOPIC_SCHEMAS = {
    "scores": ("score", "envelope"),
    "feedback": ("feedback", "envelope"),
    "triggers": ("trigger",),
    "actions": ("action",),
    "stats": ("window_stats",),
    "deadletters": ("dead_letter",),
}

_SUFFIX = ".schema.json"
_FILE_REF = re.compile(r"^(\w+)" + re.escape(_SUFFIX))
_MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(RuntimeError):
    """The registry refused a request or answered with something unexpected."""


def _references(schema: object) -> set[str]:
    """Names of the shipped schemas that ``schema`` refers to by relative ``$ref``."""
    found, stack = set(), [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and (match := _FILE_REF.match(ref)):
                found.add(match[1])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def bundle(names: tuple[str, ...], doc_id: str) -> dict:
    """One document accepting a message that any of the schemas ``names`` accepts, with
    every shipped schema they reach embedded; ``doc_id`` names it (a URI beside theirs)."""
    embedded, todo = {}, list(names)
    while todo:
        name = todo.pop()
        if name not in embedded:
            embedded[name] = schemas.load(name)
            todo.extend(_references(embedded[name]))
    base = embedded[names[0]]["$id"].rsplit("/", 1)[0] + "/"
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": base + doc_id,
        "anyOf": [{"$ref": name + _SUFFIX} for name in names],
        "$defs": {name: embedded[name] for name in sorted(embedded)},
    }


def subjects(settings: Settings) -> dict[str, dict]:
    """Subject name (``<topic>-value``) -> its schema document, for every topic with one."""
    return {f"{settings.topic(role)}-value": bundle(names, f"{role}-value{_SUFFIX}")
            for role, names in TOPIC_SCHEMAS.items()}


def _call(url: str, body: dict, timeout: float) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": _MEDIA_TYPE, "Accept": _MEDIA_TYPE})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace")
        try:
            text = json.loads(text).get("message", text)
        except (ValueError, AttributeError):
            pass
        raise RegistryError(f"POST {url}: HTTP {exc.code}: {text[:500]}") from None
    except urllib.error.URLError as exc:
        raise RegistryError(f"POST {url}: {exc.reason}") from None


def register(url: str, settings: Settings, timeout: float = 10.0) -> dict[str, int]:
    """Register each subject's schema document and return subject -> schema id.

    Idempotent: the registry gives a schema already registered under a subject its
    existing id (Confluent's contract for ``POST /subjects/{subject}/versions``)."""
    ids = {}
    for subject, document in subjects(settings).items():
        path = f"{url.rstrip('/')}/subjects/{urllib.parse.quote(subject, safe='')}/versions"
        answer = _call(path, {"schemaType": "JSON", "schema": json.dumps(document)}, timeout)
        if not isinstance(answer.get("id"), int):
            raise RegistryError(f"POST {path}: no schema id in the answer {answer!r:.200}")
        ids[subject] = answer["id"]
    return ids


def add_command(subparsers, settings_args) -> None:
    """Register ``npo schemas register``."""
    parser = subparsers.add_parser("schemas", help="the event schemas in a Schema Registry")
    reg = parser.add_subparsers(dest="schemas_command", required=True).add_parser(
        "register", help="register each topic's JSON schema under <topic>-value (idempotent)")
    reg.add_argument("--registry-url", help=f"Confluent-compatible API base URL (default: {URL_ENV})")
    settings_args(reg)
    reg.set_defaults(run=_register)


def _register(args) -> int:
    from streams.kafka.commands import settings_from_args

    url = args.registry_url or os.environ.get(URL_ENV)
    if not url:
        print(f"npo schemas register: no registry URL (--registry-url or {URL_ENV})", file=sys.stderr)
        return 2
    try:
        ids = register(url, settings_from_args(args))
    except (RegistryError, OSError, ValueError) as exc:
        print(f"npo schemas register: {exc}", file=sys.stderr)
        return 2
    for subject, schema_id in ids.items():
        print(f"{subject}: id {schema_id}")
    return 0
