"""Handing freed heap memory back to the operating system after a large checkpoint.

A checkpoint of a big join store passes through several buffers of its size (compressed
parts, the encoded blob, its chunks, the producer's batches). They are freed once it is
written, but glibc keeps freed heap pages mapped, so the worker's RSS would stay at the
largest checkpoint so far and step up as the join grows. `malloc_trim` returns them.
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


def trim_heap() -> bool:
    """Return free heap pages to the OS (glibc); False where that is not available."""
    if _libc is None:
        return False
    _libc.malloc_trim(0)
    return True
