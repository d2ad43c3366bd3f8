"""The Faust host on the bench: the NPO agents mounted on a Faust app (`streams.faust.host`),
draining an envelope topic, timed and sampled the way the worker is.

Why: platform teams that run Faust mount the pipeline there instead of running
`npo worker`; the bench says what that costs next to the worker on the same input.
"""
from __future__ import annotations

import gc
import os
import time


def faust_main(settings, expected: int, name: str, queue, stop, sample_s: float = 0.25) -> None:
    """The Faust host until it has taken in ``expected`` events."""
    gc.set_threshold(50_000, 20, 100)  # as `npo worker` runs (streams.cli.main)
    import logging

    import faust

    from loadtest.procs import _Reporter, counted, profile_self
    from streams.faust.connect import create_app
    from streams.faust.host import install

    profile_self(name)
    logging.getLogger("faust").setLevel(logging.ERROR)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # Faust's console spinner would land in the bench's JSON output
    rep = _Reporter(name, queue, sample_s)
    app = create_app(settings)
    host = install(app, settings)
    state: dict = {}
    ingest = host.ingest

    async def timed(messages) -> None:  # the clock starts with the first batch, as the worker's does
        state.setdefault("t0", time.time())
        await ingest(messages)

    host.ingest = timed

    @app.timer(0.02)  # the end of the run is known to 20 ms; samples still go out every sample_s
    async def report() -> None:
        n = counted(host.counters)
        rep.progress(state.get("t0", time.time()), n)
        if n >= expected:
            rep.done(counters={"|".join(map(str, k)) if isinstance(k, tuple) else k: v
                               for k, v in host.counters.items()})
            queue.close()
            queue.join_thread()
            os._exit(0)  # Faust's own shutdown takes seconds and measures nothing

    try:
        faust.Worker(app, loglevel="ERROR", quiet=True).execute_from_commandline()
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        queue.put(("error", name, repr(e)))
