"""The pipeline inside a Faust app (`faust -A streams.faust.app worker`), on the real broker:
the same final window statistics and trigger ids as the in-process run, mounted on a team's
own app and standalone after SIGKILLs mid-batch and between a checkpoint's write and its
commit, across a rebalance and a broker restart; and a retraining agent on the triggers."""
from __future__ import annotations

import dataclasses
import json
import signal
import time

import orjson

import pytest

from streams.config import MonitorConfig
from streams.demo.runner import encode_messages, run_pipeline
from streams.kafka.producer import EventProducer
from streams.simulate import SimConfig, simulate
from streams.worker.outputs import stats_key
from tests.integration.harness import json_values, ordered_producer, read_topic
from tests.integration.processes import log_tail, owners, spawn, stop, wait_caught_up, wait_for
from tests.integration.test_worker_e2e import _flush_events, assert_same_as_in_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = MonitorConfig()


@pytest.fixture(scope="module")
def events():
    sim = simulate(SimConfig(seed=17, n_windows=40, decisions_per_window=120))
    return sim.events, sim.events + _flush_events(sim.events, 2)


def _produce(settings, events, envelope: bool) -> None:
    with EventProducer(settings, envelope=envelope, max_events=500) as producer:
        for e in events:
            producer.send(e)


def test_agents_mounted_on_a_team_s_own_app_give_the_in_process_results_next_to_its_agent(cluster, events, tmp_path):
    """`install` on an app with defaults of its own (acknowledgements on, waiting for them on
    a rebalance) and an agent of its own reading the NPO triggers: the same results, and
    the team's agent sees every trigger."""
    simulated, everything = events
    settings = cluster(2)
    _produce(settings, everything, envelope=True)
    seen = tmp_path / "seen.txt"
    seen.touch()
    app = spawn(settings, tmp_path / "team.log", host="team-app", NPO_TEST_SEEN=str(seen))
    wait_caught_up(settings, [app], host="team-app")
    stop(app)
    assert_same_as_in_process(settings, simulated, 2)
    published = {t["trigger_id"] for t in json_values(read_topic(settings, "triggers"))}
    assert published and set(seen.read_text().split()) == published


