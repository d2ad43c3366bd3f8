"""The pipeline, in process: bytes in; window statistics, triggers and dead letters out.

`PartitionStage` does what one Kafka input partition needs (decode,
de-duplicate, join, assign windows, update kernels); `Monitor` merges the
partitions' partials into final windows and evaluates the rules. `npo demo`,
`npo replay` and the tests run them directly; the Kafka worker runs the same
two classes behind its consumers, so both paths give identical results.
"""
from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from kernels import label_states, msgpack_scan, scenario_index
from kernels.detector import MixtureSR
from kernels.held_ids import HeldColumn
from streams import codec, columnar
from streams.columns import EventColumns
from streams.config import MonitorConfig
from streams.events import FeedbackEvent, ScoreEvent
from streams.operators.aggregate import Aggregator, WindowResult
from streams.operators.dedup import Deduplicator
from streams.operators.ingest import ingest
from streams.operators.join import Changes, FeedbackJoin, Pending
from streams.operators.records import Records
from streams.operators.triggers import TriggerEvaluator
from streams.operators.windows import Partials, PartitionWindows
from streams.state import snapshot


@dataclass
class Output:
    """What one call produced."""

    windows: list[WindowResult] = field(default_factory=list)
    # final results, and the input partitions' early snapshots (statistics derived when read), in order
    results: list[WindowResult] = field(default_factory=list)
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
                 join_path: str | None = None, counters: Counter | None = None, write_buffers=None,
                 block_cache=None) -> None:
        self.config, self.topic, self.partition = config, topic, partition
        self.counters = counters if counters is not None else Counter()
        self.dedup = Deduplicator(config.dedup_horizon_s, config.dedup_max_ids)
        self.join = FeedbackJoin(join_path, config.join_horizon_s, write_buffers=write_buffers, block_cache=block_cache)
        self.windows = PartitionWindows(config.windows, config.layout)

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
        events, rejected = columnar.decode_batch(messages)
        for i, r in rejected:
            topic, offset = sources(i) if sources else (self.topic, first_offset + i)
            c["dead_letters", r.reason] += 1
            out.dead_letters.append(codec.dead_letter(r, topic, self.partition, offset, now))
        records = self._ingest(events)
        expired_before = self.join.expired_scores
        for p in self.join.expire():
            c["dead_letters", "join_expired"] += 1
            out.dead_letters.append(self._expired(p, now))
        c["expired_scores"] += self.join.expired_scores - expired_before
        late_before = self.windows.late_events
        out.partials = self.windows.process(records)
        c["late_events"] += self.windows.late_events - late_before
        return out

    def _ingest(self, events: EventColumns) -> Records:
        """De-duplicated, joined records of `events`, with the counters moved."""
        c = self.counters
        copied_before = self.dedup.bytes_copied_aside
        got = ingest(events, self.dedup, self.join, self.config.abstention_handling)
        if self.dedup.bytes_copied_aside > copied_before:
            c["checkpoint_bytes_copied_aside"] += self.dedup.bytes_copied_aside - copied_before
        c["duplicates"] += got.duplicates
        c["events_in", "score"] += got.scores
        for kind, n in got.kinds.items():
            c["events_in", kind] += n
        c["joined_late"] += got.joined_late
        c["waiting_for_score"] += got.waiting
        return got.records

    def _expired(self, p: Pending, now: float):
        detail = f"no score event for scenario_id {p.scenario_id!r} within {self.config.join_horizon_s:.0f} s"
        raw = codec.encode(FeedbackEvent(v=1, event_id=p.event_id, scenario_id=p.scenario_id, ts=p.ts,
                                         kind=p.kind, source=p.source, preferred=p.preferred or None,
                                         weight=p.weight))
        return codec.dead_letter(codec.Rejected("join_expired", detail, raw), self.topic, self.partition, -1, now)

    def drain(self) -> Output:
        """End of input: close every open pane."""
        return Output(partials=self.windows.drain())

    def capture(self, slice_size: int = 50_000, delta: bool = False) -> "StageCapture":
        """This stage's checkpoint as of now, its join entries taken a slice at a time
        (`StageCapture.step`, or `packed_parts` as a worker writes them) and its
        de-duplication ids read from their table as they are encoded, while the stage goes
        on processing (a large state is never copied whole at once). With `delta`, only what
        changed since the last checkpoint that came into force (`committed`); else the whole
        state. Either way, what changes from now on counts toward the next checkpoint; if this
        one does not come into force, say so (`abandoned`) and the next one holds its changes
        too."""
        changed = self.join.take_changes()
        delta = delta and changed.log is not None  # None: more changed than was tracked
        if delta:
            join, parts = self.join.changes_lazily(changed, slice_size)
            dedup = self.dedup.changes(held=True)
        else:
            join, parts = self.join.dump_lazily(slice_size)
            dedup = self.dedup.dump(held=True)
        return StageCapture({"dedup": dedup, "join": join, "windows": self.windows.dump()}, parts, delta,
                            changed, self.dedup.position())

    def delta_pays(self) -> bool:
        """Whether a delta would be much smaller than the whole state: fewer than half the
        join's keys changed since the last capture. When the join turns over faster than
        checkpoints come, a whole checkpoint is the smaller and the quicker to take."""
        return self.join.changed_share() < 0.5

    def committed(self, capture: "StageCapture") -> None:
        """`capture`'s checkpoint came into force: the next delta is taken against it."""
        self.dedup.mark(capture.position)

    def abandoned(self, capture: "StageCapture") -> None:
        """`capture`'s checkpoint did not come into force: its changes count toward the next."""
        self.join.keep_changes(capture.changed)

    def dump(self) -> dict:
        """Everything later messages depend on, as plain values and arrays (a checkpoint's
        body); the changes counted toward the next checkpoint stay as they were."""
        capture = self.capture()
        while capture.step():
            pass
        self.abandoned(capture)
        return capture.state()

    def load(self, state: dict) -> None:
        """Continue from a `dump` (on a new stage with the same configuration)."""
        self.dedup.load(state["dedup"])
        self.join.load({**state["join"], "parts": [snapshot.unpack_part(part) for part in state["join"]["parts"]]})
        self.windows.load(state["windows"])

    def apply(self, delta: dict) -> None:
        """Continue from a delta capture's state, taken against the state this stage holds."""
        self.dedup.apply(delta["dedup"])
        self.join.apply({**delta["join"], "parts": [snapshot.unpack_part(part) for part in delta["join"]["parts"]]})
        self.windows.load(delta["windows"])

    def close(self) -> None:
        self.join.close()


