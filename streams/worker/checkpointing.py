"""The checkpoint protocol: a partition's state and the input offsets it covers, committed together.

A checkpoint is written to the `checkpoints` topic first; then the offsets it covers
are committed to the consumer group with a pointer to it in the commit's metadata, one
request, so whoever takes the partition over finds both or neither. A checkpoint is
written only after everything its records produced has been acknowledged, so a replay
from it loses nothing, and replays are deterministic, so nothing is counted twice.

A commit can fail in two ways. Not tried (the partition is no longer this worker's): the
checkpoint is deleted, nobody will read it. Refused after a rebalance: aiokafka retries a
commit whose answer was lost, and the retry is refused once the group has moved on, so
the first try may have landed; that checkpoint is kept (the group may point to it) until
a later commit supersedes it or a load finds the group pointing elsewhere.

Before each commit the group's pointer is read back: if another worker has committed since,
the commit is not tried. The group's generation fences a member's commits; this guards
commits that are not fenced (the Faust host's bookkeeping groups), where a member that has
not noticed it lost the partition would otherwise put stale state, or a delta on a chain the
new owner has deleted, back in force. It narrows that window, and does not close it: the
read and the commit are two requests. Which of the two is the partition's owner is not
known at the read, so while another worker's checkpoint is in force this one's checkpoints
are whole (the chain it would extend may be deleted by the other); once that checkpoint has
stayed in force for the grace (`contest_grace_s`), the other was a member that had not yet noticed, and
the owner commits a whole checkpoint over it and deletes the other's pieces. Without that
the owner would never commit again until the next rebalance.

An input partition's checkpoint is written as it is taken (`writer`, then `finish`); a
monitor's, small, at once (`save`). A write that times out (an outage longer than the
producer's request timeout) or fails with an error Kafka marks retriable leaves nothing in
force: the partition is checkpointed again at its next turn, and the chunks that did land
are never read (an input partition's are deleted after the next commit that lands, as are
those of a write whose partition is revoked half-way: `abandon`). A deletion that fails so
is tried again after the next commit that lands. Other errors end the worker.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import NamedTuple

from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, KafkaTimeoutError
from aiokafka.util import wait_for

from streams.kafka.checkpoints import Packed, PieceWriter, committed, extendable
from streams.state import snapshot
from streams.worker.faults import crash_point, refused

log = logging.getLogger("npo.worker")

CONTEST_GRACE_S = 600.0
"""How long, at least, another worker's checkpoint stays in force before a partition's owner
commits over it: longer than a member can go without noticing it lost its partitions, after
which the other cannot be the new owner (see `contest_grace_s`)."""


def transient(exc: KafkaError) -> bool:
    """Whether a failed checkpoint write or deletion may succeed if tried again: a timeout (the
    broker away for longer than the producer's request timeout) or an error Kafka marks
    retriable. Others (an idempotent producer's broken sequence, authorization, a closed
    producer) need a new producer, which a restart gives."""
    return isinstance(exc, KafkaTimeoutError) or exc.retriable


def guard_timeout_for(request_timeout_s: float) -> float:
    """How long the read of the group's pointer before a commit, and the commit, may take, for
    clients whose requests time out after `request_timeout_s` (Kafka's `request.timeout.ms`,
    40 s for aiokafka by default). The client retries both for as long as the group's
    coordinator is unreachable, and the round waits on them. Longer than one request: a
    request that times out makes the client close its connection and look for the
    coordinator again, which a shorter wait would cancel first, leaving a connection that
    does not answer in place for the next read."""
    return request_timeout_s + 5.0


def contest_grace_s(max_poll_interval_s: float) -> float:
    """The grace for a host whose group members may go `max_poll_interval_s` between polls
    (Kafka's `max.poll.interval.ms`: 300 s for aiokafka by default, 1,000 s for Faust) before
    the group takes their partitions away: twice that, and at least `CONTEST_GRACE_S`."""
    return max(CONTEST_GRACE_S, 2 * max_poll_interval_s)


async def commit_offsets(consumer, offsets: dict) -> bool | None:
    """Commit `{tp: (offset, metadata)}` if all of it is still assigned: True when committed,
    False when not tried, None when refused after a rebalance or failed with an error the
    client does not retry (it may have landed, for some partitions of it at least). A commit
    lost only means a replay."""
    if not offsets or not all(tp in consumer.assignment() for tp in offsets):
        return False
    try:
        await consumer.commit(offsets)
        return True
    except (CommitFailedError, IllegalStateError) as exc:
        log.warning("offset commit lost to a rebalance (records will be replayed): %s", exc)
        return None
    except KafkaError as exc:
        log.warning("offset commit failed (records will be replayed): %r", exc)
        return None


class Loaded(NamedTuple):
    """A committed checkpoint, read back: its pointer ("" when there is none), the state
    ({} then) and the next offset of each input topic it covers."""

    pointer: str
    state: dict
    offsets: dict[str, int]


class Checkpointer:
    """One worker's side of the protocol, for every partition it holds, in either role
    (`ingest` or `aggregate`). `store` writes, reads and deletes checkpoints (a
    `CheckpointStore`); `commit` and `read_committed` talk to the consumer group."""

    def __init__(self, group_id: str, store=None, counters: Counter | None = None,
                 commit=commit_offsets, read_committed=committed, grace_s: float = CONTEST_GRACE_S,
                 guard_timeout_s: float = guard_timeout_for(40.0)) -> None:
        self.group_id, self.store, self.grace_s, self.guard_timeout_s = group_id, store, grace_s, guard_timeout_s
        self._unanswered_until = float("-inf")  # no group reads before this (the last got no answer)
        self.counters = counters if counters is not None else Counter()
        self._commit, self._read_committed = commit, read_committed
        self._pointers: dict[str, str] = {}  # checkpoint name -> pointer this worker last committed
        self._unsure: dict[str, list[str]] = {}  # name -> pointers whose commit may have landed
        self._stale: list[tuple[str, str]] = []  # (name, pointer) found not committed: to delete
        self._given_up: list[tuple[str, PieceWriter]] = []  # writes given up half-way whose chunks are to delete
        self._in_force: dict[str, tuple[dict, float]] = {}  # name -> ({tp: (offset, pointer)}, when committed)
        self._contested: dict[str, tuple[str, float]] = {}  # name -> (another worker's pointer in force, seen since)
        self._over: dict[str, str] = {}  # name -> another worker's pointer a commit that may have landed went over

    def name(self, role: str, partition: int) -> str:
        return f"{self.group_id}-{role}/{partition}"

    def ours(self, role: str, partition: int) -> list[str]:
        """Pointers this worker committed, or may have, for the partition (newest last); ""
        when its state started from the group's position with no checkpoint yet."""
        name = self.name(role, partition)
        return [p for p in (self._pointers.get(name), *self._unsure.get(name, ())) if p is not None]

    async def load(self, role: str, consumer, tps: list, live: bool) -> Loaded | None:
        """The committed checkpoint of `tps`' partition; None when `live` (this worker holds the
        partition's state) and that state is the committed checkpoint's or later: it goes on
        from where it stands. Adopts what it finds (see `adopt`)."""
        partition = tps[0].partition
        # every offset committed with a checkpoint carries its pointer (one commit request)
        found = await self._read_committed(consumer, tps)
        pointer = next((meta for _, meta in found.values() if meta), "")
        if pointer:  # committed at some unknown time: refreshed at the next chance
            self._in_force[self.name(role, partition)] = (found, float("-inf"))
        else:  # nothing in force (what an earlier ownership committed is gone)
            self._in_force.pop(self.name(role, partition), None)
        if live and pointer in self.ours(role, partition):
            return None
        if not pointer:  # nothing checkpointed: the group's position (committed or earliest) stands
            self.adopt(role, partition, pointer)
            return Loaded(pointer, {}, {})
        name = self.name(role, partition)
        state = snapshot.decode_chain(role, await self.store.read(name, pointer))
        log.info("loaded checkpoint", extra={"checkpoint": name, "offsets": state["offsets"]})
        self.adopt(role, partition, pointer)
        return Loaded(pointer, state, state["offsets"])

    def adopt(self, role: str, partition: int, pointer: str) -> None:
        """`pointer` is what the group has committed: the checkpoints this worker committed, or
        may have, that are not it are out of force, and `forget_stale` deletes them (but the
        pieces `pointer`'s chain shares with them)."""
        name = self.name(role, partition)
        mine = [self._pointers.get(name), *self._unsure.pop(name, ()), self._over.pop(name, None)]
        self._pointers[name] = pointer
        self._stale.extend((name, old) for old in mine if old and old != pointer)

    def pointer(self, role: str, partition: int) -> str:
        """The pointer in force for the partition, as far as this worker knows ("" for none)."""
        return self._pointers.get(self.name(role, partition), "")

    def contested(self, role: str, partition: int) -> bool:
        """Whether another worker's checkpoint was found in force at the partition's last commit
        or refresh: only a whole checkpoint, once the grace has passed, goes over it."""
        return self.name(role, partition) in self._contested

    def delta_base(self, role: str, partition: int) -> str:
        """The pointer in force for the partition if a delta may follow it, else "" (also while
        another worker's checkpoint is in force: the other may delete this worker's chain)."""
        pointer = self.pointer(role, partition)
        return pointer if extendable(pointer) and self.name(role, partition) not in self._contested else ""

    async def forget_stale(self) -> None:
        """Delete the chunks of writes given up half-way (`abandon`), the checkpoints `adopt`
        found were never committed, and those whose deletion failed before; stop at the first
        that fails again (the broker is away). Those not deleted stay listed, also when the
        task is cancelled meanwhile."""
        while self._given_up and await self._delete_sent(*self._given_up[-1]):
            self._given_up.pop()
        if self._given_up:
            return
        stale, self._stale = self._stale, []
        try:
            while stale and await self._forget(*stale[-1], requeue=False):
                stale.pop()
        finally:
            self._stale.extend(stale)

    async def _forget(self, name: str, pointer: str, requeue: bool = True) -> bool:
        """Delete a checkpoint, but the pieces it shares with one that is, or may be, in force.
        False when the broker refused or did not answer in time (see `transient`); it is then
        listed, if `requeue`, for `forget_stale` to try again."""
        try:
            self._injected_refusal()
            await self.store.forget(name, pointer, keep=[self._pointers.get(name, ""), *self._unsure.get(name, ())])
            return True
        except KafkaError as exc:
            if not transient(exc):
                raise
            log.warning("superseded checkpoint not deleted yet (tried again after the next commit): %r", exc,
                        extra={"checkpoint": name})
            self.counters["checkpoint_write_errors"] += 1
            if requeue:
                self._stale.append((name, pointer))
            return False

    def _injected_refusal(self) -> None:
        """The fault tests' `NPO_REFUSE_SEND` for the checkpoints topic, as a broker timeout."""
        if refused(self.store.topic):
            raise KafkaTimeoutError("refused by NPO_REFUSE_SEND (fault test)")

    def writer(self, role: str, partition: int) -> PieceWriter:
        """A checkpoint piece of the partition to write as its bytes are made (`finish` commits it)."""
        return self.store.writer(self.name(role, partition))

    def write_failed(self, exc: KafkaError, role: str, partition: int, writer: PieceWriter | None = None) -> None:
        """A checkpoint's write failed with `exc`: counted if `transient` (nothing is in force,
        the partition is checkpointed again at its next turn, and what `writer` sent is deleted
        after the next commit that lands), raised otherwise."""
        if not transient(exc):
            raise exc
        log.warning("checkpoint not written (tried again at its next turn): %r", exc,
                    extra={"checkpoint": self.name(role, partition)})
        self.counters["checkpoint_write_errors"] += 1
        if writer is not None:
            self._given_up.append((self.name(role, partition), writer))

    async def abandon(self, role: str, partition: int, writer: PieceWriter) -> None:
        """Delete the chunks a write of the partition's checkpoint given up half-way sent (the
        partition went to another worker meanwhile); if the broker refuses or does not answer
        in time, the write is listed and tried again after the next commit that lands."""
        name = self.name(role, partition)
        if not await self._delete_sent(name, writer):
            self._given_up.append((name, writer))

    async def _delete_sent(self, name: str, writer: PieceWriter) -> bool:
        try:
            self._injected_refusal()
            await writer.abandon()
            return True
        except KafkaError as exc:
            if not transient(exc):
                raise
            log.warning("chunks of a checkpoint given up not deleted yet (tried again after the next commit): %r",
                        exc, extra={"checkpoint": name})
            self.counters["checkpoint_write_errors"] += 1
            return False

    async def commit(self, consumer, role: str, partition: int, pointer: str, offsets: dict, still,
                     whole: bool = False) -> bool:
        """Commit `offsets` ({tp: next offset}) with `pointer`, if `still()` says the state it
        holds is still this worker's, and delete the checkpoints it supersedes: True when
        committed. Only a `whole` checkpoint (not a delta) may go over another worker's."""
        name = self.name(role, partition)
        over = ""  # another worker's checkpoint in force, long enough to commit over
        if still():
            over = await self._taken_over(consumer, role, partition, list(offsets), whole=whole)
        landed = await self._commit_bounded(consumer, {tp: (o, pointer) for tp, o in offsets.items()}) \
            if still() and over is not None else False
        if landed is None:  # it may have landed: the group may point to it, so it stays
            self._unsure.setdefault(name, []).append(pointer)
            if over:  # and the other's, until this worker's next commit or load says which is in force
                self._over[name] = over
            return False
        if not landed:
            await self._forget(name, pointer)  # never committed: never read
            return False
        await self.forget_stale()  # the broker answers again: deletions that failed before
        await self._supersede(name, pointer)
        for other in filter(None, (over, self._over.pop(name, None))):
            await self._forget(name, other)
        self._contested.pop(name, None)
        self._in_force[name] = ({tp: (o, pointer) for tp, o in offsets.items()}, time.monotonic())
        self.counters["checkpoints", role] += 1
        return True

    async def _taken_over(self, consumer, role: str, partition: int, tps: list, whole: bool) -> str | None:
        """None when the group points to a checkpoint this worker did not write: another worker
        has committed since, and a commit now could put stale state (or a delta on a chain the
        other may have deleted) back in force; None too when the pointer cannot be read (an error
        the client does not retry, or no answer, see `_bounded`). Else "" (the group points to
        this worker's), or the other's pointer when it has stayed in force for the grace
        (`grace_s`) and the commit is `whole`: the other had not noticed it lost the partition,
        and its checkpoint may be committed over."""
        name = self.name(role, partition)
        try:
            if time.monotonic() < self._unanswered_until:
                raise asyncio.TimeoutError("the group's coordinator did not answer lately")
            found = await self._bounded(self._read_committed, consumer, tps)
        except (KafkaError, asyncio.TimeoutError) as exc:  # the client retries others, as long as it takes
            log.warning("checkpoint not committed: the group's pointer could not be read: %r", exc,
                        extra={"checkpoint": name})
            self.counters["checkpoint_guard_errors", role] += 1
            return None
        now = next((meta for _, meta in found.values() if meta), "")
        if not now or now in self.ours(role, partition):
            self._contested.pop(name, None)
            return ""
        seen = self._contested.get(name)
        if seen is None or seen[0] != now:
            seen = self._contested[name] = (now, time.monotonic())
        if whole and time.monotonic() - seen[1] >= self.grace_s:
            log.warning("committing over another worker's checkpoint, in force for %.0f s", time.monotonic() - seen[1],
                        extra={"checkpoint": name})
            return now
        log.warning("checkpoint not committed: another worker committed since", extra={"checkpoint": name})
        return None

    async def _bounded(self, call, *args):
        """`await call(*args)` within `guard_timeout_s`, asyncio.TimeoutError past it. The group's
        coordinator did not answer then, and the group is not read for as long again: a round
        that checkpoints or refreshes many partitions waits once, not once a partition."""
        try:
            return await wait_for(call(*args), self.guard_timeout_s)  # aiokafka's: passes a cancel on
        except asyncio.TimeoutError:
            self._unanswered_until = time.monotonic() + self.guard_timeout_s
            raise

    async def _commit_bounded(self, consumer, offsets: dict) -> bool | None:
        """`commit(consumer, offsets)` (see `commit_offsets`), None when it got no answer within
        `guard_timeout_s`: the client goes on with the request, which may land."""
        try:
            return await self._bounded(self._commit, consumer, offsets)
        except asyncio.TimeoutError:
            log.warning("offset commit got no answer in %.0f s (records may be replayed)", self.guard_timeout_s)
            return None

    async def refresh(self, consumer, role: str, partition: int, max_age_s: float, still) -> bool:
        """Commit the partition's checkpoint in force again if its commit is older than
        `max_age_s` and `still()` says the partition is this worker's. Kafka deletes the
        offsets of a group without members `offsets.retention.minutes` after their last
        commit (7 days by default; the Faust host's bookkeeping groups never have members),
        and a partition that receives nothing is never checkpointed again: without this its
        pointer would vanish and its next owner replay it from the start. True when committed."""
        name = self.name(role, partition)
        entry = self._in_force.get(name)
        if entry is None or time.monotonic() - entry[1] < max_age_s or not still() \
                or await self._taken_over(consumer, role, partition, list(entry[0]), whole=False) != "":
            return False
        if await self._commit_bounded(consumer, entry[0]) is not True:
            return False
        self._in_force[name] = (entry[0], time.monotonic())
        self.counters["checkpoint_refreshes", role] += 1
        return True

    async def save(self, consumer, role: str, partition: int, packed: Packed, offsets: dict, still,
                   base: str = "") -> bool:
        """Write a packed checkpoint (a delta if `base` names the checkpoint it follows), then
        `commit` it: True when it is in force. A write that fails with a `transient` error is
        counted and leaves nothing in force (tried again next turn); any other error ends the
        worker, as a restart is what clears it."""
        try:
            self._injected_refusal()
            pointer = await self.store.write(self.name(role, partition), packed, base)
        except KafkaError as exc:
            self.write_failed(exc, role, partition)
            return False
        return await self._committed(consumer, role, partition, pointer, packed.size, offsets, still, base)

    async def finish(self, consumer, role: str, partition: int, writer: PieceWriter, size: int, offsets: dict,
                     still, base: str = "") -> bool:
        """`save` for a checkpoint written as it was taken (`writer`, `size` uncompressed bytes):
        close its write, then commit it."""
        try:
            self._injected_refusal()
            pointer = await writer.close(size, base)
        except KafkaError as exc:
            self.write_failed(exc, role, partition, writer)
            return False
        return await self._committed(consumer, role, partition, pointer, size, offsets, still, base)

    async def _committed(self, consumer, role: str, partition: int, pointer: str, size: int, offsets: dict,
                         still, base: str) -> bool:
        crash_point("checkpoint")
        if not await self.commit(consumer, role, partition, pointer, offsets, still, whole=not base):
            return False
        self.counters["checkpoint_bytes", role] += size
        if base:
            self.counters["checkpoint_deltas", role] += 1
            self.counters["checkpoint_delta_bytes", role] += size
        return True

    async def _supersede(self, name: str, pointer: str) -> None:
        superseded = [self._pointers.get(name), *self._unsure.pop(name, ())]
        self._pointers[name] = pointer
        for old in filter(None, superseded):
            await self._forget(name, old)
