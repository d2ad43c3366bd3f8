"""A retraining job as a Faust agent on the triggers topic: `faust -A streams.faust.retraining worker --without-web`.

It starts a retrain for each `retrain` trigger once. Trigger ids are deterministic (a
replay or a second worker publishing the same window's trigger repeats the id), so the job
itself is keyed by the trigger id and launching it twice starts it once (as a Kubernetes Job
named by the id would refuse its twin; here, with `NPO_RETRAIN_LOG` set, the log): that holds
across crashes, restarts and rebalances.
Within a process, ids already started are skipped without asking the job system (a bounded
`SeenIds`). The agent keeps no Faust table: in faust-streaming 0.15.3 a worker with tables
resumes its input partitions before seeking them to their committed offsets while the
fetcher already runs (table recovery), and after a restart one input partition could go
unread until the next rebalance.

Settings come from the environment as for `npo worker` (`NPO_KAFKA_*`, `NPO_TOPIC_PREFIX`,
`NPO_TOPIC_PARTITIONS`, `NPO_STATE_DIR`); `NPO_RETRAIN_LOG`, if set, is a file that gets one
JSON line per retrain started (what this example does instead of launching a job, and where
it looks for a job of the same id).
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os

from streams.faust.connect import create_app
from streams.faust.records import Trigger
from streams.kafka.triggers import SeenIds
from streams.settings import load

log = logging.getLogger("npo.retraining")
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0  # waits between tries to start a job, doubling

settings = load()
app = create_app(settings, settings.group_id + "-retraining", topic_allow_declare=True)
triggers = app.topic(settings.topic("triggers"), value_type=Trigger, key_serializer="raw")
started = SeenIds()


def start_retraining(trigger: Trigger) -> None:
    """Launch the retraining job for the trigger's policy and segment, named by its trigger id
    (here: a line in the log, unless the log has that id already; the check and the line are
    one step under a file lock, so two instances of the agent cannot both add it)."""
    path = os.environ.get("NPO_RETRAIN_LOG")
    line = {"trigger_id": trigger.trigger_id, "policy_id": trigger.policy_id, "segment": trigger.segment,
            "window_end": trigger.window.end, "loss": trigger.evidence.get("loss")}
    if path:
        with open(path, "a+") as jobs:
            fcntl.flock(jobs, fcntl.LOCK_EX)  # released when the file closes
            jobs.seek(0)
            text = jobs.read()
            if trigger.trigger_id in _ids(text):
                log.warning("retrain %s was started before; not again", trigger.trigger_id)
                return
            # a line cut short by a writer that crashed is ended first, so this one stays whole
            jobs.write(("\n" if text and not text.endswith("\n") else "") + json.dumps(line) + "\n")
    log.warning("retraining %s/%s after window ending %s", trigger.policy_id, trigger.segment, trigger.window.end)


def _ids(text: str) -> set[str]:
    """The trigger ids of the log's whole lines (a line cut short or not ours is skipped)."""
    ids = set()
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("trigger_id"), str):
            ids.add(entry["trigger_id"])
    return ids


@app.agent(triggers)
async def retrain(stream):
    async for trigger in stream:
        if trigger.rule == "retrain" and trigger.trigger_id not in started:
            await until_started(trigger)
            started.add(trigger.trigger_id)


async def until_started(trigger: Trigger) -> None:
    """Start the trigger's retrain, trying again until the job system takes it. Faust
    acknowledges a message however its agent's turn on it ends, so an agent that raised here
    would have its offset committed past a retrain never started; the triggers behind this
    one wait instead, as outputs wait for a broker that does not take them. Trying again is
    safe because the job is keyed by the trigger id."""
    wait = RETRY_FIRST_S
    while True:
        try:
            start_retraining(trigger)
            return
        except Exception as exc:  # noqa: BLE001 - whatever the job system raises, the retrain is still due
            log.error("starting retrain %s failed, trying again in %.0f s: %r", trigger.trigger_id, wait, exc)
        await asyncio.sleep(wait)
        wait = min(2 * wait, RETRY_MAX_S)

