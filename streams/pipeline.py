"""The pipeline, in process: bytes in; window statistics, triggers and dead letters out.

`PartitionStage` does what one Kafka input partition needs (decode,
de-duplicate, join, assign windows, update kernels); `Monitor` merges the
partitions' partials into final windows and evaluates the rules. `npo demo`,
`npo replay` and the tests run them directly; the Kafka worker runs the same
two classes behind its consumers, so both paths give identical results.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from streams import codec
from streams.config import MonitorConfig
from streams.events import FeedbackEvent, ScoreEvent
from streams.operators.aggregate import Aggregator, WindowResult
from streams.operators.dedup import Deduplicator
from streams.operators.join import Context, FeedbackJoin, Pending
from streams.operators.records import RecordBuilder
from streams.operators.triggers import TriggerEvaluator
from streams.operators.windows import Partials, PartitionWindows

_new = tuple.__new__  # builds the NamedTuples below at C speed (their __new__ is Python)


@dataclass
class Output:
    """What one call produced."""

    windows: list[WindowResult] = field(default_factory=list)
    results: list[WindowResult] = field(default_factory=list)  # final and early results, in order
    triggers: list[dict] = field(default_factory=list)
    dead_letters: list = field(default_factory=list)
    partials: list[Partials] = field(default_factory=list)

    def extend(self, other: "Output") -> None:
        self.windows += other.windows
        self.results += other.results
        self.triggers += other.triggers
        self.dead_letters += other.dead_letters
        self.partials += other.partials


class PartitionStage:
    """Per-input-partition work, in arrival order."""

    def __init__(self, config: MonitorConfig, topic: str = "in-process", partition: int = 0,
                 join_path: str | None = None, counters: Counter | None = None) -> None:
        self.config, self.topic, self.partition = config, topic, partition
        self.counters = counters if counters is not None else Counter()
        self.dedup = Deduplicator(config.dedup_horizon_s, config.dedup_max_ids)
        self.join = FeedbackJoin(join_path, config.join_horizon_s)
        self.windows = PartitionWindows(config.windows, config.layout)
        self._records = RecordBuilder()

    def process(self, messages: list[bytes], first_offset: int = 0, now: float | None = None,
                sources: Callable[[int], tuple[str, int]] | None = None) -> Output:
        """Decode and process messages in arrival order.

        `sources(i)` gives message i's (topic, offset) for dead letters (asked only for bad
        messages); by default they come from this stage's topic at consecutive offsets from
        `first_offset`.
        """
        now = time.time() if now is None else now
        out = Output()
        c = self.counters
        events, rejected = codec.decode_batch(messages)
        for i, r in rejected:
            topic, offset = sources(i) if sources else (self.topic, first_offset + i)
            c["dead_letters", r.reason] += 1
            out.dead_letters.append(codec.dead_letter(r, topic, self.partition, offset, now))
        self._ingest(events)
        expired_before = self.join.expired_scores
        for p in self.join.expire():
            c["dead_letters", "join_expired"] += 1
            out.dead_letters.append(self._expired(p, now))
        c["expired_scores"] += self.join.expired_scores - expired_before
        late_before = self.windows.late_events
        out.partials = self.windows.process(self._records.build())
        c["late_events"] += self.windows.late_events - late_before
        return out

    def _ingest(self, events: list) -> None:
        """De-duplicate, join and append records, keeping arrival order (released feedback
        takes the place of the score that released it)."""
        c = self.counters
        ids = [("s:" if type(ev) is ScoreEvent else "f:") + ev.event_id for ev in events]
        fresh = [events[i] for i in self.dedup.fresh(ids, [ev.ts for ev in events])]
        c["duplicates"] += len(events) - len(fresh)
        scores = {}  # scenario_id -> position, for scores of this batch
        for pos, ev in enumerate(fresh):
            if type(ev) is ScoreEvent:
                scores.setdefault(ev.scenario_id, pos)
        # contexts of feedback without one, from this batch's scores or the store
        bare = [ev for ev in fresh if type(ev) is not ScoreEvent and not ev.context_complete]
        stored = self.join.lookup([ev.scenario_id for ev in bare if ev.scenario_id not in scores])
        stored_iter = iter(stored)
        contexts = {}
        parked = []
        for ev in bare:
            if ev.scenario_id in scores:
                continue
            ctx = next(stored_iter)
            if ctx is None:
                parked.append(ev)
            else:
                contexts[ev.event_id] = ctx
        parked_ids = {ev.event_id for ev in parked}
        waiting_here: dict[str, list] = {}
        records, join = self._records, self.join
        new_scores, new_contexts = [], []
        kinds: Counter = Counter()
        joined_late = waiting = 0
        add_score = records.score_event
        for pos, ev in enumerate(fresh):
            if type(ev) is ScoreEvent:
                ctx = _new(Context, (ev.policy_id, ev.segment, ev.score, ev.tau, ev.decision, ev.ts))
                add_score((ev.policy_id, ev.segment), ev.ts, ev.decision, ev.tau, ev.score)
                new_scores.append(ev.scenario_id)
                new_contexts.append(ctx)
                if waiting_here or join.has_waiting:
                    released = waiting_here.pop(ev.scenario_id, [])
                    if join.is_waiting(ev.scenario_id):
                        released = join.release(ev.scenario_id) + released
                    joined_late += len(released)
                    for p in released:
                        self._feedback(p, ctx)
                continue
            kinds[ev.kind] += 1
            pending = _new(Pending, (ev.scenario_id, ev.event_id, ev.ts, ev.kind, ev.source, ev.preferred or "",
                                     ev.weight))
            if ev.context_complete:
                ctx = _new(Context, (ev.policy_id, ev.segment or "default", ev.score, ev.tau, ev.decision, ev.ts))
            elif ev.event_id in parked_ids:
                waiting += 1
                continue
            elif ev.scenario_id in scores and scores[ev.scenario_id] > pos:
                waiting += 1
                waiting_here.setdefault(ev.scenario_id, []).append(pending)
                continue
            elif ev.scenario_id in scores:
                s = fresh[scores[ev.scenario_id]]
                ctx = _new(Context, (s.policy_id, s.segment, s.score, s.tau, s.decision, s.ts))
            else:
                ctx = contexts[ev.event_id]
            self._feedback(pending, ctx)
        c["events_in", "score"] += len(new_scores)
        for kind, n in kinds.items():
            c["events_in", kind] += n
        c["joined_late"] += joined_late
        c["waiting_for_score"] += waiting
        join.add_scores(new_scores, new_contexts)
        join.park([Pending(ev.scenario_id, ev.event_id, ev.ts, ev.kind, ev.source, ev.preferred or "",
                           ev.weight) for ev in parked])

    def _feedback(self, p: Pending, ctx: Context) -> None:
        kind = p.kind if self.config.abstention_handling or p.kind != "abstain" else "like"
        self._records.feedback_event((ctx.policy_id, ctx.segment), p.ts, kind, p.source, ctx.decision,
                                     p.preferred, ctx.score, p.weight)

    def _expired(self, p: Pending, now: float):
        detail = f"no score event for scenario_id {p.scenario_id!r} within {self.config.join_horizon_s:.0f} s"
        raw = codec.encode(FeedbackEvent(v=1, event_id=p.event_id, scenario_id=p.scenario_id, ts=p.ts,
                                         kind=p.kind, source=p.source, preferred=p.preferred or None,
                                         weight=p.weight))
        return codec.dead_letter(codec.Rejected("join_expired", detail, raw), self.topic, self.partition, -1, now)

    def drain(self) -> Output:
        """End of input: close every open pane."""
        return Output(partials=self.windows.drain())

    def dump(self) -> dict:
        """Everything later messages depend on, as plain values and arrays (a checkpoint's body)."""
        head, parts = self.dump_lazily()
        head["join"]["parts"] = list(parts)
        return head

    def dump_lazily(self, slice_size: int = 50_000) -> tuple[dict, Iterator[bytes]]:
        """`dump` as of now, but with the join's entries left to an iterator of parts (see
        `FeedbackJoin.dump_lazily`): the caller puts them under ["join"]["parts"]."""
        join, parts = self.join.dump_lazily(slice_size)
        return {"dedup": self.dedup.dump(), "join": join, "windows": self.windows.dump()}, parts

    def load(self, state: dict) -> None:
        """Continue from a `dump` (on a new stage with the same configuration)."""
        self.dedup.load(state["dedup"])
        self.join.load(state["join"])
        self.windows.load(state["windows"])

    def close(self) -> None:
        self.join.close()


class Monitor:
    """Merges partials from all partitions into final windows and evaluates the rules."""

    def __init__(self, config: MonitorConfig, partitions: int = 1, counters: Counter | None = None) -> None:
        self.config = config
        self.version = config.version
        self.counters = counters if counters is not None else Counter()
        self.aggregator = Aggregator(config.windows, config.layout, config.stats, partitions)
        self.rules = TriggerEvaluator(config.triggers, self.version, config.windows.tumbling_s, config.layout,
                                      config.stats)

    def add(self, partition: int, partials: list[Partials]) -> Output:
        out = Output()
        for p in partials:
            for res in self.aggregator.add(partition, p):
                out.results.append(res)
                if res.kind != "early":
                    out.windows.append(res)
                    self.counters["windows_closed", res.kind] += len(res.keys)
                for trig in self.evaluate(res):
                    self.counters["triggers", trig["rule"]] += 1
                    out.triggers.append(trig)
        return out

    def dump(self) -> dict:
        """Open windows and the rules' memory, as plain values and arrays (a checkpoint's body)."""
        return {"aggregator": self.aggregator.dump(), "rules": self.rules.dump()}

    def load(self, state: dict) -> None:
        """Continue from a `dump` (on a new monitor with the same configuration)."""
        self.aggregator.load(state["aggregator"])
        self.rules.load(state["rules"])

    def evaluate(self, res: WindowResult) -> list[dict]:
        """The rules on one window; tumbling results also get the monitor's decision D and phi."""
        triggers = self.rules.evaluate(res)
        if res.kind == "tumbling":
            self._record_decisions(res)
        return triggers

    def _record_decisions(self, res: WindowResult) -> None:
        """Attach the monitor's decision D (key held over budget) and fidelity estimate."""
        states = [self.rules.state[k] for k in res.keys]
        res.stats["alarmed"] = np.array([float(st.alarmed) for st in states])
        res.stats["phi"] = np.array([st.phi for st in states])


class InProcessPipeline:
    """Partition stages and the monitor wired together in one process.

    With `partitions` > 1 the caller routes each message to its partition (as
    Kafka would, by scenario_id); results then equal the Kafka worker's on the
    same per-partition order.
    """

    def __init__(self, config: MonitorConfig, partitions: int = 1) -> None:
        self.counters: Counter = Counter()
        self.stages = [PartitionStage(config, partition=p, counters=self.counters) for p in range(partitions)]
        self.monitor = Monitor(config, partitions=partitions, counters=self.counters)

    def process(self, messages: list[bytes], first_offset: int = 0, now: float | None = None,
                partition: int = 0) -> Output:
        out = self.stages[partition].process(messages, first_offset, now)
        out.extend(self.monitor.add(partition, out.partials))
        out.partials = []
        return out

    def finish(self) -> Output:
        """End of input: every open window becomes final."""
        out = Output()
        for p, stage in enumerate(self.stages):
            drained = stage.drain()
            out.extend(drained)
            out.extend(self.monitor.add(p, drained.partials))
        out.partials = []
        return out

    def close(self) -> None:
        for stage in self.stages:
            stage.close()
