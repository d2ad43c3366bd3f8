"""The Faust host's own logic, no broker: what `install` refuses, and which rebalance
signals it acts on."""
from __future__ import annotations

import asyncio
import types

import pytest
from aiokafka import TopicPartition

from streams.faust.host import FaustHost, install
from streams.settings import Settings


def test_install_refuses_an_app_that_would_start_a_new_partition_at_its_end():
    import faust

    app = faust.App("npo-latest", broker="kafka://127.0.0.1:1", consumer_auto_offset_reset="latest")
    with pytest.raises(ValueError, match="consumer_auto_offset_reset='earliest'.*'latest'"):
        install(app, Settings())


def test_a_late_end_of_rebalance_for_an_assignment_already_being_revoked_is_ignored(tmp_path):
    """Faust signals a rebalance's completion even when the next rebalance has begun (its
    revocation came first): loading the old assignment then would hold partitions another
    app is taking. Only the next generation's signal loads."""
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", state_dir=str(tmp_path))
    app = types.SimpleNamespace(consumer_generation_id=5)
    host = FaustHost(app, settings)
    scores = TopicPartition(settings.topic("scores"), 0)

    async def run():
        await host.on_revoked({scores})  # generation 6 begins: 5's partitions are revoked
        await host.on_assigned({scores})  # 5's completion, late: nothing is started or loaded
        assert host.producer is None and not host.stages.stages

    asyncio.run(run())
