"""Load-test tool, pure logic: pacing, traffic shape, partitioning, envelopes, latency attribution, JSON keys."""
from __future__ import annotations

import math
import random
from collections import Counter

import orjson
import pytest

from loadtest.bench import REQUIRED_KEYS, Phase, check_result, median_phase, pick_raw, trigger_latencies
from loadtest.generator import GenConfig, RateLimiter, as_columnar
from loadtest.traffic import FEEDBACK, SCORE, Traffic, envelopes, partitions_of
from streams import codec
from streams.kafka.producer import partition_for
from streams.simulate.scenarios import scenario_names


@pytest.fixture(scope="module")
def traffic():
    return Traffic(seed=3, n_windows=6, decisions_per_window=60, key_spread=3)


def test_rate_limiter_paces_and_caps_bursts():
    r = RateLimiter(1000.0, start=100.0, max_burst=50)
    assert r.due(100.0, 0) == 0
    assert r.due(100.01, 0) == 10
    assert r.due(100.01, 10) == 0
    assert r.due(105.0, 0) == 50  # far behind: catch up in bounded bursts
    assert r.wait(100.0, 9) == pytest.approx(0.01)
    assert r.due_time(500) == pytest.approx(100.5)
    flat = RateLimiter(None, start=0.0, max_burst=7)
    assert flat.due(0.0, 10**9) == 7 and flat.wait(0.0, 5) == 0.0
    with pytest.raises(ValueError):
        RateLimiter(0.0, start=0.0)


def test_gen_config_needs_an_end():
    with pytest.raises(ValueError):
        GenConfig()
    with pytest.raises(ValueError):
        GenConfig(max_events=10, processes=0)
    assert GenConfig(duration_s=1.0).envelope and GenConfig(duration_s=1.0).envelope_format == "columnar"
    with pytest.raises(ValueError, match="envelope_format"):
        GenConfig(max_events=10, envelope_format="avro")


def test_numba_partitioner_matches_kafka_murmur2():
    rng = random.Random(5)
    keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 50))) for _ in range(2000)]
    keys += [f"stationary-7-{i:04d}-00001~000012".encode() for i in range(200)]
    for n in (1, 3, 4, 12):
        assert partitions_of(keys, n).tolist() == [partition_for(k, n) for k in keys]


def test_chunks_are_valid_realistic_events(traffic):
    chunk = traffic.chunk(2, 4)
    events = [orjson.loads(chunk.value(i)) for i in range(len(chunk))]
    for i in range(0, len(chunk), 7):
        assert codec.decode(chunk.value(i)).errors == []
        assert chunk.key(i) == events[i]["scenario_id"].encode()
        assert chunk.partition[i] == partition_for(chunk.key(i), 4)
        assert events[i]["ts"] == pytest.approx(chunk.ts[i], abs=1e-3)
    kinds = Counter(e.get("kind") for e in events if e["type"] == "feedback")
    assert set(kinds) == {"like", "override", "abstain"}
    assert {e["source"] for e in events if e["type"] == "feedback"} >= {"human", "reviewer"}
    assert len({(e["policy_id"], e["segment"]) for e in events if e["type"] == "score"}) == len(scenario_names()) * 3
    roles = chunk.role.tolist()
    assert roles.count(SCORE) and roles.count(FEEDBACK)
    assert sum(1 for e in events if e["type"] == "feedback" and "policy_id" not in e) > 0  # needs the join
    ids = Counter(e["event_id"] for e in events)
    assert any(n > 1 for n in ids.values())  # duplicates, as the simulator sends them
    behind = [max(chunk.ts[:i + 1]) - chunk.ts[i] for i in range(len(chunk))]
    assert max(behind) > 120  # some events arrive after their window's grace


