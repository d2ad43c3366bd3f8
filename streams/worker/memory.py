"""Handing freed heap memory back to the operating system, after each large checkpoint and
every few seconds.

A checkpoint of a big join store passes through buffers of its size (its compressed parts,
then the frames they are packed into), and RocksDB frees each memtable it flushes (64 MB a
store). glibc keeps freed
heap pages mapped, so the worker's RSS stayed at the largest checkpoint so far and climbed
by some 300 MB between checkpoints in the soak. `malloc_trim` returns them; it takes well
under a millisecond.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_libc = None
_path = ctypes.util.find_library("c")
if _path:
    try:
        _libc = ctypes.CDLL(_path)
        _libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        _libc = None


TRIM_EVERY_S = 5.0
"""How often the worker trims, besides after each ingest checkpoint."""


def trim_heap() -> bool:
    """Return free heap pages to the OS (glibc); False where that is not available."""
    if _libc is None:
        return False
    _libc.malloc_trim(0)
    return True
