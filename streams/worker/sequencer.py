"""In-order application of partials, whatever order their messages land in.

Each input partition numbers the parts it sends to each partials partition 1, 2, 3, ...
(a replay from a checkpoint numbers them the same way), and a message carries consecutive
parts: those of one round, which a replay may cut differently. A send that failed and was
retried can land after a later message to the same partition, so the receiving side applies
part n only after n - 1: a message that comes early is held until the gap fills, the parts
already applied (a re-delivery, or a replay's message overlapping one applied) are dropped.
A held message is not yet in the monitor's state, so a checkpoint resumes from the earliest
held one's offset and a restart reads it again. An idleness note is not numbered (0: whether
a partition fell idle depends on the wall clock, so a replay need not repeat it) and is
applied as it comes.

Messages deleted from the log before they were applied (retention behind a consumer that
fell more than the topic's retention behind) never come: `give_up` applies what is held
across its gaps, and each input partition's messages are then taken as they come, whatever
their numbers (the parts of one that comes after a later one are dropped), until one at or
past the log's end as of the give-up follows on from the last applied: up to that end, resent
messages of the deleted ones' time can land in any order; past it, an input partition that
sent nothing since may still be missing deleted numbers. That state is part of the
checkpoint, so a restart in between goes on the same way.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from streams.state.snapshot import SnapshotError

Part = TypeVar("Part")


def _resync(state) -> tuple[int, set[int]] | None:
    """The (end offset, settled input partitions) of a checkpoint's resync state (None: none)."""
    if state is None:
        return None
    if (not isinstance(state, (list, tuple)) or len(state) != 2 or type(state[0]) is not int
            or not isinstance(state[1], (list, tuple)) or any(type(i) is not int for i in state[1])):
        raise SnapshotError(f"a checkpoint's partials resync state is not [offset, [partition, ...]]: {state!r:.200}")
    return state[0], set(state[1])


class PartialsSequencer(Generic[Part]):
    """Per partials partition: the last part applied from each input partition, and the
    messages held for a gap before them."""

    def __init__(self, applied: dict[int, int] | None = None, resync: list | None = None) -> None:
        self.applied: dict[int, int] = dict(applied or {})
        # input -> (first, last) part numbers -> (offset, parts)
        self._held: dict[int, dict[tuple[int, int], tuple[int, Sequence[Part]]]] = {}
        # after give_up (None: never): the log's end then, and the input partitions settled since
        self._resync = _resync(resync)

    def accept(self, source: int, first: int, offset: int, parts: Sequence[Part]) -> list[Part]:
        """The parts to apply now, in order, once the message of parts `first`, `first` + 1, ...
        of input partition `source` (read at `offset`) has arrived: none if it is held or was
        applied already."""
        if first == 0:
            return list(parts)
        last, end = self.applied.get(source, 0), first + len(parts) - 1
        if end <= last:
            return []
        if self._resync is not None and source not in self._resync[1]:
            if offset >= self._resync[0] and first <= last + 1:
                self._resync[1].add(source)  # settled: from now on, gaps are waited for
            else:
                last = max(last, first - 1)  # the ones before it may have been deleted: not waited for
        held = self._held.setdefault(source, {})
        held.setdefault((first, end), (offset, parts))
        ready: list[Part] = []
        while True:
            due = sorted(span for span in held if span[0] <= last + 1)
            if not due:
                break
            for span in due:
                last = _take(span, held.pop(span)[1], last, ready)
        self.applied[source] = last
        if not held:
            del self._held[source]
        return ready

    def give_up(self, end: int) -> list[tuple[int, list[Part]]]:
        """Stop waiting for what is missing (it was deleted before it was read; `end`: the
        log's end offset now): the held parts as (input partition, parts), in order across
        their gaps; from now on each input partition's messages are taken whatever their
        numbers, until one at or past `end` follows on from the last applied."""
        ready = []
        for source, held in sorted(self._held.items()):
            last, parts = self.applied.get(source, 0), []
            for span in sorted(held):
                last = _take(span, held[span][1], last, parts)
            self.applied[source] = last
            ready.append((source, parts))
        self._held.clear()
        self._resync = (end, set())
        return ready

    @property
    def resync(self) -> list | None:
        """The state `give_up` began, for a checkpoint (None: no give-up)."""
        return None if self._resync is None else [self._resync[0], sorted(self._resync[1])]

    @property
    def held(self) -> int:
        """Messages waiting for a gap before them to fill."""
        return sum(map(len, self._held.values()))

    def resume_offset(self, next_offset: int) -> int:
        """Where a restart must read from, given the next offset to consume: the earliest
        held message's offset if any is held, since none of them is applied yet."""
        return min((offset for held in self._held.values() for offset, _ in held.values()), default=next_offset)


def _take(span: tuple[int, int], parts: Sequence[Part], last: int, ready: list[Part]) -> int:
    """Append to `ready` the parts of a message numbered `span` (first, last) that come after
    part `last`, whatever lies between; the last part applied then."""
    first, end = span
    ready += parts[max(0, last + 1 - first):]
    return max(last, end)