def test_cycles_move_time_and_never_reuse_ids(traffic):
    a, b = traffic.chunk(5, 4), traffic.chunk(6, 4)
    ids_a = {orjson.loads(a.value(i))["event_id"] for i in range(len(a))}
    ids_b = {orjson.loads(b.value(i))["event_id"] for i in range(len(b))}
    assert not ids_a & ids_b
    assert b.ts.min() > a.ts.min() + 0.5 * traffic.span
    assert len(traffic.chunk(0, 4)) <= len(a)  # cycle 0 has no feedback carried from earlier cycles
    # a scenario's score and feedback share a partition, whatever cycle carried them
    by_sid: dict = {}
    for c in (a, b):
        for i in range(len(c)):
            by_sid.setdefault(c.key(i), set()).add(int(c.partition[i]))
    assert all(len(p) == 1 for p in by_sid.values())


def test_envelopes_keep_order_and_every_event(traffic):
    chunk = traffic.chunk(1, 4)
    seen = []
    for role, part, value, n, max_ts in envelopes(chunk, 0, len(chunk), 40):
        decoded = codec.decode(value)
        assert decoded.errors == [] and len(decoded.events) == n <= 40
        assert codec.decode(as_columnar(value)) == decoded  # what the generator sends by default
        assert {type(e).__name__ for e in decoded.events} == {"ScoreEvent" if role == SCORE else "FeedbackEvent"}
        assert {partition_for(e.scenario_id.encode(), 4) for e in decoded.events} == {part}
        assert max(e.ts for e in decoded.events) == pytest.approx(max_ts, abs=1e-3)
        seen += [(role, part, e.event_id) for e in decoded.events]
    assert len(seen) == len(chunk)
    original = [orjson.loads(chunk.value(i))["event_id"] for i in range(len(chunk))]
    for key in {(r, p) for r, p, _ in seen}:
        group = [eid for r, p, eid in seen if (r, p) == key]
        expected = [eid for i, eid in enumerate(original)
                    if (chunk.role[i], chunk.partition[i]) == key]
        assert group == expected  # per topic-partition order is the traffic's order


def test_trigger_latency_is_from_the_last_partition_to_pass_the_window():
    grace = 120.0
    timeline = [(10.0, 0, 1000.0), (10.0, 1, 1000.0), (11.0, 0, 1425.0), (12.0, 1, 1419.0), (13.0, 1, 1421.0)]
    trig = {"rule": "retrain", "window": {"start": 1000.0, "end": 1300.0}}
    # partition 0 passes 1300 + 120 at 11.0, partition 1 at 13.0: the trigger is caused at 13.0
    assert trigger_latencies(timeline, [(13.25, trig)], grace) == [(13.25, pytest.approx(0.25), "retrain")]
    # a coverage alarm names an older decision pane; it fired when the later window closed
    coverage = {"rule": "monitor_degraded", "window": {"start": 400.0, "end": 700.0},
                "evidence": {"evaluated_end": 1300.0}}
    assert trigger_latencies(timeline, [(13.5, coverage)], grace) == [(13.5, pytest.approx(0.5), "monitor_degraded")]
    never = {"rule": "rollback", "window": {"start": 1500.0, "end": 1800.0}}
    assert trigger_latencies(timeline, [(20.0, never)], grace) == []


def test_result_check_names_missing_and_bad_values():
    good = {k: 1.0 for k in REQUIRED_KEYS}
    good["peak_rss_mb"] = {"raw_aiokafka": 60.0, "two_workers": [200.0, 210.0]}
    good["raw_client"] = "confluent"
    assert check_result(good) == []
    bad = dict(good, raw_events_per_s=math.nan, peer_events_per_s=0, peak_rss_mb={"raw_aiokafka": -1},
               raw_client=None)
    del bad["p99_trigger_latency_ms"]
    assert set(check_result(bad)) == {"raw_events_per_s", "peer_events_per_s", "peak_rss_mb",
                                      "p99_trigger_latency_ms", "raw_client"}


