"""What the worker writes, and how it gets written.

Window statistics (schema `window_stats`) and triggers as events with their Kafka keys;
partials, numbered, in messages to the partials partition of their key; and delivery,
which retries whatever the broker refused until all of it is acknowledged.
A message is a (topic, value, key, partition) tuple.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time

import msgspec
import numpy as np
import orjson

from streams.events import WindowStats
from streams.kafka.producer import partition_for
from streams.operators.aggregate import WindowResult
from streams.operators.windows import Partials
from streams.worker import partials as partials_codec
from streams.worker.faults import refused

log = logging.getLogger("npo.worker")

_FIELDS = set(WindowStats.__struct_fields__)


def _integer_fields(struct) -> set[str]:
    """Fields the schema types as integers (counts): written as ints, since the kernels sum
    them as floats and a strict reader refuses 3.0 for an integer."""
    def integer(t) -> bool:
        return isinstance(t, msgspec.inspect.IntType) or (
            isinstance(t, msgspec.inspect.UnionType) and any(map(integer, t.types)))
    return {f.name for f in msgspec.inspect.type_info(struct).fields if integer(f.type)}


_COUNTS = _integer_fields(WindowStats)


def _value(name: str, v: float):
    v = float(v)
    if math.isnan(v) or math.isinf(v):
        return None
    return int(round(v)) if name in _COUNTS else v


def window_stats_events(res: WindowResult, version: str, final: bool = True) -> list[tuple[bytes, dict]]:
    """(Kafka key, event) per key of a window result."""
    out = []
    for i, (policy_id, segment) in enumerate(res.keys):
        stats = {name: _value(name, col[i]) for name, col in res.stats.items() if name in _FIELDS}
        event = {"type": "window_stats", "v": 1, "policy_id": policy_id, "segment": segment,
                 "window": {"kind": res.kind if res.kind != "early" else "tumbling", "start": res.start,
                            "end": res.end},
                 "final": final, "stats": stats, "late_events": int(res.stats["late_events"][i]),
                 "config_version": version}
        out.append((stats_key(policy_id, segment), event))
    return out


def stats_key(policy_id: str, segment: str) -> bytes:
    return msgspec.json.encode([policy_id, segment])


class Publisher:
    """A monitor's output as messages to the statistics and triggers topics; the latest
    statistics and cool-downs also to the Redis sink, if there is one."""

    def __init__(self, topics: dict[str, str], version: str, sink=None) -> None:
        self.topics, self.version, self.sink = topics, version, sink

    def windows(self, results: list[WindowResult], final: bool = True) -> list[tuple]:
        messages = []
        for res in results:
            for key, event in window_stats_events(res, self.version, final=final):
                messages.append((self.topics["stats"], orjson.dumps(event), key, None))
                if final and self.sink is not None:
                    self.sink.put_stats(event["policy_id"], event["segment"], res.kind,
                                        {"window": event["window"], **event["stats"]})
        return messages

    def triggers(self, triggers: list[dict]) -> list[tuple]:
        messages = []
        for trig in triggers:
            trig["emitted_at"] = time.time()
            key = stats_key(trig["policy_id"], trig["segment"])
            messages.append((self.topics["triggers"], orjson.dumps(trig), key, None))
            if self.sink is not None:
                self.sink.put_cooldown(trig["rule"], trig["policy_id"], trig["segment"], trig["window"]["end"])
            log.info("trigger", extra={"rule": trig["rule"], "trigger_id": trig["trigger_id"],
                                       "policy_id": trig["policy_id"], "segment": trig["segment"]})
        return messages


class PartialsRouter:
    """Partials of the input partitions to the partials partition of each key. Each input
    partition numbers the parts it sends to each partials partition 1, 2, ... (the numbers are
    part of its checkpoint: a replay from it repeats them, however its rounds cut the input),
    so the receiving side applies them in order and once. A round's parts for one partials
    partition go in one message (`version` 2), or one a message (`version` 1)."""

    def __init__(self, topic: str, width: int, partitions: int = 0, version: int = 2) -> None:
        if version not in partials_codec.VERSIONS:
            raise ValueError(f"partials version must be one of {partials_codec.VERSIONS}")
        self.topic, self.width, self.partitions, self.version = topic, width, partitions, version
        self._seq: dict[int, dict[int, int]] = {}  # input partition -> partials partition -> last number
        self._route: dict[tuple[str, str], int] = {}  # key -> partials partition

    def numbers(self, p: int) -> list[list[int]]:
        """Input partition `p`'s last number sent to each partials partition (checkpointed)."""
        return sorted([q, n] for q, n in self._seq.get(p, {}).items())

    def restore(self, p: int, numbers: list) -> None:
        """Go on from the `numbers` of a checkpoint (none: from the start)."""
        self._seq[p] = {int(q): int(n) for q, n in numbers}

    def messages(self, p: int, parts: list[Partials]) -> list[tuple]:
        """Rows to the partials partition of their key, in messages of bounded size; progress to
        every partials partition."""
        if not parts:
            return []
        units: dict[int, list] = {q: [] for q in range(self.partitions)}
        route = self._route
        for part in parts:
            by_partition: dict[int, list[int]] = {}
            for i, key in enumerate(part.keys):
                q = route.get(key)
                if q is None:  # murmur2 in Python is slow; keys are few, so remember each key's partition
                    q = route[key] = partition_for(stats_key(*key), self.partitions)
                by_partition.setdefault(q, []).append(i)
            for q in range(self.partitions):
                units[q] += partials_codec.chunks(part, np.array(by_partition.get(q, []), dtype=np.int64))
        seq, out = self._seq.setdefault(p, {}), []
        for q, todo in units.items():
            for batch in partials_codec.batches(todo, self.width, self.version):
                first = seq.get(q, 0) + 1
                seq[q] = first + len(batch) - 1
                out.append((self.topic, partials_codec.encode(batch, p, first, self.width, self.version), None, q))
        return out

    def idleness_note(self, p: int) -> list[tuple]:
        """An unnumbered note to every partials partition that input partition `p` is idle."""
        note = partials_codec.idleness_note(p, self.width, self.version)
        return [(self.topic, note, None, q) for q in range(self.partitions)]


