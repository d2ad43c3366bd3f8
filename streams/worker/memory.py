"""Handing freed heap memory back to the operating system, after each large checkpoint and
every second; and the page size numpy asks for.

A checkpoint passes its de-duplication ids and its join through buffers a slice at a time,
and RocksDB frees each memtable it flushes (64 MB a store). glibc keeps freed heap pages
mapped, so without a trim the worker's RSS stays at the largest of these so far.
`malloc_trim` returns them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_libc = None
_path = ctypes.util.find_library("c")
if _path:
    try:
        _libc = ctypes.CDLL(_path)
        _libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        _libc = None


TRIM_EVERY_S = 1.0
"""How often the worker trims, besides after each ingest checkpoint. A worker that frees and
allocates buffers all the time touches the free pages a trim handed back again, some 85 MB a
second in a soak at 66,000 events/s, so RSS climbs between trims by as much times the
seconds; a trim there takes about 11 ms (22 ms at the 95th percentile), about 1% of a core
once a second."""


def trim_heap() -> bool:
    """Return free heap pages to the OS (glibc); False where that is not available."""
    if _libc is None:
        return False
    _libc.malloc_trim(0)
    return True


HUGE_PAGES_VARIABLE = "NUMPY_MADVISE_HUGEPAGE"


def small_pages_for_arrays() -> bool:
    """Unless `NUMPY_MADVISE_HUGEPAGE` is set, have numpy not advise transparent huge pages
    for its arrays of 4 MB and more, which it does where the kernel's policy is `madvise` (as
    on Ubuntu and Debian). numpy reads the variable as it is imported, so this must run
    before that (the processes a command spawns inherit it): False if it came too late.

    Why: the worker allocates large arrays all the time (its compiled tables as they grow,
    a batch's columns), and each 2 MB page faulted in is zeroed whole; in process the
    pipeline ran 9% faster without them (2M events, three runs each), its tables' growth
    a quarter as long."""
    if "numpy" in sys.modules:
        return False
    os.environ.setdefault(HUGE_PAGES_VARIABLE, "0")
    return True
