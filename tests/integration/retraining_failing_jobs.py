"""The retraining agent (`streams.faust.retraining`) with a job system that refuses its first
starts, as one that is down for a while would: `faust -A tests.integration.retraining_failing_jobs worker`."""
from __future__ import annotations

from streams.faust import retraining
from streams.faust.retraining import app  # noqa: F401  (the app `faust -A` runs)

FAILURES = 3
_real = retraining.start_retraining
_calls = 0


def _refused_at_first(trigger) -> None:
    global _calls
    _calls += 1
    if _calls <= FAILURES:
        raise OSError(f"job system unavailable (injected, {_calls} of {FAILURES})")
    _real(trigger)


retraining.start_retraining = _refused_at_first
