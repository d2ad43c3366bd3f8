"""Consumer lag of a group on the input topics, read from the broker (committed offsets
versus high watermarks), so the load generator can show whether the worker keeps up
without touching the worker."""
from __future__ import annotations


class GroupLag:
    def __init__(self, settings, group: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.consumer = Consumer({**settings.confluent(), "group.id": group, "enable.auto.commit": False})
        self.parts = []
        for role in ("scores", "feedback"):
            topic = settings.topic(role)
            meta = self.consumer.list_topics(topic, timeout=15).topics.get(topic)
            if meta is not None and meta.error is None:
                self.parts += [TopicPartition(topic, p) for p in meta.partitions]

    def total(self) -> int | None:
        """Events-or-messages not yet committed by the group (None: the group has committed nothing)."""
        try:
            committed = self.consumer.committed(self.parts, timeout=5)
        except Exception:  # noqa: BLE001 - lag is informative only
            return None
        if not any(tp.offset >= 0 for tp in committed):
            return None
        lag = 0
        for tp in committed:
            low, high = self.consumer.get_watermark_offsets(tp, timeout=5, cached=False)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag

    def describe(self) -> str:
        n = self.total()
        return "no commits" if n is None else f"{n:,} msgs"

    def close(self) -> None:
        self.consumer.close()
