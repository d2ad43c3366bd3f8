"""Numba's on-disk cache of the compiled kernels, invalidated when any kernel source changes.

Numba checks a cached function against its own source file only: a kernel that calls or
inlines one from another file (the digest tables call `seen_ids`' slot functions) keeps
that one's old machine code after it changes, and tests then check stale code. Here each
kernel's cache entry is stamped with a digest of every kernel source instead, so changing
any of them recompiles them all, wherever numba keeps its cache (`NUMBA_CACHE_DIR`, or
`__pycache__` beside the sources).
"""
from __future__ import annotations

import functools
import hashlib
import os

from numba.core import caching

KERNELS_DIR = os.path.dirname(os.path.abspath(__file__))


def sources_digest(directory: str = KERNELS_DIR) -> bytes:
    """SHA-256 of the names and contents of every .py file under `directory`."""
    paths = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        paths += [os.path.relpath(os.path.join(root, f), directory) for f in files if f.endswith(".py")]
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.encode() + b"\0")
        with open(os.path.join(directory, path), "rb") as source:
            digest.update(source.read() + b"\0")
    return digest.digest()


_digest = functools.cache(sources_digest)  # once a process: sources edited later recompile in the next one


class _AllKernelSources:
    """A locator's stamp: every kernel source, for the kernels' functions only."""

    stamps_all_kernels = True

    def get_source_stamp(self):
        return _digest()

    @classmethod
    def from_function(cls, py_func, py_file):
        if not os.path.abspath(py_file).startswith(KERNELS_DIR + os.sep):
            return None
        return super().from_function(py_func, py_file)


def _numba(name: str):
    """A class of numba's caching module, by its name (older numba releases had it with a
    leading underscore); None if this numba has neither."""
    return getattr(caching, name, None) or getattr(caching, "_" + name, None)


def install() -> None:
    """Put locators with this stamp before numba's own (the user-provided directory first, as
    numba orders them), for kernels decorated from now on. A numba whose cache is laid out
    otherwise keeps its own stamps."""
    impl, in_tree, user_provided = map(_numba, ("CacheImpl", "InTreeCacheLocator", "UserProvidedCacheLocator"))
    classes = getattr(impl, "_locator_classes", None)
    if not isinstance(classes, list) or in_tree is None or user_provided is None:
        return
    for base in (in_tree, user_provided):
        if not any(getattr(cls, "stamps_all_kernels", False) and issubclass(cls, base) for cls in classes):
            classes.insert(0, type(f"AllKernels{base.__name__.lstrip('_')}", (_AllKernelSources, base), {}))
