"""Freed heap memory goes back to the OS after a large checkpoint, and numpy asks for no huge
pages (streams.worker.memory)."""
from __future__ import annotations

import gc
import os
import subprocess
import sys

from loadtest.procs import rss_mb
from streams.worker.memory import HUGE_PAGES_VARIABLE, trim_heap


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


def _numpy_huge_pages(code: str, **env: str) -> str:
    """What `code` (run in a fresh interpreter, then numpy imported) prints, and whether numpy
    then advises huge pages."""
    environ = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_VARIABLE} | env
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport numpy\n"
                           "m = numpy._core.multiarray if hasattr(numpy, '_core') else numpy.core.multiarray\n"
                           "print(m._get_madvise_hugepage())"], capture_output=True, text=True, env=environ,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())


def test_npo_runs_numpy_without_huge_pages_unless_told_otherwise():
    """Every `npo` command sets NUMPY_MADVISE_HUGEPAGE=0 before numpy is imported (here, a
    command that stops at once: a replay of a missing file), unless it is set already, and so
    does an import of the Faust host; the switch says when it came too late to matter."""
    run_npo = "import streams.cli as c\nprint(c.main(['replay', '/nonexistent.jsonl']))"
    assert _numpy_huge_pages(run_npo) == "2 False"
    assert _numpy_huge_pages(run_npo, **{HUGE_PAGES_VARIABLE: "1"}) == "2 True"
    assert _numpy_huge_pages("import numpy\nfrom streams.worker.memory import small_pages_for_arrays as f\n"
                             "print(f())") == "False True"
    assert _numpy_huge_pages("import streams.faust\nprint(2)") == "2 False"  # the Faust host's worker
