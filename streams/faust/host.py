"""The NPO pipeline inside a Faust app: `install(app, settings)` mounts its agents.

Two agents take batches of raw messages: `npo-ingest` reads the co-partitioned `scores`
and `feedback` topics, `npo-aggregate` the internal `partials` topic, and a timer keeps
windows, early results and checkpoints moving when input pauses. They run the same
`PartitionStage`s and `Monitor`s, the same merge, the same partials numbering and the same
checkpoint protocol as `npo worker`, so a Faust app publishes the same window statistics
and trigger ids, and loses and repeats nothing across crashes and rebalances.

Offsets belong to the checkpoints, not to Faust: the NPO topics are read with Faust's
acknowledgements off, so Faust never commits them. The checkpoint pointer and the offsets
it covers are committed to a bookkeeping consumer group of their own
(`<group_id>-faust-ingest`, `<group_id>-faust-aggregate`), which never joins or fetches.
Once a rebalance is complete, before Faust resumes fetching (its `on_rebalance_complete`
signal, which Faust awaits first), each assigned partition's checkpoint is loaded (or, when
its live state is still the committed one's or later, kept) and Faust's consumer is moved
to where that state stands; messages fetched before (an older consumer generation) are
skipped, since the move fetches them again. The app's output goes through a producer of
the pipeline's own (idempotent, acks=all), so a checkpoint is committed only once
everything its records produced is acknowledged, as in the worker.

A round that fails part-way (its state moved on, its output not all written) leaves the
host failed: nothing is checkpointed after it, not even at shutdown, and the app is
crashed, so the partitions move on from their last checkpoints, as after a crash of
`npo worker`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError

from streams.config import MonitorConfig
from streams.kafka.checkpoints import CheckpointStore, committed
from streams.metrics import Metrics
from streams.settings import Settings
from streams.worker.clients import output_producer, partition_counts
from streams.worker.faults import crash_point
from streams.worker.host import PipelineHost
from streams.worker.retention import RETRY_LOG_START_S, check_gaps, check_retention

log = logging.getLogger("npo.faust")

BATCH = 20_000
"""Messages an agent hands over at most at once (as the worker fetches)."""
WITHIN_S = 0.05
"""How long an agent waits to fill a batch."""


class FaustHost(PipelineHost):
    """The pipeline's state and rounds, fed by the Faust agents that `install` mounts."""

    def __init__(self, app, settings: Settings, config: MonitorConfig | None = None, sink=None,
                 metrics: Metrics | None = None, early_every_s: float = 5.0) -> None:
        super().__init__(settings, config, sink, metrics, early_every_s, settings.group_id + "-faust",
                         loading=self._between_owners, max_poll_interval_s=app.conf.broker_max_poll_interval)
        self.app = app
        self._books: dict[str, AIOKafkaConsumer] = {}  # role -> bookkeeping consumer (commits only)
        self._reader: AIOKafkaConsumer | None = None
        self._assigned: set[tuple[str, int]] = set()  # Faust's current assignment of the NPO topics
        self._next: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset expected from Faust
        self._partials: dict[int, list] = {}  # partials partition -> messages not yet applied
        # partials partition -> (offset its deleted partials begin at, its log's end when found)
        self._given_up: dict[int, tuple[int, int]] = {}
        self._unchecked: set[int] = set()  # partials partitions whose fetch skipped offsets not checked yet
        self._generation: int | None = None  # Faust's consumer generation at the last assignment
        self._revoked_in: int | None = None  # the generation in which partitions were last revoked
        self._lock = asyncio.Lock()  # one round, rebalance or shutdown at a time
        self._started = False
        self.failed: BaseException | None = None  # what broke a round: no checkpoint after it

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """The pipeline's own clients: its producer, the checkpoint reader and the bookkeeping
        consumers, each bookkeeping consumer assigned its role's partitions, paused."""
        if self._started:
            return
        try:
            await self._start_clients()
        except BaseException:
            await self._stop_clients()
            raise
        self._started = True

    async def _start_clients(self) -> None:
        self.producer = output_producer(self.settings)
        reader = {**self.settings.aiokafka("consumer"), "enable_auto_commit": False}
        self._reader = AIOKafkaConsumer(**reader)
        for role in ("ingest", "aggregate"):
            self._books[role] = AIOKafkaConsumer(**{**reader, "group_id": f"{self.settings.group_id}-faust-{role}"})
        for client in (self.producer, self._reader, *self._books.values()):
            await client.start()
        counts = await partition_counts(self.producer, self.topics)
        self.router.partitions, self.monitors.input_count = counts["partials"], counts["scores"]
        self.checkpointer.store = CheckpointStore(self.producer, self._reader, self.topics["checkpoints"],
                                                  counts["checkpoints"])
        for role, names in (("ingest", ("scores", "feedback")), ("aggregate", ("partials",))):
            tps = [TopicPartition(self.topics[n], p) for n in names
                   for p in range(counts["partials" if n == "partials" else "scores"])]
            self._books[role].assign(tps)
            self._books[role].pause(*tps)
        self.schedule.consumers = dict(self._books)
        await self._refuse_faust_commits([tp for books in self._books.values() for tp in books.assignment()])
        log.info("NPO agents started", extra={"topics": self.topics, "config_version": self.config.version})

    async def _refuse_faust_commits(self, tps: list) -> None:
        """Offsets the app's own group committed for the NPO topics (an acknowledging channel
        on them, now or in an earlier run) would make Faust's consumer seek past the
        checkpoints after every rebalance: refused, with the way out."""
        group = self.app.conf.id
        probe = AIOKafkaConsumer(**{**self.settings.aiokafka("consumer"), "group_id": group,
                                    "enable_auto_commit": False})
        await probe.start()
        try:
            found = sorted(f"{tp.topic}/{tp.partition}" for tp in await committed(probe, tps))
        finally:
            await probe.stop()
        if found:
            raise ValueError(f"the Faust app's consumer group {group!r} has offsets committed for NPO topics "
                             f"({', '.join(found[:4])}{', ...' if len(found) > 4 else ''}); the NPO agents keep "
                             "their offsets with their checkpoints, and Faust would seek to these instead. "
                             f"Delete them (kafka-consumer-groups --delete-offsets --group {group} --topic ...)")

    async def stop(self) -> None:
        """Checkpoint what moved (a clean stop leaves nothing to replay; after a failed
        round, nothing is), then close."""
        async with self._lock:
            if self._started and self.failed is None:
                await self.schedule.all()
            await self._stop_clients()
            self.stages.close_all()
            self._started = False

    async def _stop_clients(self) -> None:
        for client in filter(None, (self.producer, self._reader, *self._books.values())):
            try:
                await client.stop()
            except Exception:  # noqa: BLE001 - stopping must not hide the original error
                log.exception("error while stopping a Kafka client")

    # -- assignment ----------------------------------------------------------------------------

    def _between_owners(self, role: str, partition: int) -> bool:
        topics = self.merge.topics if role == "ingest" else (self.topics["partials"],)
        return not all((t, partition) in self._assigned for t in topics)

    async def on_revoked(self, revoked) -> None:
        async with self._lock:
            self._revoked_in = self.app.consumer_generation_id
            for tp in revoked:
                self._assigned.discard((tp.topic, tp.partition))

    async def on_assigned(self, assigned) -> None:
        """Load the state of what Faust assigned and move Faust's consumer to where it stands
        (at the end of a rebalance, before Faust resumes fetching).

        A partition loaded from its checkpoint starts over at the checkpoint's offsets; one
        kept with its live state (its committed checkpoint still this app's) goes on from
        the next offset it expects. Either way what Faust fetched before the rebalance is
        skipped (`_fresh`): the consumer fetches it again from there.

        A rebalance that began after this generation's assignment (partitions revoked in it,
        and it never loaded) makes this a late call: the assignment is already being taken
        away, and the next generation's call does the work. (A generation loaded before can
        come back: a member that rejoins a stable group gets its generation again.) The
        partitions count as held (`_assigned`) only once loaded and moved, so a call cut short
        leaves them waiting for the next."""
        async with self._lock:
            generation = self.app.consumer_generation_id
            if self.failed is not None:
                return
            if self._revoked_in == generation != self._generation:
                log.warning("ignored the end of rebalance %s: its partitions are being revoked", generation)
                return
            await self.start()
            self._refuse_acks()
            ours = {(tp.topic, tp.partition) for tp in assigned if tp.topic in self.topics.values()}
            inputs = {p for t, p in ours if t == self.topics["scores"] and (self.topics["feedback"], p) in ours}
            partials = {q for t, q in ours if t == self.topics["partials"]}
            moves: dict[TopicPartition, int] = {}
            resumed: dict[TopicPartition, int] = {}  # where loaded input checkpoints resume (see retention.py)
            for p in set(self.stages.stages) - inputs:
                self.stages.close(p)
                self.merge.drop(p)
            for q in set(self.monitors.monitors) - partials:
                self.monitors.drop(q)
                self._partials.pop(q, None)
                self._given_up.pop(q, None)
                self._unchecked.discard(q)
            for p in sorted(inputs):
                tps = [TopicPartition(t, p) for t in self.merge.topics]
                loaded = await self.checkpointer.load("ingest", self._books["ingest"], tps, live=p in self.stages.stages)
                if loaded is not None:
                    self.stages.open(p, loaded.state, loaded.offsets, loaded.pointer)
                    self.merge.drop(p)
                for tp in tps:
                    moves[tp] = self._move(tp, self.stages.offsets[p].get(tp.topic, 0) if loaded is not None else None)
                    if loaded is not None:  # a live state's fetches go on where they stood
                        self.fetch_gaps.moved(tp, self.stages.offsets[p].get(tp.topic))
                    if loaded is not None and tp.topic in self.stages.offsets[p]:
                        resumed[tp] = moves[tp]
            for q in sorted(partials):
                tp = TopicPartition(self.topics["partials"], q)
                loaded = await self.checkpointer.load("aggregate", self._books["aggregate"], [tp],
                                                      live=q in self.monitors.monitors)
                if loaded is not None:
                    self.monitors.open(q, loaded.state, loaded.offsets.get(tp.topic))
                    self._partials.pop(q, None)
                    self._given_up.pop(q, None)
                    self._unchecked.discard(q)
                    self.fetch_gaps.moved(tp, self.monitors.offsets.get(q))
                moves[tp] = self._move(tp, self.monitors.offsets.get(q, 0) if loaded is not None else None)
            if moves:  # on the consumer's own thread, as Faust's seeks are
                await self.app.consumer.seek_wait(moves)
            if resumed:
                await check_retention(self._books["ingest"], self.stages, self.counters, resumed, self.fetch_gaps)
            self._assigned, self._generation = ours, generation
            await self.checkpointer.forget_stale()

    def _refuse_acks(self) -> None:
        """Another channel reading an NPO topic with acknowledgements on would have Faust commit
        its offsets and seek to them after each rebalance, past the checkpoints: refused (the
        error crashes the app with this message)."""
        acking = sorted(t for t in (*self.merge.topics, self.topics["partials"]) if self.app.topics.acks_enabled_for(t))
        if acking:
            raise ValueError(f"an agent of the app reads {', '.join(acking)} with acknowledgements on; "
                             "the NPO agents keep those offsets with their checkpoints, so read them with "
                             "acks=False (app.topic(..., acks=False))")

    def _move(self, tp: TopicPartition, offset: int | None) -> int:
        """Where Faust's consumer goes for `tp`: `offset`, where a loaded state goes on from
        (0: the earliest); None: a live state, on from the next offset it expects."""
        key = (tp.topic, tp.partition)
        self._next[key] = self._next.get(key, 0) if offset is None else offset
        return self._next[key]

    # -- rounds --------------------------------------------------------------------------------

    def _fresh(self, messages) -> list:
        """Messages of held partitions fetched since the last assignment, at or past the next
        expected offset, in Faust's order."""
        out = []
        for m in messages:
            key = (m.topic, m.partition)
            if key in self._assigned and m.generation_id == self._generation and m.offset >= self._next.get(key, 0):
                self._next[key] = m.offset + 1
                out.append(m)
        return out

    @contextlib.asynccontextmanager
    async def _guarded(self):
        """The lock, and a failure in what it covers marks the host failed and crashes the app."""
        async with self._lock:
            try:
                yield self.failed is None
            except BaseException as exc:
                self._fail(exc)
                raise

    def _fail(self, exc: BaseException) -> None:
        """Mark the host failed and crash the app (nothing is checkpointed after it)."""
        self.failed = exc
        log.error("an NPO round failed; nothing is checkpointed after it (%r)", exc)
        if not self.app.should_stop:
            asyncio.ensure_future(self.app.crash(exc))

    async def ingest(self, messages) -> None:
        """Messages of `scores` and `feedback`, as an agent took them."""
        by_tp: dict[TopicPartition, list] = {}
        async with self._guarded() as healthy:
            if not healthy:
                return
            for m in self._fresh(messages):
                by_tp.setdefault(TopicPartition(m.topic, m.partition), []).append(m)
            if by_tp:
                crash_point("round")  # the last batch done, this one not begun
            for tp, records in by_tp.items():
                self.merge.add(tp.topic, tp.partition, records)
            gaps = self.fetch_gaps.gaps(by_tp)
        await check_gaps(self._books["ingest"], self.counters, gaps, self.fetch_gaps)  # outside the lock
        await self.round()

    async def aggregate(self, messages) -> None:
        """Messages of `partials`, as an agent took them."""
        by_tp: dict[TopicPartition, list] = {}
        async with self._guarded() as healthy:
            if not healthy:
                return
            for m in self._fresh(messages):
                self._partials.setdefault(m.partition, []).append(m)
                by_tp.setdefault(TopicPartition(m.topic, m.partition), []).append(m)
            gaps = self.fetch_gaps.gaps(by_tp)
            waiting = {tp: m for tp in gaps if (m := self.monitors.get(tp.partition)) is not None}
            self._unchecked |= {tp.partition for tp in waiting}  # not applied until checked
            consuming = self.app.consumer.assignment()
            ends = {tp: max((self.app.consumer.highwater(tp) if tp in consuming else None) or 0,
                            by_tp[tp][-1].offset + 1) for tp in waiting}
        if gaps:
            try:  # outside the lock: a request to the broker, tried until answered
                lost = await check_gaps(self._books["aggregate"], self.counters, gaps, self.fetch_gaps,
                                        retry_s=RETRY_LOG_START_S)
            except BaseException as exc:
                self._fail(exc)  # its partials were neither given up on nor applied: start over from the checkpoint
                raise
            async with self._guarded() as healthy:
                if not healthy:
                    return
                for tp, monitor in waiting.items():
                    if self.monitors.get(tp.partition) is monitor:  # not reloaded meanwhile
                        self._unchecked.discard(tp.partition)
                        if tp in lost:
                            self._given_up[tp.partition] = (lost[tp], ends[tp])
        await self.round()

    async def round(self) -> None:
        """Process what is ready, write it, apply partials, write that, checkpoint: as the
        worker's step does."""
        async with self._guarded() as healthy:
            if not healthy or not self._started:
                return
            sends, consuming = [], self.app.consumer.assignment()
            for p in list(self.stages.stages):
                at_end = self._at_end(p, consuming)
                if at_end is not None:
                    sends += self.ready(p, at_end)
            crash_point("batch")
            await self.delivery.deliver(sends)
            sends = []
            for q, records in sorted(self._partials.items()):
                if self.monitors.get(q) is not None and q not in self._unchecked:
                    sends += (self.monitors.add_across_gap(q, records, *self._given_up[q]) if q in self._given_up
                              else self.monitors.add(q, records))
            self._given_up.clear()
            self._partials = {q: records for q, records in self._partials.items() if q in self._unchecked}
            sends += self.monitors.early()
            if any(m[0] == self.topics["stats"] for m in sends):
                crash_point("window")
            await self.delivery.deliver(sends)
            await self.schedule.step()
            self.poll_thresholds()
            self.metrics.sync(self.counters)

    def _at_end(self, p: int, consuming: set) -> dict[str, bool] | None:
        """Whether each input topic of `p` has handed over everything up to its high watermark;
        None while a rebalance is moving `p` (Faust's consumer, on a thread of its own, may
        already have let it go: `consuming` is its assignment): it waits for the assignment."""
        at_end = {}
        for topic in self.merge.topics:
            tp = TopicPartition(topic, p)
            if (topic, p) not in self._assigned or tp not in consuming:
                return None
            try:
                high = self.app.consumer.highwater(tp)
            except (AssertionError, IllegalStateError):  # let go between the check and the call
                return None
            at_end[topic] = high is not None and high >= 0 and self._next.get((topic, p), 0) >= high
        return at_end


