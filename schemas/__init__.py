"""The v1 event contract as JSON Schema (draft 2020-12), shipped as package data.

The schemas are the language-neutral statement of what ``streams.codec``
accepts, so producers in any language can validate against the same rules.
They reference each other by relative ``$ref`` (e.g. ``common.schema.json``),
which :func:`validator` resolves from this package, never from the network.
"""

import json
from importlib import resources

_SUFFIX = ".schema.json"


def names() -> list[str]:
    """Names of the shipped schemas, e.g. ``["common", "envelope", ...]``."""
    return sorted(
        entry.name.removesuffix(_SUFFIX)
        for entry in resources.files(__name__).iterdir()
        if entry.name.endswith(_SUFFIX)
    )


def load(name: str) -> dict:
    """A fresh copy of schema ``name``; KeyError for names not in :func:`names`
    (so a caller-supplied name can never reach outside the package)."""
    if name not in names():
        raise KeyError(name)
    return json.loads(resources.files(__name__).joinpath(name + _SUFFIX).read_text("utf-8"))


def validator(name: str):
    """A ``jsonschema.Draft202012Validator`` for ``name`` that resolves the
    cross-schema ``$ref``s locally. jsonschema is imported here, not at module
    level, because only tests and tools need it."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    registry = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in map(load, names())
    )
    return Draft202012Validator(load(name), registry=registry)