class Delivery:
    """Writes messages, retrying those that fail until all are acknowledged. Nothing is
    consumed meanwhile and input offsets wait for this, so an output topic that cannot be
    written holds the worker back (memory: one round's output) and loses nothing.

    `send(topic, value, key, partition)` hands a message to the host's producer and returns
    an awaitable of its acknowledgement."""

    def __init__(self, send, metrics, counters) -> None:
        self.send, self.metrics, self.counters = send, metrics, counters
        self.undelivered = 0  # messages waiting for a retry

    async def deliver(self, messages: list[tuple]) -> list:
        """Write `messages`; their acknowledgements (record metadata), in their order."""
        acks: list = [None] * len(messages)
        waiting = list(range(len(messages)))
        delay = 0.2
        while waiting:
            outcome = await self._send([messages[i] for i in waiting])
            failed = [(i, r) for i, r in zip(waiting, outcome) if isinstance(r, BaseException)]
            for i, r in zip(waiting, outcome):
                acks[i] = r
            self.undelivered = len(failed)
            self.metrics.undelivered.set(len(failed))
            if failed:
                self.counters["output_retries"] += len(failed)
                topics = sorted({messages[i][0] for i, _ in failed})
                log.warning("could not write %d message(s) to %s (%s); retrying in %.1f s",
                            len(failed), topics, failed[0][1], delay)
                # alive (a restart would not help), but holding back: not ready
                self.metrics.health.beat(f"output to {', '.join(topics)} refused; retrying")
                await asyncio.sleep(delay)
                delay = min(2 * delay, 5.0)
            waiting = [i for i, _ in failed]
        return acks

    async def _send(self, messages: list[tuple]) -> list:
        """Each message's acknowledgement, or the exception that refused it."""
        results = []
        for topic, value, key, partition in messages:
            try:
                if refused(topic):
                    raise TimeoutError(f"refused by NPO_REFUSE_SEND (fault test): {topic}")
                results.append(await self.send(topic, value, key, partition))
            except Exception as exc:  # noqa: BLE001 - e.g. metadata for the topic timed out
                results.append(exc)
        done = iter(await asyncio.gather(*[r for r in results if not isinstance(r, BaseException)],
                                         return_exceptions=True))
        return [r if isinstance(r, BaseException) else next(done) for r in results]