def test_raw_baseline_is_the_faster_plain_consumer():
    result = {"raw_aiokafka_events_per_s": 400_000, "raw_aiokafka_runs_events_per_s": [390_000, 400_000, 410_000],
              "raw_confluent_events_per_s": 520_000, "raw_confluent_runs_events_per_s": [500_000, 520_000, 560_000]}
    pick_raw(result)
    assert result["raw_client"] == "confluent" and result["raw_events_per_s"] == 520_000
    assert result["raw_runs_events_per_s"] == [500_000, 520_000, 560_000]
    # a client that could not be measured (None: no productive fetch) never wins
    result = {"raw_aiokafka_events_per_s": 300_000, "raw_aiokafka_runs_events_per_s": [300_000],
              "raw_confluent_events_per_s": None, "raw_confluent_runs_events_per_s": [None]}
    pick_raw(result)
    assert result["raw_client"] == "aiokafka" and result["raw_events_per_s"] == 300_000
    result = {"raw_aiokafka_events_per_s": None, "raw_confluent_events_per_s": None}
    pick_raw(result)
    assert result["raw_client"] is None and result["raw_events_per_s"] is None
    assert check_result(result)  # reported as missing, not as a baseline of None


def _phase(*runs: tuple[int, float, float, int]) -> Phase:
    ph = Phase("x")
    ph.summaries = [{"events": n, "first": first, "end": end, "bytes": size} for n, first, end, size in runs]
    return ph


def test_median_phase_and_byte_rate():
    slow, mid, fast = _phase((100, 9.0, 13.0, 4000)), _phase((100, 9.0, 11.0, 4000)), _phase((100, 9.0, 10.0, 4000))
    broken = _phase((0, None, None, 0))  # no productive fetch: its rate is NaN, ranked lowest
    assert median_phase([fast, slow, mid]) is mid
    assert median_phase([broken, fast, mid]) is mid
    assert median_phase([slow, fast]) is fast  # the upper middle of an even number
    assert mid.rate() == 50 and mid.byte_rate() == 2000
    two = _phase((60, 10.0, 12.0, 600), (40, 11.0, 14.0, 400))  # from the first start to the last end
    assert two.rate() == 25 and two.byte_rate() == 250


class _Msg:
    def __init__(self, topic, partition, value, error=None):
        self._t, self._p, self._v, self._e = topic, partition, value, error

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def value(self):
        return self._v

    def error(self):
        return self._e


def test_confluent_messages_are_grouped_per_topic_partition_in_fetch_order():
    from loadtest.procs import by_partition

    msgs = [_Msg("s", 0, b"a"), _Msg("f", 0, b"b"), _Msg("s", 1, b"c"), _Msg("s", 0, b"d"),
            _Msg("s", 0, None, error="broker down"), _Msg("f", 0, b"e")]
    batches, errors = by_partition(msgs)
    assert batches == {("s", 0): [b"a", b"d"], ("f", 0): [b"b", b"e"], ("s", 1): [b"c"]}
    assert errors == 1
    assert list(batches) == [("s", 0), ("f", 0), ("s", 1)]
    assert by_partition([]) == ({}, 0)


def test_consumer_comparison_figures_table_and_flags():
    from loadtest import consumers

    runs = [_phase((1000, 5.0, 6.0, 250_000)), _phase((1000, 5.0, 5.5, 250_000)), _phase((1000, 5.0, 7.0, 250_000))]
    fig = consumers.client_figures(runs)
    assert fig["events_per_s"] == 1000 and fig["runs_events_per_s"] == [1000, 2000, 500]
    assert fig["mb_per_s"] == round(250_000 / 2**20, 1) and fig["bytes"] == 250_000
    kind = {"aiokafka": {"events_per_s": 400_000}, "confluent": {"events_per_s": 500_000}}
    assert consumers.ratio(kind) == 1.25
    assert consumers.ratio({"aiokafka": {"events_per_s": None}, "confluent": {"events_per_s": 1}}) is None
    result = {"events": 1000, "partitions": 4, "runs": 3, "records": 20_000,
              "single": {"aiokafka": fig, "confluent": fig, "confluent_vs_aiokafka": 1.0}}
    text = consumers.table(result)
    assert "single    aiokafka" in text and "1,000, 2,000, 500" in text and "confluent/aiokafka" in text
    assert "envelope" not in text
    a = consumers.build_parser().parse_args(["--events", "1000", "--kinds", "single", "--confluent",
                                             "fetch.wait.max.ms=10", "--aiokafka", "check_crcs=false",
                                             "--confluent", "client.id=x=y", "--records", "500"])
    assert a.events == 1000 and a.kinds == ["single"] and a.records == 500
    assert dict(a.confluent) == {"fetch.wait.max.ms": 10, "client.id": "x=y"}
    assert dict(a.aiokafka) == {"check_crcs": False}
    with pytest.raises(SystemExit):
        consumers.build_parser().parse_args(["--confluent", "novalue"])
    with pytest.raises(ValueError, match="runs must be at least 1"):
        consumers.compare(None, 1000, runs=0)


