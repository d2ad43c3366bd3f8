"""Crash points for the fault tests: with `NPO_CRASH_AT=<point>:<n>` in its environment the
process kills itself with SIGKILL the n-th time it passes <point>, as a crash would.

Points: `round` (between batches), `batch` (a batch processed, its output not yet
written), `checkpoint` (a checkpoint written, not yet committed), `window` (windows
closed, their statistics and triggers not yet written). Unset, as in production,
a point costs one comparison.
"""
from __future__ import annotations

import os
import signal

POINTS = ("round", "batch", "checkpoint", "window")


def _target() -> tuple[str, int] | None:
    raw = os.environ.get("NPO_CRASH_AT")
    if not raw:
        return None
    point, _, n = raw.partition(":")
    if point not in POINTS or not n.isdigit() or int(n) < 1:
        raise ValueError(f"NPO_CRASH_AT must be <point>:<n> with point in {POINTS} and n >= 1, got {raw!r}")
    return point, int(n)


_TARGET = _target()
_passed = {p: 0 for p in POINTS}


def crash_point(point: str) -> None:
    if _TARGET is None or point != _TARGET[0]:
        return
    _passed[point] += 1
    if _passed[point] == _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
