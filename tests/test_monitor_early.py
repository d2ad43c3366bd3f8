"""The monitor's early results and thresholds: open windows as far as they have come, summed
over input partitions, and statistics measured against the threshold set for a key."""
from __future__ import annotations

import numpy as np
import orjson

from streams.config import MonitorConfig
from streams.operators.windows import WindowSpec
from streams.pipeline import Monitor, PartitionStage

T0 = 1_767_225_600.0
CONFIG = MonitorConfig(windows=WindowSpec(tumbling_s=300.0, hopping_s=900.0, advance_s=300.0, grace_s=0.0,
                                          early_s=60.0))


def _events(partition: int, n: int, t0: float = T0, step: float = 20.0) -> list[bytes]:
    out = []
    for i in range(n):
        sid = f"c{partition}-{i}"
        ts = t0 + step * i + partition
        out.append(orjson.dumps({"type": "score", "v": 1, "event_id": "s" + sid, "scenario_id": sid,
                                 "policy_id": "p", "segment": "s", "score": 0.7, "tau": 0.5, "decision": "act",
                                 "ts": ts}))
        if i % 3 == 0:
            out.append(orjson.dumps({"type": "feedback", "v": 1, "event_id": "f" + sid, "scenario_id": sid,
                                     "ts": ts + 1.0, "kind": "override"}))
    return out


def test_early_windows_sum_each_partition_s_latest_snapshot_and_go_once_the_pane_is_final():
    stages = [PartitionStage(CONFIG, partition=p) for p in (0, 1)]
    monitor = Monitor(CONFIG, partitions=2)
    try:
        latest = {}
        for p, stage in enumerate(stages):  # 12 events 20 s apart: pane 0 open, with early ticks inside it
            parts = stage.process(_events(p, 12), now=0.0).partials
            snapshots = [part.rows[0] for part in parts if part.early]
            assert len(snapshots) >= 2
            latest[p] = snapshots[-1]
            assert not monitor.add(p, parts).windows
        early = monitor.early_windows()
        assert [(r.kind, r.start, r.keys) for r in early] == [("early", T0, [("p", "s")])]
        row = early[0].rows[0]
        assert np.array_equal(row, latest[0] + latest[1])
        assert row[0] > 0 and early[0].stats["n_decisions"][0] == row[:3].sum()
        # the rest of pane 0, and events of the next panes, close it everywhere
        final = []
        for p, stage in enumerate(stages):
            out = monitor.add(p, stage.process(_events(p, 30, t0=T0 + 240.0), now=0.0).partials)
            final += [r for r in out.windows if r.kind == "tumbling" and r.start == T0]
        assert len(final) == 1
        assert final[0].rows[0][0] >= row[0]  # the final window holds at least what the early one showed
        assert all(r.start > T0 for r in monitor.early_windows())  # pane 0 is no longer early
    finally:
        for stage in stages:
            stage.close()


def test_early_and_final_windows_measure_against_the_threshold_set_for_their_key():
    stage, monitor = PartitionStage(CONFIG), Monitor(CONFIG)
    try:
        monitor.add(0, stage.process(_events(0, 12), now=0.0).partials)
        assert monitor.early_windows()[0].stats["tau"][0] == 0.5  # the decisions' own threshold
        monitor.set_thresholds({("p", "s"): 0.8, ("other", "s"): 0.1})
        assert monitor.early_windows()[0].stats["tau"][0] == 0.8
        out = monitor.add(0, stage.process(_events(0, 40, t0=T0 + 240.0), now=0.0).partials)
        tumbling = [r for r in out.windows if r.kind == "tumbling"]
        assert tumbling and all(np.all(r.stats["tau"] == 0.8) for r in tumbling)
        monitor.set_thresholds({})
        out = monitor.add(0, stage.drain().partials)
        assert all(np.all(r.stats["tau"] == 0.5) for r in out.windows if r.kind == "tumbling")
    finally:
        stage.close()


def test_a_rollback_fired_mid_window_carries_the_statistics_of_the_snapshot_it_fired_on():
    """The rules' mid-window look reads each input partition's early snapshot as it comes. When
    it fires a rollback (every decision of the open pane overridden), the trigger's evidence is
    the statistics of that snapshot, derived from its rows only then, and equal to deriving them
    directly."""
    from kernels.derive import derive
    from streams.pipeline import InProcessPipeline

    config = MonitorConfig(windows=WindowSpec(tumbling_s=300.0, hopping_s=900.0, advance_s=300.0, grace_s=0.0,
                                              early_s=30.0))
    events = []
    for i in range(280):  # all inside pane 0: only early snapshots, no final window
        sid, ts = f"c{i}", T0 + i
        events.append(orjson.dumps({"type": "score", "v": 1, "event_id": "s" + sid, "scenario_id": sid,
                                    "policy_id": "p", "segment": "s", "score": 0.7, "tau": 0.5, "decision": "act",
                                    "ts": ts}))
        events.append(orjson.dumps({"type": "feedback", "v": 1, "event_id": "f" + sid, "scenario_id": sid,
                                    "ts": ts + 0.5, "kind": "override"}))
    pipe = InProcessPipeline(config)
    try:
        out = pipe.process(events, now=0.0)
    finally:
        pipe.close()
    assert not out.windows
    (rollback,) = [t for t in out.triggers if t["rule"] == "rollback"]
    evidence = rollback["evidence"]
    snapshots = [r for r in out.results if r.kind == "early"]
    direct = [derive(r.rows, config.layout, config.stats) for r in snapshots]
    fired_on = [s for s in direct if s["n_decisions"][0] == evidence["n_decisions"]]
    assert len(fired_on) == 1 and evidence["n_decisions"] > 0
    for name in ("n_feedback", "n_labels", "loss", "loss_lo", "loss_hi", "tau", "coverage"):
        assert evidence[name] == float(fired_on[0][name][0]), name