def test_cli_registers_the_commands():
    from streams.cli import build_parser

    p = build_parser()
    a = p.parse_args(["bench", "pipeline", "--events", "1000", "--json", "--no-peer"])
    assert a.events == 1000 and a.json and a.no_peer and callable(a.run)
    a = p.parse_args(["loadtest", "--rate", "5000", "--duration", "3", "--single", "--processes", "2"])
    assert a.rate == 5000 and a.single and a.processes == 2 and not a.soak
    a = p.parse_args(["loadtest", "--soak", "--duration", "5", "--warmup-pending", "100"])
    assert a.soak and a.warmup_pending == 100


def test_soak_warm_up_covers_the_join_target_and_both_horizons():
    from loadtest.soak import warmup_events
    from loadtest.traffic import SCORE, Traffic
    from streams.config import MonitorConfig

    traffic = Traffic.cached()
    per_event_second = len(traffic) / traffic.span
    config = MonitorConfig()
    horizon_events = config.dedup_horizon_s * per_event_second
    assert warmup_events(traffic, 1000, 4, config) >= horizon_events  # the horizon dominates a small join
    assert warmup_events(traffic, 1000, 4, None) < horizon_events / 100  # without it: the join's share only
    scores = (traffic.role == SCORE).mean()
    assert warmup_events(traffic, 10**7, 4, None) >= 10**7 / scores
    capped = MonitorConfig(dedup_max_ids=1000, join_horizon_s=1.0)
    assert warmup_events(traffic, 0, 4, capped) == int(4000 * 1.05)  # the cap fills first
    long_join = MonitorConfig(join_horizon_s=7 * 86_400.0)
    assert warmup_events(traffic, 1000, 4, long_join) >= 7 * horizon_events  # the join's horizon is longer


def test_soak_flags_set_the_join_horizon_and_bad_values_fail_clearly(capsys):
    from streams.cli import build_parser, main

    a = build_parser().parse_args(["loadtest", "--soak", "--join-horizon-hours", "2", "--no-horizon-fill"])
    assert a.join_horizon_hours == 2 and a.no_horizon_fill
    assert main(["loadtest", "--soak", "--join-horizon-hours", "0", "--no-progress"]) == 2
    assert "horizons must be > 0" in capsys.readouterr().err


def test_bench_profile_without_py_spy_fails_instead_of_recording_nothing(tmp_path, monkeypatch, capsys):
    from streams.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no py-spy here
    monkeypatch.delenv("NPO_LOADTEST_PROFILE", raising=False)
    assert main(["bench", "pipeline", "--events", "1000", "--profile", str(tmp_path / "prof")]) == 2
    assert "needs py-spy" in capsys.readouterr().err
    assert "NPO_LOADTEST_PROFILE" not in __import__("os").environ


@pytest.mark.parametrize("flags", [["--events", "0"], ["--raw-runs", "0"], ["--latency-seconds", "0"],
                                   ["--latency-rate", "-5"], ["--timeout", "0"], ["--partitions", "0"]])