def test_an_app_that_would_move_the_npo_offsets_is_refused_with_the_reason(cluster, tmp_path):
    """Faust seeks to its own group's committed offsets after every rebalance: an agent
    reading an NPO topic with acknowledgements on, or offsets the group committed for one
    in an earlier run, would move the pipeline past its checkpoints. The app stops instead,
    saying which."""
    from confluent_kafka import Consumer, TopicPartition

    settings = cluster(2)
    _produce(settings, simulate(SimConfig(seed=5, n_windows=2, decisions_per_window=20)).events, envelope=True)
    acking = spawn(settings, tmp_path / "acking.log", host="team-app", NPO_TEST_SEEN=str(tmp_path / "seen"),
                   NPO_TEST_ACKING_SCORES="1")
    assert acking.wait(timeout=120) not in (0, None), log_tail(acking)
    assert f"reads {settings.topic('scores')} with acknowledgements on" in log_tail(acking, 100_000)

    group = settings.group_id + "-faust"  # the standalone app's own group
    committer = Consumer({**settings.confluent(), "group.id": group, "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(settings.topic("feedback"), 1, 3)], asynchronous=False)
    committer.close()
    committed = spawn(settings, tmp_path / "committed.log", host="faust")
    assert committed.wait(timeout=120) not in (0, None), log_tail(committed)
    assert f"{group!r} has offsets committed for NPO topics ({settings.topic('feedback')}/1)" in log_tail(committed, 100_000)


@pytest.mark.parametrize("crash_at", ["batch:3", "checkpoint:3", "fail batch:3"])
def test_a_faust_app_killed_and_restarted_gives_the_crash_free_results(cluster, events, tmp_path, crash_at):
    """SIGKILL with a batch processed and its output not yet written, or with a checkpoint
    written and not yet committed; or an error raised in that round ("fail"), which must
    crash the app with nothing checkpointed after it (its state moved on without its
    output). The restarted app replays from the committed checkpoint."""
    simulated, everything = events
    settings = dataclasses.replace(cluster(2), checkpoint_interval_s=0.2)
    _produce(settings, everything, envelope=False)  # single events: many small batches
    if crash_at.startswith("fail "):
        # the round that fails must be an agent's, which Faust alone would restart: a merge idle
        # of 60 s makes the timer tick every 30 s (and records wait up to 60 s for their
        # co-partition, which does not matter here), where at 2 s a tick could take one of the
        # first three rounds while the agents' first rounds load the kernels on a busy host
        first = spawn(settings, tmp_path / "first.log", host="faust", NPO_FAIL_AT=crash_at.split()[1],
                      NPO_MERGE_IDLE_MS="60000")
        code, log = first.wait(timeout=180), log_tail(first, 100_000)
        assert code not in (0, -signal.SIGKILL) and "InjectedFault" in log, log_tail(first)
        assert "in npo_ingest" in log or "in npo_aggregate" in log, log_tail(first)
    else:
        first = spawn(settings, tmp_path / "first.log", crash_at=crash_at, host="faust")
        assert first.wait(timeout=180) == -signal.SIGKILL, log_tail(first)
    second = spawn(settings, tmp_path / "second.log", host="faust")
    wait_caught_up(settings, [second], host="faust")
    stop(second)
    assert_same_as_in_process(settings, simulated, 2)


def test_a_killed_faust_app_is_taken_over_and_a_joining_one_changes_nothing(cluster, tmp_path):
    sim = simulate(SimConfig(seed=23, n_windows=72, decisions_per_window=150))
    everything = sim.events + _flush_events(sim.events, 4)
    thirds = [everything[: len(everything) // 3], everything[len(everything) // 3: 2 * len(everything) // 3],
              everything[2 * len(everything) // 3:]]
    settings = dataclasses.replace(cluster(4), checkpoint_interval_s=0.5, merge_idle_ms=2000.0)
    group = settings.group_id + "-faust"  # the Faust app's own consumer group
    _produce(settings, thirds[0], envelope=False)

    a = spawn(settings, tmp_path / "a.log", host="faust")
    b = spawn(settings, tmp_path / "b.log", host="faust")
    wait_for(lambda: len(owners(settings, group)) == 2, 90, "both apps joining", [a, b])
    wait_caught_up(settings, [a, b], host="faust")

    b.send_signal(signal.SIGKILL)
    assert b.wait(timeout=10) == -signal.SIGKILL
    wait_for(lambda: list(owners(settings, group).values()) == [set(range(4))], 60, "the survivor taking over", [a])

    _produce(settings, thirds[1], envelope=False)
    c = spawn(settings, tmp_path / "c.log", host="faust")  # joins while the second third is being processed
    _produce(settings, thirds[2], envelope=False)
    wait_for(lambda: len(owners(settings, group)) == 2, 90, "the third app joining", [a, c])
    wait_caught_up(settings, [a, c], host="faust")
    stop(a)
    stop(c)
    assert_same_as_in_process(settings, sim.events, 4)


def test_a_broker_restart_under_a_faust_app_loses_and_doubles_nothing(cluster, kafka_service, tmp_path):
    sim = simulate(SimConfig(seed=11, n_windows=72, decisions_per_window=60))
    settings = cluster(2)
    _produce(settings, sim.events + _flush_events(sim.events, 2), envelope=True)
    app = spawn(settings, tmp_path / "faust.log", host="faust")
    wait_for(lambda: app.poll() is not None or read_topic(settings, "partials", idle_s=0.2), 90, "partials written", [app])
    assert app.poll() is None, log_tail(app)
    kafka_service.restart(downtime=5.0)
    wait_caught_up(settings, [app], host="faust", timeout=300)
    stop(app)
    assert_same_as_in_process(settings, sim.events, 2)



@pytest.mark.parametrize("host", ["retraining", "retraining-failing-jobs"])
def test_the_retraining_agent_starts_each_retrain_once_across_repeats_and_restarts(cluster, tmp_path, host):
    """Every retrain trigger published twice (as a replay would), the agent restarted, the
    repeats published again: one retrain per trigger id, and the other rules ignored. A repeat
    within a process is skipped without asking the job system; after the restart each repeat
    asks it and is refused. One retrain was started by an instance that crashed before it
    could note it: not again. Also when the job system refuses each app's first three tries
    to start one (none is skipped)."""
    sim = simulate(SimConfig(seed=5, n_windows=48, decisions_per_window=150))
    result = run_pipeline(encode_messages(sim.events, 500), CONFIG)
    retrains = [t for t in result.triggers if t["rule"] == "retrain"]
    assert len(retrains) >= 2 and len(retrains) < len(result.triggers)
    settings = cluster(2)
    log_path = tmp_path / "retrains.jsonl"
    log_path.write_text(json.dumps({"trigger_id": retrains[-1]["trigger_id"]}) + "\n")

    def publish(triggers) -> None:
        producer = ordered_producer(settings)
        for t in triggers:
            producer.produce(settings.topic("triggers"), orjson.dumps({**t, "emitted_at": time.time()}),
                             key=stats_key(t["policy_id"], t["segment"]))
        assert producer.flush(30) == 0

    def started() -> list[str]:
        return [json.loads(line)["trigger_id"] for line in log_path.read_text().splitlines()]

    def last(mark: str) -> list[dict]:
        """A new retrain on each retrain's key, published last: once all have started, every
        repeat before them on their partitions has been read."""
        return [{**t, "trigger_id": f"{mark}{i:031x}"} for i, t in enumerate(retrains)]

    def run(log_name: str, triggers: list[dict], sentinels: list[dict]) -> str:
        publish(triggers + sentinels)
        app = spawn(settings, tmp_path / log_name, host=host, NPO_RETRAIN_LOG=str(log_path))
        wait_for(lambda: {t["trigger_id"] for t in sentinels} <= set(started()) or app.poll() is not None, 120,
                 "every retrain up to the last ones started", [app])
        assert app.poll() is None, log_tail(app, 20000)
        stop(app)
        log = log_tail(app, 10**6)
        assert "retrain]: Crashed" not in log, log_tail(app, 20000)
        if host == "retraining-failing-jobs":
            assert log.count("failed, trying again") == 3, log_tail(app, 20000)
        return log

    first, second = last("e"), last("f")
    log = run("retraining.log", result.triggers + retrains, first)
    assert sorted(started()) == sorted(t["trigger_id"] for t in retrains + first)
    assert f"retrain {retrains[-1]['trigger_id']} was started before" in log
    assert log.count("was started before") == 1, log  # the other repeats were skipped in the process
    log = run("retraining-2.log", retrains, second)  # the repeats again, after a restart
    assert sorted(started()) == sorted(t["trigger_id"] for t in retrains + first + second)
    assert log.count("was started before") == len(retrains), log
