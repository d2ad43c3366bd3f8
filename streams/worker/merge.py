"""Deterministic merge of the co-partitioned score and feedback topics, as Kafka Streams does it.

Partition i of `scores` and partition i of `feedback` hold the same scenario
ids (both keyed by scenario_id). Their records are merged by message
timestamp (ties: scores first, then offset), so the merged order, and with it
every statistic, does not depend on how fetches happened to interleave. A
record is released only when the other topic's buffer is non-empty or that
partition is known to be at its end.
"""
from __future__ import annotations

from collections import deque


class CoPartitionMerge:
    def __init__(self, scores_topic: str, feedback_topic: str) -> None:
        self.topics = (scores_topic, feedback_topic)
        self.buffers: dict[tuple[str, int], deque] = {}

    def add(self, topic: str, partition: int, records) -> None:
        self.buffers.setdefault((topic, partition), deque()).extend(records)

    def drop(self, partition: int) -> None:
        for t in self.topics:
            self.buffers.pop((t, partition), None)

    def pending_on(self, topic: str, partition: int) -> int:
        """Records fetched but not yet released (they count as lag)."""
        return len(self.buffers.get((topic, partition), ()))

    def pop_ready(self, partition: int, at_end: dict[str, bool]) -> list:
        """Records of input partition `partition` in merged order, as far as is safe."""
        a = self.buffers.setdefault((self.topics[0], partition), deque())
        b = self.buffers.setdefault((self.topics[1], partition), deque())
        out = []
        while a or b:
            if a and b:
                out.append(a.popleft() if a[0].timestamp <= b[0].timestamp else b.popleft())
            elif a and at_end.get(self.topics[1], False):
                out.append(a.popleft())
            elif b and at_end.get(self.topics[0], False):
                out.append(b.popleft())
            else:
                break
        return out
