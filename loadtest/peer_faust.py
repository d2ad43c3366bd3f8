"""The peer: the windowed override rate as a user would write it with plain Faust agents.

Why: the bench must show what the pipeline buys over the obvious implementation.
This is it: one agent per topic, ``async for`` over single events, orjson to decode,
event-id de-duplication, a score-context lookup for feedback that lacks it, and
per (policy_id, segment, 5-minute tumbling window) counts of labels and overrides,
with a "retrain" flag when the override rate exceeds the budget on at least n_min
labels. State is kept in plain dicts, not Faust tables: tables would add a changelog
message per update and make the peer slower still, so this is the peer at its best.
It reads the same single-event topics as the raw baseline and the worker.
"""
from __future__ import annotations

import gc
import os
import tempfile
import time


def peer_main(settings, expected: int, name: str, queue, stop, sample_s: float = 0.25,
              window_s: float = 300.0, budget: float = 0.10, n_min: int = 30) -> None:
    gc.set_threshold(50_000, 20, 100)
    import logging

    import faust
    import orjson

    from loadtest.procs import _Reporter, profile_self

    profile_self(name)

    logging.getLogger("faust").setLevel(logging.ERROR)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # Faust's console spinner would land in the bench's JSON output
    rep = _Reporter(name, queue, sample_s)
    app = faust.App(settings.topic_prefix + "peer", broker=f"kafka://{settings.kafka_bootstrap_servers}",
                    store="memory://", web_enabled=False, consumer_auto_offset_reset="earliest",
                    datadir=tempfile.mkdtemp(prefix="npo-peer-"),
                    topic_allow_declare=False, topic_disable_leader=True)
    scores = app.topic(settings.topic("scores"), value_serializer="raw", key_serializer="raw")
    feedback = app.topic(settings.topic("feedback"), value_serializer="raw", key_serializer="raw")
    contexts: dict[str, tuple] = {}  # scenario_id -> (policy_id, segment, decision)
    seen: set[str] = set()
    counts: dict[tuple, list] = {}  # (policy_id, segment, window) -> [labels, overrides]
    flagged: set[tuple] = set()
    state = {"n": 0, "t0": None}

    def tick() -> None:
        n = state["n"] = state["n"] + 1
        if n % 1000 == 0 or n >= expected:
            rep.progress(state["t0"], n)
            if n >= expected:
                rep.done(flagged=len(flagged), windows=len(counts))
                queue.close()
                queue.join_thread()
                os._exit(0)

    def started() -> None:
        if state["t0"] is None:
            state["t0"] = time.time()

    @app.agent(scores)
    async def on_score(stream):
        async for value in stream:
            started()
            ev = orjson.loads(value)
            if ev["event_id"] not in seen:
                seen.add(ev["event_id"])
                contexts[ev["scenario_id"]] = (ev["policy_id"], ev.get("segment", "default"), ev["decision"])
            tick()

    @app.agent(feedback)
    async def on_feedback(stream):
        async for value in stream:
            started()
            ev = orjson.loads(value)
            if ev["event_id"] not in seen:
                seen.add(ev["event_id"])
                ctx = ((ev["policy_id"], ev.get("segment") or "default", ev["decision"]) if "decision" in ev
                       else contexts.get(ev["scenario_id"]))
                if ctx is not None and ev["kind"] != "abstain":
                    key = (ctx[0], ctx[1], int(ev["ts"] // window_s))
                    c = counts.setdefault(key, [0, 0])
                    c[0] += 1
                    c[1] += ev["kind"] == "override"
                    if c[0] >= n_min and c[1] / c[0] > budget:
                        flagged.add(key)
            tick()

    try:
        worker = faust.Worker(app, loglevel="ERROR", quiet=True)
        worker.execute_from_commandline()
    except BaseException as e:  # noqa: BLE001
        queue.put(("error", name, repr(e)))
