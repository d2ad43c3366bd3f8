"""Workers as separate processes (so they can be SIGKILLed), and telling when a group is done."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient


_spawned: list[subprocess.Popen] = []
# what asking a group's offsets or a partition's end answers while its coordinator or leader moves
# or loads (after a broker restart)
_MOVING = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
           KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.LEADER_NOT_AVAILABLE,
           KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError._TIMED_OUT, KafkaError._TRANSPORT}


def kill_leftovers() -> None:
    """SIGKILL every worker a test started and did not stop (a failed test must not leave
    workers running into the next ones)."""
    while _spawned:
        proc = _spawned.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


HOSTS = {  # how each host of the pipeline is started, and the consumer groups its offsets are committed in
    "worker": ([sys.executable, "-m", "streams.cli", "worker", "--no-redis", "--log-level", "WARNING"],
               ("-ingest", "-aggregate")),
    "faust": ([sys.executable, "-m", "faust", "-A", "streams.faust.app", "worker", "--without-web", "-l", "warn"],
              ("-faust-ingest", "-faust-aggregate")),
    "team-app": ([sys.executable, "-m", "faust", "-A", "tests.integration.faust_user_app", "worker", "--without-web",
                  "-l", "warn"], ("-faust-ingest", "-faust-aggregate")),
    "retraining": ([sys.executable, "-m", "faust", "-A", "streams.faust.retraining", "worker", "--without-web", "-l",
                    "info"], ()),
    "retraining-failing-jobs": ([sys.executable, "-m", "faust", "-A", "tests.integration.retraining_failing_jobs",
                                 "worker", "--without-web", "-l", "info"], ()),
}


def spawn(settings, log_path, crash_at: str | None = None, host: str = "worker", **env) -> subprocess.Popen:
    """`npo worker` (or the Faust app, `host="faust"`) on `settings`, passed through the
    documented NPO_* environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NPO_")}
    environ.update({"NPO_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
                    "NPO_TOPIC_PREFIX": settings.topic_prefix, "NPO_GROUP_ID": settings.group_id,
                    "NPO_STATE_DIR": settings.state_dir, "NPO_METRICS_PORT": "0",
                    "NPO_TOPIC_PARTITIONS": str(settings.topic_partitions),
                    "NPO_CHECKPOINT_INTERVAL_S": str(settings.checkpoint_interval_s),
                    "NPO_MERGE_IDLE_MS": str(settings.merge_idle_ms), **env})
    if crash_at:
        environ["NPO_CRASH_AT"] = crash_at
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(HOSTS[host][0], env=environ, stdout=out, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    _spawned.append(proc)
    return proc


def log_tail(proc: subprocess.Popen, chars: int = 3000) -> str:
    return open(proc.log_path, errors="replace").read()[-chars:]


def _logs(procs) -> str:
    """The end of each process's log (its last 8,000 characters), for a failure message."""
    return "".join(f"\n--- {proc.log_path}:\n{log_tail(proc, 8000)}" for proc in procs)


def _lag(settings, group: str, roles: list[str]) -> int:
    """Records of `roles`' topics beyond what `group` has committed."""
    consumer = Consumer({**settings.confluent(), "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(settings.topic(r), p) for r in roles
               for p in range(settings.topic_partitions)]
        done = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=10)}
        lag = 0
        for tp in tps:
            end = consumer.get_watermark_offsets(tp, timeout=10)[1]
            lag += end - max(done[(tp.topic, tp.partition)], 0)
        return lag
    finally:
        consumer.close()


def wait_caught_up(settings, procs, quiet_s: float = 3.0, timeout: float = 240.0, host: str = "worker") -> None:
    """Until both consumer groups have committed everything there is, and it stays so."""
    ingest, aggregate = (settings.group_id + suffix for suffix in HOSTS[host][1])
    deadline, since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.poll() is None, f"a worker exited with {proc.returncode}: {log_tail(proc)}"
        try:
            lag = _lag(settings, ingest, ["scores", "feedback"]) + _lag(settings, aggregate, ["partials"])
        except KafkaException as exc:
            if exc.args[0].code() not in _MOVING:
                raise
            lag = None  # not known yet: ask again
        if lag != 0:
            since = None
        elif since is None:
            since = time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)
    raise AssertionError("the workers did not catch up in time" + _logs(procs))


def owners(settings, group: str, admin: AdminClient | None = None) -> dict[str, set[int]]:
    """Member id -> partitions it holds, for one consumer group (asked through `admin`, or a new client)."""
    admin = admin or AdminClient(settings.confluent())
    desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return {m.member_id: {tp.partition for tp in m.assignment.topic_partitions} for m in desc.members}


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM, the way an orchestrator stops a worker; it must exit cleanly."""
    proc.terminate()
    assert proc.wait(timeout=timeout) == 0, f"worker exited with {proc.returncode}: {log_tail(proc)}"


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def wait_for(condition, timeout: float, what: str, procs=()) -> float:
    """Until `condition()` holds; how long that took (an AssertionError naming `what` after
    `timeout`, with the end of each of `procs`' logs, so a hang in CI can be read afterwards)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started >= timeout:  # fail-fast bound
            raise AssertionError(f"{what} did not happen in {timeout} s" + _logs(procs))
        time.sleep(0.2)
    return time.monotonic() - started