class StageCapture:
    """A stage's checkpoint being taken: its state as of `PartitionStage.capture`, the join's
    entries (all, or the changed ones for a `delta`) compressed a slice at a time: kept, one
    per `step` (`state` holds them), or handed on as taken (`packed_parts`). Its
    de-duplication ids stay in their table until they are read (`state`, or as
    `snapshot.stream_pieces` encodes what `take_state` hands over)."""

    def __init__(self, head: dict, parts: Iterator[bytes], delta: bool = False, changed: Changes | None = None,
                 position: tuple[int, int] = (0, 0)) -> None:
        self._head, self._parts, self._packed = head, parts, []
        self.delta, self.changed, self.position = delta, changed, position

    def step(self) -> bool:
        """Take one more slice of the join's entries; False once all are taken."""
        part = next(self._unreleased(), None)
        if part is None:
            return False
        self._packed.append(snapshot.pack_part(part))
        return True

    def packed_parts(self) -> Iterator[list]:
        """The join's slices not yet taken, each compressed as it is taken (`snapshot.pack_part`)
        and kept by nobody here: for a checkpoint written as it is taken."""
        while (part := next(self._unreleased(), None)) is not None:
            yield snapshot.pack_part(part)

    def _unreleased(self) -> Iterator[bytes]:
        if self._parts is None:
            raise RuntimeError("the capture was released: its join store may be closed")
        return self._parts

    def release(self) -> None:
        """Let go of the join store's view (before the store closes) and of the state not handed
        over (its held ids are no longer guarded): taking a slice or the state after is an
        error."""
        self._parts, self._head = None, None

    def state(self) -> dict:
        """The checkpoint body, in plain values and arrays (call after `step` returned False,
        before `take_state`)."""
        if self._head is not None:  # the held ids read now, once: kept as arrays from then on
            dedup = self._head["dedup"]
            self._head["dedup"] = {k: v.array() if isinstance(v, HeldColumn) else v for k, v in dedup.items()}
        return self._whole()

    def take_state(self) -> dict:
        """The checkpoint body, handed over: its de-duplication ids still `HeldColumn`s, for
        `snapshot.stream_pieces` to read as it encodes them. The capture keeps none of it, so
        it is freed once the caller lets go of it."""
        state, self._head, self._packed = self._whole(), None, []
        return state

    def _whole(self) -> dict:
        if self._head is None:
            raise RuntimeError("the capture's state was handed over or released")
        return {**self._head, "join": {**self._head["join"], "parts": self._packed}}