def install(app, settings: Settings, config: MonitorConfig | None = None, sink=None,
            metrics: Metrics | None = None, early_every_s: float = 5.0) -> FaustHost:
    """Mount the NPO agents on `app` (a `faust.App`): its worker then runs the pipeline next
    to the app's own agents. Returns the host, whose `counters` show what it did."""
    if app.conf.consumer_auto_offset_reset != "earliest":
        raise ValueError("the NPO agents need consumer_auto_offset_reset='earliest' (the app has "
                         f"{app.conf.consumer_auto_offset_reset!r}): a partition with no checkpoint yet "
                         "is read from its first record")
    host = FaustHost(app, settings, config, sink, metrics, early_every_s)
    raw = {"value_serializer": "raw", "key_serializer": "raw", "acks": False}
    inputs = app.topic(host.topics["scores"], host.topics["feedback"], **raw)
    partials = app.topic(host.topics["partials"], **raw)

    @app.agent(inputs, name="npo-ingest")
    async def npo_ingest(stream):
        async for events in stream.take_events(BATCH, within=WITHIN_S):
            await host.ingest([e.message for e in events])

    @app.agent(partials, name="npo-aggregate")
    async def npo_aggregate(stream):
        async for events in stream.take_events(BATCH, within=WITHIN_S):
            await host.aggregate([e.message for e in events])

    @app.timer(max(0.05, settings.merge_idle_ms / 2000))
    async def npo_tick():
        await host.round()

    @app.on_partitions_revoked.connect
    async def npo_revoked(sender, revoked, **kwargs):
        await host.on_revoked(revoked)

    @app.on_rebalance_complete.connect
    async def npo_assigned(sender, **kwargs):
        # not on_partitions_assigned: Faust does not await that signal before it resumes
        # fetching, and a fetch before the move would run past the state's offsets
        await host.on_assigned(app.consumer.assignment())

    @app.on_before_shutdown.connect
    async def npo_shutdown(sender, **kwargs):
        await host.stop()

    return host
