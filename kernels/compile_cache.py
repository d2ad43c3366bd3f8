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
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(directory)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, directory).encode() + b"\0")
            with open(path, "rb") as source:
                digest.update(source.read() + b"\0")
    return digest.digest()


_digest = functools.cache(sources_digest)  # once a process: sources edited later recompile in the next one


class _AllKernelSources:
    """A locator's stamp: every kernel source, for the kernels' functions only."""

    def get_source_stamp(self):
        return _digest()

    @classmethod
    def from_function(cls, py_func, py_file):
        if not os.path.abspath(py_file).startswith(KERNELS_DIR + os.sep):
            return None
        return super().from_function(py_func, py_file)


class _InTree(_AllKernelSources, caching.InTreeCacheLocator):
    pass


class _UserProvided(_AllKernelSources, caching.UserProvidedCacheLocator):
    pass


def install() -> None:
    """Put these locators before numba's own (the user-provided directory first, as numba
    orders them), for kernels decorated from now on."""
    classes = caching.CacheImpl._locator_classes
    for cls in (_InTree, _UserProvided):
        if cls not in classes:
            classes.insert(0, cls)