class Monitor:
    """Merges partials from all partitions into final windows and evaluates the rules."""

    def __init__(self, config: MonitorConfig, partitions: int = 1, counters: Counter | None = None) -> None:
        self.config = config
        self.version = config.version
        self.counters = counters if counters is not None else Counter()
        self.aggregator = Aggregator(config.windows, config.layout, config.stats, partitions)
        self.rules = TriggerEvaluator(config.triggers, self.version, config.windows.tumbling_s, config.layout,
                                      config.stats, partitions=partitions)
        # (policy_id, segment, open pane) -> input partition -> its latest early snapshot of that pane
        self._early: dict[tuple, dict[int, np.ndarray]] = {}

    def set_thresholds(self, thresholds: dict[tuple[str, str], float]) -> None:
        """The threshold in force per (policy_id, segment), for windows derived from now on
        (keys not in `thresholds` are measured against their decisions' own thresholds)."""
        self.aggregator.thresholds = dict(thresholds)

    def add(self, partition: int, partials: list[Partials]) -> Output:
        out = Output()
        for p in partials:
            if p.early:
                for key, pane, row in zip(p.keys, p.panes, p.rows):
                    self._early.setdefault((*key, int(pane)), {})[partition] = row
            for res in self.aggregator.add(partition, p):
                out.results.append(res)
                if res.kind != "early":
                    out.windows.append(res)
                    self.counters["windows_closed", res.kind] += len(res.keys)
                    for key in res.keys:
                        self._early.pop((*key, res.pane), None)
                for trig in self.evaluate(res):
                    self.counters["triggers", trig["rule"]] += 1
                    out.triggers.append(trig)
        return out

    def early_windows(self) -> list[WindowResult]:
        """Statistics of the tumbling windows still open, as far as they have come: per key and
        pane, the latest early snapshot of each input partition, summed. Not checkpointed: a
        restart shows them again at the next snapshots."""
        if not self._early:
            return []
        items = sorted(self._early.items(), key=lambda item: (item[0][2], item[0][:2]))  # by pane, then key
        keys = [(policy_id, segment) for (policy_id, segment, _), _ in items]
        panes = np.array([pane for (_, _, pane), _ in items])
        rows = np.array([sum(parts.values()) for _, parts in items])
        stats = self.aggregator.derive(rows, keys)
        stats["late_events"] = np.zeros(len(items))
        size = self.config.windows.tumbling_s
        bounds = [*np.flatnonzero(np.diff(panes)) + 1, len(items)]
        return [WindowResult("early", int(panes[a]) * size, (int(panes[a]) + 1) * size, keys[a:b], rows[a:b],
                             {name: col[a:b] for name, col in stats.items()}, int(panes[a]))
                for a, b in zip([0, *bounds[:-1]], bounds)]

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


def warm_up(config: MonitorConfig, state_dir: str | None = None) -> None:
    """Take three events through every operator, to the end of their windows and the rules.

    Numba loads its compiled kernels, and scipy its special functions, on first use: about
    half a second that a worker spends here, at start, instead of inside its first batch.
    Its join store is a temporary directory under `state_dir` (default: the system's).
    """
    t = 1_000_000_000.0
    later = t + config.windows.hopping_s + config.windows.grace_s + config.windows.tumbling_s
    score = dict(v=1, scenario_id="warm-up", policy_id="warm-up", score=0.9, tau=0.5, decision="act")
    events = [ScoreEvent(event_id="s1", ts=t, **score),
              FeedbackEvent(v=1, event_id="f1", scenario_id="warm-up", ts=t + 1.0, kind="override"),
              ScoreEvent(event_id="s2", ts=later, **score)]
    with tempfile.TemporaryDirectory(prefix="npo-warm-up-", dir=state_dir) as path:
        stage, monitor = PartitionStage(config, join_path=path), Monitor(config)
        try:
            monitor.add(0, stage.process([codec.encode_envelope(events)], now=later).partials)
            monitor.add(0, stage.drain().partials)
            MixtureSR(0.5, 1.0).peek([(0.5, 1.0)])  # the rules' mid-window look, which these events do not reach
            scenario_index.warm_up()  # the join's index kernels these events do not reach (growth, expiry)
            label_states.warm_up()  # and its label states'
            msgpack_scan.warm_up()  # and the slow path of columnar envelopes
        finally:
            stage.close()
