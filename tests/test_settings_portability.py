"""The README promises Python 3.10+: no module may use syntax or standard-library names that
arrived in 3.11 or later, and the settings must read TOML without `tomllib` (new in 3.11)."""
from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for pkg in ("streams", "kernels", "loadtest", "schemas", "tests")
                 for p in (ROOT / pkg).rglob("*.py"))

#: Standard-library modules and names that Python 3.10 lacks.
NEW_MODULES = {"tomllib", "wsgiref.types"}
NEW_NAMES = {
    "datetime": {"UTC"},
    "typing": {"Self", "Never", "LiteralString", "assert_never", "assert_type", "reveal_type", "Required",
               "NotRequired", "TypeVarTuple", "Unpack", "dataclass_transform", "override", "TypeAliasType"},
    "enum": {"StrEnum", "verify", "member", "nonmember", "EnumCheck", "ReprEnum"},
    "asyncio": {"TaskGroup", "timeout", "timeout_at", "Runner", "Timeout"},
    "hashlib": {"file_digest"},
    "contextlib": {"chdir"},
    "itertools": {"batched"},
    "operator": {"call"},
    "math": {"cbrt", "exp2", "sumprod"},
    "logging": {"getLevelNamesMapping"},
}
NEW_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}


def _guarded(node: ast.AST, parents: dict) -> bool:
    """Whether an import sits in a ``try`` that falls back on ImportError/ModuleNotFoundError."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            return True
    return False


def _newer_than_310(tree: ast.AST) -> list[str]:
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name in NEW_MODULES and not _guarded(node, parents)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in NEW_MODULES and not _guarded(node, parents):
                found.append(f"from {node.module} import ...")
            found += [f"{node.module}.{a.name}" for a in node.names if a.name in NEW_NAMES.get(node.module, ())]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.attr in NEW_NAMES.get(node.value.id, ()):
                found.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in NEW_BUILTINS:
            found.append(node.id)
    return found


def test_every_module_parses_as_python_3_10_and_uses_no_newer_library_names():
    assert len(SOURCES) > 50
    problems = {}
    for path in SOURCES:
        text = path.read_text()
        try:
            tree = ast.parse(text, filename=str(path), feature_version=(3, 10))
        except SyntaxError as e:
            problems[str(path.relative_to(ROOT))] = f"not 3.10 syntax: {e}"
            continue
        newer = _newer_than_310(tree)
        if newer:
            problems[str(path.relative_to(ROOT))] = newer
    assert not problems, problems


def test_the_check_finds_what_3_10_lacks():
    found = _newer_than_310(ast.parse("import tomllib\nfrom datetime import UTC\nimport asyncio\n"
                                      "async def f():\n    async with asyncio.TaskGroup():\n        pass\n"
                                      "raise ExceptionGroup('x', [])\n"))
    assert sorted(found) == ["ExceptionGroup", "asyncio.TaskGroup", "datetime.UTC", "import tomllib"]
    guarded = "try:\n    import tomllib\nexcept ModuleNotFoundError:\n    import tomli as tomllib\n"
    assert _newer_than_310(ast.parse(guarded)) == []
    with pytest.raises(SyntaxError):  # syntax is the parser's part
        ast.parse("try:\n    pass\nexcept* ValueError:\n    pass\n", feature_version=(3, 10))


def _reimport_settings(monkeypatch):
    """A fresh import of streams.settings; ``monkeypatch.undo()`` puts the original module back
    (other modules hold its classes)."""
    import streams
    import streams.settings

    monkeypatch.setattr(streams, "settings", streams.settings)
    monkeypatch.delitem(sys.modules, "streams.settings")
    return importlib.import_module("streams.settings")


def test_settings_read_toml_with_tomli_where_tomllib_is_missing(monkeypatch, tmp_path):
    """As on Python 3.10: `import tomllib` fails and the `tomli` dependency reads the file.
    Where tomli itself is not installed (3.11+ does not need it), the standard module stands
    in under its name: what matters is that the settings take that path."""
    try:
        import tomli
    except ModuleNotFoundError:
        import tomllib as tomli
    monkeypatch.setitem(sys.modules, "tomllib", None)  # any import of it now raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "tomli", tomli)
    try:
        settings = _reimport_settings(monkeypatch)
        assert settings.tomllib is tomli
        path = tmp_path / "npo.toml"
        path.write_text('topic_prefix = "t."\ntopic_partitions = 3\n')
        loaded = settings.load(config_file=str(path), env={})
        assert (loaded.topic_prefix, loaded.topic_partitions) == ("t.", 3)
    finally:
        monkeypatch.undo()


def test_without_either_parser_the_import_fails_naming_tomli(monkeypatch):
    """No silent JSON-only mode: on 3.10 without tomli the import error names the module."""
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    try:
        with pytest.raises(ImportError, match="tomli"):
            _reimport_settings(monkeypatch)
    finally:
        monkeypatch.undo()
    import streams.settings

    assert sys.modules["streams.settings"] is streams.settings and hasattr(streams.settings, "Settings")
