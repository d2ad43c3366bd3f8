"""A platform team's own Faust app with the NPO agents mounted next to its agent, for the
integration tests: `faust -A tests.integration.faust_user_app worker`. Its own agent
counts the triggers the NPO agents publish into the file `NPO_TEST_SEEN`; with
`NPO_TEST_ACKING_SCORES` set, a second agent reads the scores with Faust's
acknowledgements on, which the NPO agents must refuse."""
from __future__ import annotations

import os

import faust

from streams.faust.host import install
from streams.faust.records import Trigger
from streams.settings import load

settings = load()
os.makedirs(settings.state_dir, exist_ok=True)
app = faust.App(settings.group_id + "-team-app", broker=f"kafka://{settings.kafka_bootstrap_servers}",
                store="memory://", datadir=os.path.join(settings.state_dir, "team-app"),
                broker_session_timeout=10.0, broker_heartbeat_interval=3.0)
install(app, settings)


@app.agent(app.topic(settings.topic("triggers"), value_type=Trigger))
async def seen(stream):
    async for trigger in stream:
        with open(os.environ["NPO_TEST_SEEN"], "a") as out:
            out.write(trigger.trigger_id + "\n")


if os.environ.get("NPO_TEST_ACKING_SCORES"):
    @app.agent(app.topic(settings.topic("scores"), value_serializer="raw"))
    async def scores_with_acks(stream):
        async for _ in stream:
            pass
