"""`npo worker`: the pipeline on Kafka, in two stages, with Redis beside it.

Ingest (consumer group `<group>-ingest`): co-partitioned `scores` and `feedback`
partitions, merged by timestamp, go through one `PartitionStage` each
(decode, de-duplicate, join, windows, kernels). Bad records go to the
dead-letter topic. Closed panes go to the internal `partials` topic, keyed by
(policy_id, segment); every partials partition also hears each input
partition's progress, so it knows when a pane is final everywhere.

Aggregate (consumer group `<group>-aggregate`): each `partials` partition
feeds one `Monitor`, which merges the input partitions' partials into final
tumbling, hopping and cumulative windows, evaluates the rules, and publishes
window statistics and triggers. The latest statistics and cool-downs go to
Redis through a sink that never blocks this loop; thresholds set in Redis are
polled every few seconds and used from the next evaluation on.

State and offsets are recovered together. Every `checkpoint_interval_s` each
partition's state (a stage's de-duplication ids, join store and open panes; a
monitor's open windows and rule memory) is written to the `checkpoints` topic,
and the offsets it covers are committed with a pointer to it, only after
everything those records produced has been acknowledged by the broker. A
worker that takes a partition over (after a crash, a restart or a rebalance)
loads the committed checkpoint and replays from its offsets. Replays are
deterministic: the same records give the same partials with the same
per-partition sequence numbers, which the monitor applies once; the same final
windows give the same trigger ids.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaTimeoutError
from confluent_kafka.admin import AdminClient
from rocksdict import WriteBufferManager

from kernels.derive import derive
from streams import codec
from streams.config import MonitorConfig
from streams.kafka.checkpoints import CheckpointStore, Packed, committed, pack, pack_part, unpack_part
from streams.kafka.errors import ClientErrors, client_config, metadata
from streams.kafka.producer import partition_for
from streams.metrics import Metrics
from streams.operators.aggregate import WindowResult
from streams.operators.windows import Partials
from streams.pipeline import Monitor, PartitionStage, warm_up
from streams.settings import Settings
from streams.state import snapshot
from streams.worker import partials as partials_codec
from streams.worker.faults import crash_point, refused
from streams.worker.memory import TRIM_EVERY_S, trim_heap
from streams.worker.merge import CoPartitionMerge
from streams.worker.outputs import stats_key, window_stats_events
from streams.worker.sequencer import PartialsSequencer

log = logging.getLogger("npo.worker")


class _Assignments(ConsumerRebalanceListener):
    """Keeps per-partition state in step with the consumer group's assignment."""

    def __init__(self, on_revoked, on_assigned) -> None:
        self._revoked, self._assigned = on_revoked, on_assigned

    async def on_partitions_revoked(self, revoked) -> None:
        self._revoked(revoked)

    async def on_partitions_assigned(self, assigned) -> None:
        self._assigned(assigned)


@dataclass
class _Collecting:
    """An ingest checkpoint being taken: a stage's state as of one moment, the join's entries
    still to be written out a slice at a time."""

    p: int
    stage: PartitionStage
    head: dict
    parts: Iterator[bytes]
    packed: list
    seq: list  # [partials partition, last message number sent there]
    offsets: dict


