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


def test_a_checkpoint_goes_over_another_host_s_only_after_twice_the_time_a_faust_member_may_go_without_polling(
        tmp_path):
    """Faust lets a member go 1,000 s between polls (`broker_max_poll_interval`) before its group
    takes its partitions away; until then it may commit a checkpoint of a partition it lost, so
    the grace after which the owner commits over it is twice that, not the worker's 600 s."""
    import faust

    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", state_dir=str(tmp_path))
    assert FaustHost(faust.App("npo-grace", broker="kafka://127.0.0.1:1"), settings).checkpointer.grace_s == 2000.0
    app = faust.App("npo-grace-2", broker="kafka://127.0.0.1:1", broker_max_poll_interval=60.0)
    assert FaustHost(app, settings).checkpointer.grace_s == 600.0  # at least the floor


def test_the_end_of_a_rebalance_loads_unless_its_partitions_are_already_being_revoked(tmp_path):
    """Faust signals a rebalance's completion even when the next rebalance has begun (its
    revocation came first): loading then would hold partitions another app is taking, so
    only the next generation's completion loads. A generation that comes back (a member
    rejoining a stable group gets its generation again) loads again."""
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", state_dir=str(tmp_path))
    app = types.SimpleNamespace(consumer_generation_id=0, conf=types.SimpleNamespace(broker_max_poll_interval=1000.0),
                                topics=types.SimpleNamespace(acks_enabled_for=lambda topic: False))
    host = FaustHost(app, settings)
    loads = []

    async def start():  # no Kafka clients here: an assignment of other topics loads nothing else
        loads.append(app.consumer_generation_id)

    host.start = start
    theirs = {TopicPartition("another-team-topic", 0)}

    async def rebalance(generation, revoke_first=True):
        if revoke_first:
            await host.on_revoked(set())
        app.consumer_generation_id = generation
        await host.on_assigned(theirs)

    async def run():
        await rebalance(5)
        assert loads == [5]
        await rebalance(5)  # revoked in 5, and 5 is given again: loads
        assert loads == [5, 5]
        await host.on_revoked(set())  # generation 6 begins: 5's partitions go ...
        app.consumer_generation_id = 6
        await host.on_revoked(set())  # ... and 7 begins before 6 completed
        await host.on_assigned(theirs)  # 6's completion, late: ignored
        assert loads == [5, 5]
        await rebalance(7, revoke_first=False)
        assert loads == [5, 5, 7]

    asyncio.run(run())
