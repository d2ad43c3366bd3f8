"""Freed heap memory goes back to the OS after a large checkpoint (streams.worker.memory)."""
from __future__ import annotations

import gc

from loadtest.procs import rss_mb
from streams.worker.memory import trim_heap


def test_freed_checkpoint_sized_buffers_leave_rss_once_trimmed():
    """Chunks the size of checkpoint parts, interleaved with survivors (as the stream's own
    allocations interleave with a checkpoint's), stay in RSS when freed; trimming returns them."""
    x = bytes(600_000)  # freeing an mmapped chunk raises glibc's threshold: same-sized ones go on the heap
    del x
    survivors, transient = [], []
    for i in range(400):
        (survivors if i % 10 == 9 else transient).append(b"\x01" * 500_000)
    transient_mb = len(transient) * 0.5
    transient.clear()
    gc.collect()
    before = rss_mb()[0]
    assert trim_heap()
    assert before - rss_mb()[0] > transient_mb / 2
    assert len(survivors) == 40 and all(s[0] == 1 for s in survivors)  # what is live stays