def test_bench_refuses_settings_it_cannot_measure_with_a_clear_error(flags, capsys):
    from streams.cli import main

    assert main(["bench", "pipeline", *flags]) == 2
    err = capsys.readouterr().err
    assert "npo bench pipeline:" in err and "must be" in err


def test_capacity_sizes_a_bus_from_the_measured_rates_and_says_what_it_needs():
    from loadtest.capacity import capacity, main, table

    bench = {"envelope_events_per_s": 100_000, "single_events_per_s": 60_000, "two_workers_events_per_s": 108_000}
    plan = capacity(bench)
    assert plan["scaling"] == 0.9  # 108k from two against 2 x 60k
    rows = {(r["shape"], r["bus_events_per_s"]): r for r in plan["rows"]}
    env = rows[("envelopes", 1_000_000)]
    assert env["per_worker_events_per_s"] == 45_000 and env["workers"] == 23 and env["input_partitions"] == 46
    assert rows[("single events", 10_000_000)]["workers"] == 371  # 10M / (60k x 0.9 x 0.5) = 370.4
    assert capacity({**bench, "two_workers_events_per_s": 150_000})["scaling"] == 1.0  # never above linear
    assert "| envelopes | 1,000,000 | 45,000 | 23 | 46 |" in table(plan)
    with pytest.raises(ValueError, match="two_workers_events_per_s"):
        capacity({"envelope_events_per_s": 1, "single_events_per_s": 1})
    with pytest.raises(ValueError, match="utilisation"):
        capacity(bench, utilisation=0.0)
    with pytest.raises(SystemExit):
        main([__file__])  # not a bench result: a clear error, not a traceback


def test_soak_reports_each_role_s_checkpoints_and_their_mean_size_of_all_and_of_deltas():
    from loadtest.soak import checkpoint_sizes

    assert checkpoint_sizes({"checkpoints|ingest": 4, "checkpoint_bytes|ingest": 4_000_002, "checkpoints|aggregate": 0,
                             "checkpoint_deltas|ingest": 3, "checkpoint_delta_bytes|ingest": 900_000,
                             "checkpoint_bytes_copied_aside": 48}) \
        == {"ingest_checkpoint_bytes_copied_aside": 48,
            "ingest_checkpoints": 4, "ingest_checkpoint_deltas": 3, "ingest_checkpoint_bytes_mean": 1_000_000,
            "ingest_checkpoint_delta_bytes_mean": 300_000, "aggregate_checkpoints": 0,
            "aggregate_checkpoint_deltas": 0, "aggregate_checkpoint_bytes_mean": None,
            "aggregate_checkpoint_delta_bytes_mean": None}


def test_soak_reports_the_checkpoints_of_its_constant_phase_alone():
    from loadtest.soak import steady_checkpoints

    # (time, then so far: checkpoints, their bytes, deltas, their bytes)
    samples = [(1.0, 2, 200, 1, 50), (9.0, 3, 400, 2, 100), (11.0, 4, 1_400, 2, 100), (15.0, 6, 3_400, 4, 700),
               (30.0, 7, 4_400, 4, 700)]
    # constant phase 10..20: from the last sample before it (3 checkpoints, 400 bytes; 2 deltas, 100 bytes)
    # to 6, 3,400 and 4, 700: 3 checkpoints of 1,000 bytes on average, 2 of them deltas of 300
    assert steady_checkpoints(samples, 10.0, 20.0) == {
        "ingest_checkpoints_in_soak": 3, "ingest_checkpoint_bytes_in_soak_mean": 1_000,
        "ingest_checkpoint_deltas_in_soak": 2, "ingest_checkpoint_delta_bytes_in_soak_mean": 300}
    assert steady_checkpoints(samples, 40.0, 50.0)["ingest_checkpoint_bytes_in_soak_mean"] is None
    assert steady_checkpoints([(11.0, 4, 1_400, 0, 0)], 10.0, 20.0)["ingest_checkpoints_in_soak"] == 0
    assert steady_checkpoints(samples[:3], 10.0, 20.0)["ingest_checkpoint_delta_bytes_in_soak_mean"] is None