class Worker:
    """One worker process; run several (same group) to share the partitions."""

    def __init__(self, settings: Settings, config: MonitorConfig | None = None, sink=None,
                 metrics: Metrics | None = None, early_every_s: float = 5.0) -> None:
        self.settings, self.config = settings, config or MonitorConfig()
        self.version = self.config.version
        self.sink = sink
        self.metrics = metrics or Metrics()
        self.counters: Counter = Counter()
        self.early_every_s = early_every_s
        self.topics = {name: settings.topic(name) for name in ("scores", "feedback", "partials", "triggers",
                                                                 "stats", "deadletters", "checkpoints")}
        self.stages: dict[int, PartitionStage] = {}
        # one memtable budget for every partition's join store: RAM does not grow with partitions
        self._write_buffers = WriteBufferManager(settings.join_memtable_mb << 20, False)
        # input partition -> partials partition -> last partials message number sent there
        self.seq: dict[int, dict[int, int]] = {}
        self.offsets: dict[int, dict[str, int]] = {}  # input partition -> next offset of each input topic
        self.monitors: dict[int, Monitor] = {}
        self.sequencers: dict[int, PartialsSequencer] = {}  # partials partition -> in-order application
        self.partials_offset: dict[int, int] = {}  # partials partition -> next offset
        self._to_load: dict[str, set[int]] = {"ingest": set(), "aggregate": set()}  # assigned, not yet loaded
        self._joined: set[str] = set()  # groups whose assignment (possibly empty) has arrived
        self._dirty: dict[str, set[int]] = {"ingest": set(), "aggregate": set()}  # moved since checkpoint
        self._pointers: dict[str, str] = {}  # checkpoint name -> pointer this worker last committed
        # checkpoint name -> pointers whose commit failed in a way that may still have landed
        # (a retried commit refused after a rebalance): kept until a later commit supersedes them
        self._unsure: dict[str, list[str]] = {}
        self._to_forget: list[tuple[str, str]] = []  # (name, pointer) found not committed
        self._last_checkpoint = self._last_trim = time.monotonic()
        self._queue: list[int] = []  # input partitions waiting for their checkpoint
        self._collecting: _Collecting | None = None  # the one being taken
        self.checkpoints: CheckpointStore | None = None
        self.reader = None
        self.merge = CoPartitionMerge(self.topics["scores"], self.topics["feedback"],
                                      idle_s=settings.merge_idle_ms / 1000)
        self._early: dict[tuple, dict[int, np.ndarray]] = {}
        self._last_early = 0.0
        self._thresholds: dict = {}
        self._join_dirs: dict[int, str] = {}
        self._route: dict[tuple[str, str], int] = {}  # key -> partials partition
        self._last_read: dict[int, float] = {}  # input partition -> when it last had records (monotonic)
        self._idle: set[int] = set()  # input partitions whose idleness the monitors have been told
        self.ingest = self.aggregate = self.producer = None
        self.undelivered = 0  # output messages waiting for a retry

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, check the topics, subscribe. A wrong address, password or CA fails here,
        within seconds, with a message that names what was rejected (not the password)."""
        errors = ClientErrors()
        probe = AdminClient(client_config(self.settings, errors))
        await asyncio.to_thread(metadata, probe, errors, self.settings, 30.0)
        os.makedirs(self.settings.state_dir, exist_ok=True)
        warm_up(self.config, self.settings.state_dir)  # before joining the groups: the first batch runs at full speed
        try:
            await self._start_clients()
        except BaseException:
            await self.stop()
            raise

    async def _start_clients(self) -> None:
        # the settings' client keywords first, then the job's own, which pass-through cannot
        # change: offsets are committed with checkpoints, output is idempotent
        reader = {**self.settings.aiokafka("consumer"), "enable_auto_commit": False, "auto_offset_reset": "earliest"}
        common = {**reader, "partition_assignment_strategy": (RangePartitionAssignor,)}
        self.ingest = AIOKafkaConsumer(**{**common, "group_id": self.settings.group_id + "-ingest"})
        self.aggregate = AIOKafkaConsumer(**{**common, "group_id": self.settings.group_id + "-aggregate"})
        # uncompressed: what the worker writes (partials it reads back itself, statistics,
        # triggers) is small next to its input, and lz4 in this loop cost a tenth of the
        # single-event path (py-spy, `npo bench pipeline --profile`)
        self.producer = AIOKafkaProducer(**{**self.settings.aiokafka("producer"), "acks": "all",
                                            "enable_idempotence": True, "linger_ms": 5, "compression_type": None})
        self.reader = AIOKafkaConsumer(**reader)
        await self.producer.start()
        await self.ingest.start()
        await self.aggregate.start()
        await self.reader.start()
        meta = await self.producer.client.fetch_all_metadata()
        self.partials_count = len(meta.partitions_for_topic(self.topics["partials"]) or ())
        self.input_count = len(meta.partitions_for_topic(self.topics["scores"]) or ())
        checkpoint_count = len(meta.partitions_for_topic(self.topics["checkpoints"]) or ())
        if not self.partials_count or not self.input_count or not checkpoint_count:
            raise RuntimeError(f"topics missing: run `npo topics create` first ({self.topics})")
        self.checkpoints = CheckpointStore(self.producer, self.reader, self.topics["checkpoints"], checkpoint_count)
        self.ingest.subscribe([self.topics["scores"], self.topics["feedback"]],
                              listener=_Assignments(self._ingest_revoked, self._ingest_assigned))
        self.aggregate.subscribe([self.topics["partials"]],
                                 listener=_Assignments(self._aggregate_revoked, self._aggregate_assigned))
        log.info("worker started", extra={"topics": self.topics, "config_version": self.version})

    async def stop(self) -> None:
        for client in filter(None, (self.ingest, self.aggregate, self.reader, self.producer)):
            try:
                await client.stop()
            except Exception:  # noqa: BLE001 - stopping must not hide the original error
                log.exception("error while stopping a Kafka client")
        for p in list(self.stages):
            self._close_stage(p)

    async def run(self, stop: asyncio.Event) -> None:
        """Process until `stop` is set."""
        await self.start()
        try:
            while not stop.is_set():
                await self.step()
            await self.checkpoint()  # a clean stop leaves nothing to replay
        finally:
            await self.stop()

    async def step(self) -> None:
        """One round: ingest what arrived, aggregate what the ingest stage produced."""
        await self._ingest_round()
        await self._aggregate_round()
        if self._collecting is not None or self._queue:
            await self._checkpoint_step()
        elif time.monotonic() - self._last_checkpoint >= self.settings.checkpoint_interval_s:
            await self._checkpoint_monitors()
            self._queue = sorted(self._dirty["ingest"])
        self._poll_thresholds()
        self.metrics.sync(self.counters)
        self.metrics.health.beat(self._not_ready())
        if time.monotonic() - self._last_trim >= TRIM_EVERY_S:
            self._last_trim = time.monotonic()
            trim_heap()

    # -- assignments -------------------------------------------------------------------------

    # A rebalance revokes every partition, then assigns. The listener pauses what was assigned
    # and notes it; the next round loads it and resumes it: a partition this worker kept, whose committed
    # checkpoint is still its own, keeps its state and goes on from where it stood; any other
    # is loaded from the committed checkpoint (or starts empty) and replays from its offsets.

    def _not_ready(self) -> str | None:
        """Why /readyz fails: a group not joined yet, or assigned partitions not yet loaded
        from their checkpoints (None: ready)."""
        waiting = [g for g in ("ingest", "aggregate") if g not in self._joined]
        if waiting:
            return f"waiting for a partition assignment ({', '.join(waiting)})"
        loading = sorted(g for g, todo in self._to_load.items() if todo)
        return f"loading checkpoints ({', '.join(loading)})" if loading else None

    def _ingest_revoked(self, tps) -> None:
        self._joined.discard("ingest")
        for p in {tp.partition for tp in tps}:
            self.merge.drop(p)  # fetched but unprocessed: fetched again

    def _ingest_assigned(self, tps) -> None:
        self._joined.add("ingest")
        assigned = {tp.partition for tp in tps}
        for p in set(self.stages) - assigned:
            self._close_stage(p)
        self.ingest.pause(*tps)  # nothing is fetched past a position before the state is there
        self._to_load["ingest"] |= assigned

    def _aggregate_revoked(self, tps) -> None:
        self._joined.discard("aggregate")  # monitors stay until the assignment that follows says whether they come back

    def _aggregate_assigned(self, tps) -> None:
        self._joined.add("aggregate")
        assigned = {tp.partition for tp in tps}
        for q in set(self.monitors) - assigned:
            self._drop_monitor(q)
        self.aggregate.pause(*tps)
        self._to_load["aggregate"] |= assigned

    def _name(self, role: str, partition: int) -> str:
        return f"{self.settings.group_id}-{role}/{partition}"

    async def _load(self, role: str, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> tuple | None:
        """(pointer, state, next offsets) from the committed checkpoint of `tps`' partition; None
        when this worker's own state is still the committed one (it then goes on from there)."""
        p = tps[0].partition
        name = self._name(role, p)
        # every offset committed with a checkpoint carries its pointer (one commit request)
        pointer = next((meta for _, meta in (await committed(consumer, tps)).values() if meta), "")
        ours = [self._pointers.get(name), *self._unsure.get(name, ())]
        if pointer in ours and p in (self.stages if role == "ingest" else self.monitors):
            return None  # the live state is that checkpoint's or later: it goes on from where it stands
        if not pointer:  # nothing checkpointed: the group's position (committed or earliest) stands
            return pointer, {}, {}
        state = snapshot.decode(role, await self.checkpoints.read(name, pointer))
        log.info("loaded checkpoint", extra={"checkpoint": name, "offsets": state["offsets"]})
        return pointer, state, state["offsets"]

    async def _load_assigned(self) -> None:
        """Load what the last assignments gave this worker, and seek each partition to where its
        state stands. A partition revoked while it loads is skipped (if it comes back, the
        assignment that brings it asks for another load)."""
        todo, self._to_load["ingest"] = self._to_load["ingest"], set()
        for p in sorted(todo):
            tps = [TopicPartition(t, p) for t in self.merge.topics]
            if not all(tp in self.ingest.assignment() for tp in tps):
                continue
            loaded = await self._load("ingest", self.ingest, tps)
            if not all(tp in self.ingest.assignment() for tp in tps):
                continue
            if loaded is not None:
                self._close_stage(p)
                pointer, state, self.offsets[p] = loaded
                self._loaded("ingest", p, pointer)
                stage = self._new_stage(p)
                if state:
                    join = state["stage"]["join"]
                    join["parts"] = [unpack_part(part) for part in join["parts"]]
                    stage.load(state["stage"])
                # deterministic: a replay repeats the numbers
                self.seq[p] = {int(q): int(n) for q, n in state.get("seq", [])}
                self._last_read[p] = time.monotonic()  # idle from now on, if nothing comes
                self._idle.discard(p)
            for tp in tps:  # where the state stands; a topic it has not read yet stays where it is
                if tp.topic in self.offsets[p]:
                    self.merge.drop(p, (tp.topic,))
                    self.ingest.seek(tp, self.offsets[p][tp.topic])
            self.ingest.resume(*tps)
        todo, self._to_load["aggregate"] = self._to_load["aggregate"], set()
        for q in sorted(todo):
            tp = TopicPartition(self.topics["partials"], q)
            if tp not in self.aggregate.assignment():
                continue
            loaded = await self._load("aggregate", self.aggregate, [tp])
            if tp not in self.aggregate.assignment():
                continue
            if loaded is not None:
                self._drop_monitor(q)
                pointer, state, offsets = loaded
                self._loaded("aggregate", q, pointer)
                monitor = self.monitors[q] = Monitor(self.config, partitions=self.input_count, counters=self.counters)
                monitor.aggregator.thresholds = self._thresholds
                if state:
                    monitor.load(state["monitor"])
                self.sequencers[q] = PartialsSequencer({int(inp): int(seq) for inp, seq in state.get("applied", [])})
                self.partials_offset.pop(q, None)
                if offsets:
                    self.partials_offset[q] = offsets[tp.topic]
            if q in self.partials_offset:
                self.aggregate.seek(tp, self.partials_offset[q])
            self.aggregate.resume(tp)
        while self._to_forget:
            await self.checkpoints.forget(*self._to_forget.pop())

    def _loaded(self, role: str, partition: int, pointer: str) -> None:
        """`pointer` is what the group has committed: this worker's checkpoints whose commit
        was in doubt and are not it were not committed, and go (after the loads: no await
        between checking an assignment and seeking in it)."""
        name = self._name(role, partition)
        self._pointers[name] = pointer
        self._to_forget.extend((name, old) for old in self._unsure.pop(name, ()) if old != pointer)

    def _new_stage(self, p: int) -> PartitionStage:
        # the join's pending scores live on disk under state_dir, not in RAM
        os.makedirs(self.settings.state_dir, exist_ok=True)
        join_path = tempfile.mkdtemp(prefix=f"join-p{p}-", dir=self.settings.state_dir)
        self.stages[p] = PartitionStage(self.config, topic=self.topics["scores"], partition=p,
                                        join_path=join_path, counters=self.counters,
                                        write_buffers=self._write_buffers)
        self._join_dirs[p] = join_path
        return self.stages[p]

    def _close_stage(self, p: int) -> None:
        stage = self.stages.pop(p, None)
        if self._collecting is not None and self._collecting.stage is stage:
            self._collecting = None  # its store iterator goes before the store does
        if stage is not None:
            stage.close()
        path = self._join_dirs.pop(p, None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        self._dirty["ingest"].discard(p)

    def _drop_monitor(self, q: int) -> None:
        self.monitors.pop(q, None)
        self.sequencers.pop(q, None)
        self._dirty["aggregate"].discard(q)

    # -- checkpoints ---------------------------------------------------------------------------

    async def checkpoint(self) -> None:
        """Checkpoint every partition that moved since its last checkpoint, now (a clean stop)."""
        await self._checkpoint_monitors()
        self._queue = sorted(set(self._queue) | self._dirty["ingest"])
        while self._collecting is not None or self._queue:
            await self._checkpoint_step()

    async def _checkpoint_monitors(self) -> None:
        """Monitors are small (open windows, rule memory): each is checkpointed at once."""
        self._last_checkpoint = time.monotonic()
        for q in sorted(self._dirty["aggregate"]):
            monitor = self.monitors.get(q)
            if monitor is None or q in self._to_load["aggregate"]:
                continue
            tp = TopicPartition(self.topics["partials"], q)
            sequencer = self.sequencers[q]
            offsets = {tp.topic: sequencer.resume_offset(self.partials_offset[q])}
            packed = pack(snapshot.encode("aggregate", {"monitor": monitor.dump(), "offsets": offsets,
                                                        "applied": [[i, s] for i, s in sequencer.applied.items()]}))
            self._dirty["aggregate"].discard(q)
            if not await self._commit_checkpoint(self.aggregate, "aggregate", q, packed, {tp: offsets[tp.topic]},
                                                 still=lambda q=q, monitor=monitor: self.monitors.get(q) is monitor):
                self._dirty["aggregate"].add(q)

    async def _checkpoint_step(self) -> None:
        """One step of the ingest checkpoints: capture a partition's state, or write out one
        slice of its join store, or commit it. The state is that of the capture; the stage
        goes on processing meanwhile, so a large join store never stalls the stream."""
        c = self._collecting
        if c is None:
            self._collecting = self._capture(self._queue.pop(0))
            return
        part = next(c.parts, None)
        if part is not None:
            c.packed.append(pack_part(part))
            return
        self._collecting = None
        c.head["join"]["parts"] = c.packed
        packed = pack(snapshot.encode("ingest", {"stage": c.head, "seq": c.seq, "offsets": c.offsets}))
        c.packed.clear()  # in the checkpoint now: the parts' memory serves what follows
        commits = {TopicPartition(t, c.p): o for t, o in c.offsets.items()}
        done = await self._commit_checkpoint(self.ingest, "ingest", c.p, packed, commits,
                                             still=lambda: self.stages.get(c.p) is c.stage)
        del packed
        trim_heap()
        if not done and self.stages.get(c.p) is c.stage:
            self._dirty["ingest"].add(c.p)

    def _capture(self, p: int) -> _Collecting | None:
        stage = self.stages.get(p)
        if stage is None or p in self._to_load["ingest"]:
            return None
        head, parts = stage.dump_lazily()
        self._dirty["ingest"].discard(p)
        return _Collecting(p, stage, head, parts, [], sorted(self.seq[p].items()), dict(self.offsets[p]))

    async def _commit_checkpoint(self, consumer, role: str, partition: int, packed: Packed, offsets: dict,
                                 still) -> bool:
        name = self._name(role, partition)
        pointer = await self.checkpoints.write(name, packed)
        crash_point("checkpoint")
        landed = await self._commit(consumer, {tp: (o, pointer) for tp, o in offsets.items()}) if still() else False
        if landed is None:  # it may have landed: the group may point to it, so it stays
            self._unsure.setdefault(name, []).append(pointer)
            return False
        if not landed:
            await self.checkpoints.forget(name, pointer)  # never committed: never read
            return False
        superseded = [self._pointers.get(name), *self._unsure.pop(name, ())]
        self._pointers[name] = pointer
        for old in filter(None, superseded):
            await self.checkpoints.forget(name, old)
        self.counters["checkpoints", role] += 1
        return True

    # -- ingest --------------------------------------------------------------------------------

    async def _ingest_round(self) -> None:
        await self._load_assigned()
        fetched = await self.ingest.getmany(timeout_ms=100, max_records=20_000)
        if fetched:
            crash_point("round")  # the last batch done, this one not begun
        for tp, records in fetched.items():
            self.merge.add(tp.topic, tp.partition, records)
        sends = []
        for p, stage in list(self.stages.items()):
            at_end = await self._at_end(p)
            if at_end is None or self.stages.get(p) is not stage or p in self._to_load["ingest"]:
                continue  # reassigned during this round: loaded at the next
            records = self.merge.pop_ready(p, at_end)
            if not records:
                sends.extend(self._idleness(p, at_end))
                continue
            self._last_read[p] = time.monotonic()
            self._idle.discard(p)
            started = time.perf_counter()
            values = [r.value for r in records]
            if None in values:  # a tombstone is an empty message: dead-lettered as not JSON
                values = [v or b"" for v in values]
            out = stage.process(values, sources=lambda i, records=records: (records[i].topic, records[i].offset))
            self.metrics.kernel_seconds.observe(time.perf_counter() - started)
            for dl in out.dead_letters:
                sends.append((self.topics["deadletters"], codec.encode(dl), None, None))
            for part in out.partials:
                sends.extend(self._partials_messages(p, part))
            for topic in self.merge.topics:  # records of a topic come in offset order: its last is its highest
                last = next((r for r in reversed(records) if r.topic == topic), None)
                if last is not None:
                    self.offsets[p][topic] = last.offset + 1
            self._dirty["ingest"].add(p)
        crash_point("batch")
        await self._deliver(sends)

    async def _at_end(self, p: int) -> dict[str, bool] | None:
        """Whether each input topic of partition `p` looked drained at the last fetch (and its
        lag, as a metric); None once `p` is no longer this worker's, which a rebalance can
        make it between two awaits of this round."""
        at_end = {}
        for topic in self.merge.topics:
            tp = TopicPartition(topic, p)
            if tp not in self.ingest.assignment():
                return None
            high = self.ingest.highwater(tp)
            try:
                position = await self.ingest.position(tp)
            except IllegalStateError:  # revoked while the position was asked for
                return None
            at_end[topic] = high is not None and position >= high
            if high is not None:
                lag = high - position + self.merge.pending_on(topic, p)
                self.metrics.consumer_lag.labels(topic, str(p)).set(lag)
        return at_end

    def _idleness(self, p: int, at_end: dict[str, bool]) -> list:
        """An unnumbered idleness note to every partials partition, once, when input partition
        `p` has had nothing to read for `partition_idle_ms`: its windows then close on the
        other partitions' event time (its next rows for panes already final count as late).
        The note is in the partials log, so a monitor that replays the log decides the same."""
        now = time.monotonic()
        last = self._last_read.setdefault(p, now)
        if p in self._idle or not all(at_end.values()) or now - last < self.settings.partition_idle_ms / 1000:
            return []
        self._idle.add(p)
        log.info("input partition idle", extra={"partition": p})
        note = Partials.empty(self.config.layout.width, 0, idle=True)
        return [(self.topics["partials"], partials_codec.encode(note, p, 0), None, q)
                for q in range(self.partials_count)]

    def _partials_messages(self, p: int, part) -> list:
        """Rows to the partials partition of their key, in messages of bounded size; progress to
        every partials partition."""
        by_partition: dict[int, list[int]] = {}
        route = self._route
        for i, key in enumerate(part.keys):
            q = route.get(key)
            if q is None:  # murmur2 in Python is slow; keys are few, so remember each key's partition
                q = route[key] = partition_for(stats_key(*key), self.partials_count)
            by_partition.setdefault(q, []).append(i)
        out = []
        for q in range(self.partials_count):
            select = np.array(by_partition.get(q, []), dtype=np.int64)
            for rows, closed_through in partials_codec.chunks(part, select):
                n = self.seq[p][q] = self.seq[p].get(q, 0) + 1
                value = partials_codec.encode(part, p, n, rows, closed_through)
                out.append((self.topics["partials"], value, None, q))
        return out

    # -- aggregate -----------------------------------------------------------------------------

    async def _aggregate_round(self) -> None:
        fetched = await self.aggregate.getmany(timeout_ms=10, max_records=5_000)
        sends = []
        for tp, records in fetched.items():
            q = tp.partition
            monitor, sequencer = self.monitors.get(q), self.sequencers.get(q)
            if monitor is None or q in self._to_load["aggregate"]:
                continue
            for r in records:
                self.partials_offset[q] = r.offset + 1
                self._dirty["aggregate"].add(q)
                try:
                    inp, seq, part = partials_codec.decode(r.value, self.config.layout.width)
                except ValueError:
                    log.exception("skipping a malformed partials message", extra={"offset": r.offset})
                    continue
                for ready in sequencer.accept(inp, seq, r.offset, part):
                    if ready.early:
                        self._remember_early(inp, ready)
                    sends.extend(self._publish(monitor.add(inp, [ready])))
            self.metrics.partials_held.labels(str(q)).set(sequencer.held)
        sends.extend(self._publish_early())
        if any(m[0] == self.topics["stats"] for m in sends):
            crash_point("window")
        await self._deliver(sends)
        if self.sink is not None:
            self.counters["redis_errors"] = self.sink.errors

    def _publish(self, out) -> list:
        messages = []
        for res in out.windows:
            for key, event in window_stats_events(res, self.version):
                messages.append((self.topics["stats"], orjson.dumps(event), key, None))
                if self.sink is not None:
                    self.sink.put_stats(event["policy_id"], event["segment"], res.kind,
                                        {"window": event["window"], **event["stats"]})
            for (policy_id, segment) in res.keys:
                self._early.pop((policy_id, segment, res.pane), None)
        for trig in out.triggers:
            trig["emitted_at"] = time.time()
            key = stats_key(trig["policy_id"], trig["segment"])
            messages.append((self.topics["triggers"], orjson.dumps(trig), key, None))
            if self.sink is not None:
                self.sink.put_cooldown(trig["rule"], trig["policy_id"], trig["segment"], trig["window"]["end"])
            log.info("trigger", extra={"rule": trig["rule"], "trigger_id": trig["trigger_id"],
                                       "policy_id": trig["policy_id"], "segment": trig["segment"]})
        return messages

    def _remember_early(self, inp: int, part) -> None:
        for key, pane, row in zip(part.keys, part.panes, part.rows):
            self._early.setdefault((*key, int(pane)), {})[inp] = row

    def _publish_early(self) -> list:
        """Early results for open windows: the latest snapshot of each input partition, summed."""
        now = time.monotonic()
        if not self._early or now - self._last_early < self.early_every_s:
            return []
        self._last_early = now
        items = sorted(self._early.items())
        rows = np.array([np.sum(list(parts.values()), axis=0) for _, parts in items])
        stats = derive(rows, self.config.layout, self.config.stats)
        stats["late_events"] = np.zeros(len(items))
        size = self.config.windows.tumbling_s
        messages = []
        for i, ((policy_id, segment, pane), _) in enumerate(items):
            res = WindowResult("tumbling", pane * size, (pane + 1) * size, [(policy_id, segment)], rows[i:i + 1],
                               {k: v[i:i + 1] for k, v in stats.items()}, pane)
            for key, event in window_stats_events(res, self.version, final=False):
                messages.append((self.topics["stats"], orjson.dumps(event), key, None))
        return messages

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict) -> bool | None:
        """Commit, if all is still assigned: True when committed, False when not tried, None
        when refused after a rebalance (aiokafka retries a commit whose answer was lost, and
        the retry is refused once the group has moved on: the first try may have landed). A
        commit lost to a rebalance only means a replay."""
        if not offsets or not all(tp in consumer.assignment() for tp in offsets):
            return False
        try:
            await consumer.commit(offsets)
            return True
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("offset commit lost to a rebalance (records will be replayed): %s", exc)
            return None

    # -- output ---------------------------------------------------------------------------------

    async def _deliver(self, messages: list[tuple]) -> None:
        """Write (topic, value, key, partition) messages, retrying those that fail until all are
        acknowledged. Nothing is consumed meanwhile and input offsets wait for this, so an
        output topic that cannot be written holds the worker back (memory: one round's output)
        and loses nothing."""
        delay = 0.2
        while messages:
            results = []
            for topic, value, key, partition in messages:
                try:
                    if refused(topic):
                        raise KafkaTimeoutError(f"refused by NPO_REFUSE_SEND (fault test): {topic}")
                    results.append(await self.producer.send(topic, value, key=key, partition=partition))
                except Exception as exc:  # noqa: BLE001 - e.g. metadata for the topic timed out
                    results.append(exc)
            done = await asyncio.gather(*[r for r in results if not isinstance(r, BaseException)],
                                        return_exceptions=True)
            outcome, it = [], iter(done)
            for r in results:
                outcome.append(r if isinstance(r, BaseException) else next(it))
            failed = [(m, r) for m, r in zip(messages, outcome) if isinstance(r, BaseException)]
            self.undelivered = len(failed)
            self.metrics.undelivered.set(len(failed))
            if failed:
                self.counters["output_retries"] += len(failed)
                topics = sorted({m[0] for m, _ in failed})
                log.warning("could not write %d message(s) to %s (%s); retrying in %.1f s",
                            len(failed), topics, failed[0][1], delay)
                # alive (a restart would not help), but holding back: not ready
                self.metrics.health.beat(f"output to {', '.join(topics)} refused; retrying")
                await asyncio.sleep(delay)
                delay = min(2 * delay, 5.0)
            messages = [m for m, _ in failed]

    # -- Redis --------------------------------------------------------------------------------------

    def _poll_thresholds(self) -> None:
        if self.sink is None:
            return
        latest = self.sink.latest_thresholds()
        if latest is not None and latest != self._thresholds:
            self._thresholds.clear()
            self._thresholds.update(latest)
            log.info("thresholds changed", extra={"count": len(latest)})

