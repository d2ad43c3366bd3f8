"""An input partition that receives nothing holds no window open once it has said it is idle:
the other partitions' event time closes windows, and what the idle one later sends for panes
already final counts as late, in the cumulative view only."""
from __future__ import annotations

import numpy as np
import pytest

from streams.config import MonitorConfig
from streams.demo.runner import encode_messages, run_partitioned
from streams.operators.windows import Partials
from streams.pipeline import Monitor, PartitionStage
from streams.simulate import SimConfig, simulate

CONFIG = MonitorConfig()


def _idle_note() -> Partials:
    return Partials.empty(CONFIG.layout.width, 0, idle=True)


def _final(results) -> dict:
    """Final windows (cumulative views with their late-event counts as of their pane: not as of
    the call that finalised them, which differs with how far one call advances)."""
    return {(r.kind, r.start, r.end, k): (row.tolist(), float(late))
            for r in results if r.kind in ("tumbling", "hopping", "cumulative")
            for k, row, late in zip(r.keys, r.rows, r.stats["late_events"])}


def test_windows_close_on_the_busy_partition_while_the_other_is_idle_and_its_late_rows_are_late():
    run = simulate(SimConfig(seed=17, n_windows=60, decisions_per_window=150, scenarios=("stationary", "step_drift")))
    messages = encode_messages(run.events, 100)
    reference = run_partitioned([messages], CONFIG)  # one partition: the busy one alone

    monitor = Monitor(CONFIG, partitions=2)
    stage = PartitionStage(CONFIG, partition=0)
    got = []
    try:
        assert monitor.add(1, [_idle_note()]).results == []  # nothing from partition 0 yet
        for i in range(0, len(messages), 7):
            for part in stage.process(messages[i:i + 7], first_offset=i, now=0.0).partials:
                got += monitor.add(0, [part]).results
        for part in stage.drain().partials:
            got += monitor.add(0, [part]).results
    finally:
        stage.close()
    want = _final(reference.results)
    assert len(want) > 50 and _final(got) == want
    assert not [r for r in got if r.kind == "tumbling" and r.stats["late_events"].any()]

    # partition 1 wakes with a score for a pane long final: late, and no longer idle
    late = Partials([("policy-x", "seg")], np.array([3]), CONFIG.layout.zeros(1), closed_through=4)
    late.rows[0, 0] = 1.0
    after = monitor.add(1, [late]).results
    assert monitor.aggregator.idle == set()
    assert all(r.kind != "tumbling" for r in after)
    assert monitor.aggregator.late_events[monitor.aggregator.keys.ids[("policy-x", "seg")]] == 1.0


def test_without_the_note_the_silent_partition_holds_every_window():
    monitor = Monitor(CONFIG, partitions=2)
    stage = PartitionStage(CONFIG, partition=0)
    run = simulate(SimConfig(seed=5, n_windows=6, decisions_per_window=50, scenarios=("stationary",)))
    try:
        out = [r for part in stage.process(encode_messages(run.events, 100), now=0.0).partials
               for r in monitor.add(0, [part]).results]
    finally:
        stage.close()
    assert not [r for r in out if r.kind != "early"] and monitor.aggregator.final_through is None
    assert [r.kind for r in monitor.add(1, [_idle_note()]).results].count("tumbling") > 0


@pytest.mark.parametrize("version", [1, 2])
def test_an_idleness_note_travels_unnumbered_and_a_note_with_rows_is_refused(version):
    from streams.worker import partials as codec
    width = CONFIG.layout.width
    p, seq, (got,) = codec.decode(codec.idleness_note(3, width, version), width)
    assert (p, seq, got.idle, len(got.keys)) == (3, 0, True, 0)
    bad = Partials([("a", "b")], np.array([1]), CONFIG.layout.zeros(1), closed_through=2, idle=True)
    unit = (bad, np.array([0]), 2)
    with pytest.raises(ValueError, match="idleness note"):
        codec.decode(codec.encode([unit], 3, 0, width, version), width)
