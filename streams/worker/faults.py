"""Faults for the fault tests. Crash points: with `NPO_CRASH_AT=<point>:<n>` in its
environment the process kills itself with SIGKILL the n-th time it passes <point>, as a
crash would; with `NPO_FAIL_AT=<point>:<n>` it raises `InjectedFault` there instead, as a
bug would. Refused writes: with `NPO_REFUSE_SEND=<topic suffix>:<n>` every n-th write to a
topic whose name ends so fails, as a broker timeout would: an output message is retried
after the writes that followed it, a checkpoint (or the deletion of a superseded one) at
its next turn.

Points: `round` (between batches), `batch` (a batch processed, its output not yet
written), `checkpoint` (a checkpoint written, not yet committed), `window` (windows
closed, their statistics and triggers not yet written). Unset, as in production,
a point costs one comparison.
"""
from __future__ import annotations

import os
import signal

POINTS = ("round", "batch", "checkpoint", "window")


def _target(name: str, points: tuple[str, ...] | None) -> tuple[str, int] | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    point, _, n = raw.rpartition(":")
    if (points is not None and point not in points) or not point or not n.isdigit() or int(n) < 1:
        want = f"point in {points}" if points else "a topic suffix"
        raise ValueError(f"{name} must be <point>:<n> with {want} and n >= 1, got {raw!r}")
    return point, int(n)


class InjectedFault(RuntimeError):
    """The error `NPO_FAIL_AT` raises."""


_TARGET = _target("NPO_CRASH_AT", POINTS)
_FAIL = _target("NPO_FAIL_AT", POINTS)
_passed = {p: 0 for p in POINTS}
_REFUSE = _target("NPO_REFUSE_SEND", None)
_writes = 0


def refused(topic: str) -> bool:
    """Whether this write to `topic` is to fail (unset, as in production: one comparison)."""
    global _writes
    if _REFUSE is None or not topic.endswith(_REFUSE[0]):
        return False
    _writes += 1
    return _writes % _REFUSE[1] == 0


def crash_point(point: str) -> None:
    if (_TARGET is None or point != _TARGET[0]) and (_FAIL is None or point != _FAIL[0]):
        return
    _passed[point] += 1
    if _TARGET is not None and (point, _passed[point]) == _TARGET:
        os.kill(os.getpid(), signal.SIGKILL)
    if _FAIL is not None and (point, _passed[point]) == _FAIL:
        raise InjectedFault(f"NPO_FAIL_AT={point}:{_FAIL[1]} (fault test)")
