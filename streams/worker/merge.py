"""Deterministic merge of the co-partitioned score and feedback topics, as Kafka Streams does it.

Partition i of `scores` and partition i of `feedback` hold the same scenario
ids (both keyed by scenario_id). Their records are merged by message
timestamp (ties: scores first, then offset), so the merged order, and with it
every statistic, does not depend on how fetches happened to interleave. A
record is released only when the other topic's buffer is non-empty, or that
partition is at its end and the record has waited `idle_s` for it (Kafka
Streams' `max.task.idle.ms`): "at its end" is only as fresh as the last fetch,
and a producer writing both topics at once appends them at slightly different
moments. The wait matters when event time runs faster than the clock (a
backfill); live traffic is ordered to within the wait, far inside the grace.
"""
from __future__ import annotations

import time
from collections import deque


class CoPartitionMerge:
    def __init__(self, scores_topic: str, feedback_topic: str, idle_s: float = 0.1) -> None:
        if idle_s < 0:
            raise ValueError("idle_s must be >= 0")
        self.topics = (scores_topic, feedback_topic)
        self.idle_s = idle_s
        self.buffers: dict[tuple[str, int], deque] = {}
        self.arrived: dict[tuple[str, int], deque] = {}  # (monotonic time, count) per add

    def add(self, topic: str, partition: int, records, now: float | None = None) -> None:
        if not records:
            return
        self.buffers.setdefault((topic, partition), deque()).extend(records)
        self.arrived.setdefault((topic, partition), deque()).append(
            [time.monotonic() if now is None else now, len(records)])

    def drop(self, partition: int, topics: tuple[str, ...] | None = None) -> None:
        """Forget what was fetched for a partition (of `topics`, by default both)."""
        for t in self.topics if topics is None else topics:
            self.buffers.pop((t, partition), None)
            self.arrived.pop((t, partition), None)

    def pending_on(self, topic: str, partition: int) -> int:
        """Records fetched but not yet released (they count as lag)."""
        return len(self.buffers.get((topic, partition), ()))

    def pop_ready(self, partition: int, at_end: dict[str, bool], now: float | None = None) -> list:
        """Records of input partition `partition` in merged order, as far as is safe."""
        now = time.monotonic() if now is None else now
        ka, kb = (self.topics[0], partition), (self.topics[1], partition)
        a = self.buffers.setdefault(ka, deque())
        b = self.buffers.setdefault(kb, deque())
        out: list = []
        take, pop_a, pop_b = out.append, a.popleft, b.popleft
        n_a, n_b = len(a), len(b)
        while a and b:  # both topics have a head: the older goes first (scores on a tie)
            take(pop_a() if a[0].timestamp <= b[0].timestamp else pop_b())
        self._consumed(ka, n_a - len(a))
        self._consumed(kb, n_b - len(b))
        for key, buf, other in ((ka, a, self.topics[1]), (kb, b, self.topics[0])):
            if buf and at_end.get(other, False):  # the other looks drained: release what has waited
                arrived = self.arrived[key]
                while buf and now - arrived[0][0] >= self.idle_s:
                    out.extend([buf.popleft() for _ in range(arrived.popleft()[1])])
        return out

    def _consumed(self, key: tuple[str, int], n: int) -> None:
        """Forget the arrival of `n` records taken from the front of a buffer."""
        arrived = self.arrived.get(key)
        while n:
            head = arrived[0]
            k = min(n, head[1])
            head[1] -= k
            n -= k
            if not head[1]:
                arrived.popleft()
