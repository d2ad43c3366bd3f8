"""`npo demo`, `npo replay`, `npo validate` and `npo bench kernels`, as a user runs them."""
from __future__ import annotations

import json
import subprocess
import sys

import msgspec
import orjson
import pytest

import schemas
from streams.demo.demo import run_demo
from streams.demo.evaluate import score_run
from streams.events import TriggerEvent
from streams.simulate import SimConfig

SMALL = SimConfig(seed=11, n_windows=96, decisions_per_window=150)


@pytest.fixture(scope="module")
def demo_dirs(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("demo-a"), tmp_path_factory.mktemp("demo-b")
    run_demo(seed=11, out=a, sim=SMALL, progress=False)
    run_demo(seed=11, out=b, sim=SMALL, progress=False)
    return a, b


def test_demo_writes_every_output_and_is_deterministic(demo_dirs):
    a, b = demo_dirs
    for name in ("triggers.jsonl", "windows.csv", "dead_letters.jsonl", "summary.json", "report.html"):
        assert (a / name).is_file(), name
    assert (a / "triggers.jsonl").read_bytes() == (b / "triggers.jsonl").read_bytes()
    assert (a / "windows.csv").read_bytes() == (b / "windows.csv").read_bytes()
    first, second = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for part in ("headline", "loop", "ablation", "ablation_findings", "validation"):
        assert first[part] == second[part], part  # the closed loop and its ablations too


def test_demo_triggers_follow_the_trigger_schema_and_the_report_has_its_parts(demo_dirs):
    a, _ = demo_dirs
    validator = schemas.validator("trigger")
    lines = (a / "triggers.jsonl").read_bytes().splitlines()
    assert lines
    strict = msgspec.json.Decoder(TriggerEvent)
    for line in lines:
        validator.validate(orjson.loads(line))
        strict.decode(line)  # what a consumer's typed decoder accepts, not just the schema
    summary = json.loads((a / "summary.json").read_text())
    variants = [row["variant"] for row in summary["ablation"]]
    assert variants[0] == "open loop (nothing acts)" and len(variants) == 8 and "naive retrain rule" in variants
    assert [row["n"] for row in summary["convergence"]][:3] == [10, 20, 50]
    html = (a / "report.html").read_text()
    for variant in variants:
        assert variant in html
    head = summary["headline"]
    horizon = len(SMALL.scenarios) * SMALL.n_windows  # windows with labels inside it (a drought may have none)
    assert 0.95 * horizon < head["windows_scored"] <= horizon
    for name in ("fidelity", "fidelity_never_alarm", "fidelity_per_window"):
        assert 0.0 <= head[name] <= 1.0
    assert "never alarm" in html and "per-window rule" in html and "phi_min" not in html
    biased = next(r for r in summary["by_scenario"] if r["scenario"] == "biased_channel")
    assert "monitor_degraded" in biased["expected"] and biased["audit_pairs_b"] > biased["audit_pairs_c"]
    assert "<h2>Closing the loop</h2>" in html and "<h2>Ablation (closed loop)</h2>" in html
    for png in ("loss.png", "fidelity.png", "convergence.png", "loop.png"):
        assert (a / png).read_bytes()[:4] == b"\x89PNG"


def test_fidelity_is_scored_inside_the_horizon_beside_both_baselines():
    """T = 1[L > budget] per window; windows ending after `end` (the drain) are not scored."""
    def row(pane, alarmed, p_exceed):
        return {"kind": "tumbling", "policy_id": "p", "segment": "s", "start": pane * 300.0,
                "end": (pane + 1) * 300.0, "coverage": 0.3, "alarmed": alarmed, "p_exceed": p_exceed}

    truth = {("p", "s", 0): 0.05, ("p", "s", 1): 0.05, ("p", "s", 2): 0.2, ("p", "s", 3): 0.2, ("p", "s", 4): 0.05}
    windows = [row(0, 0.0, 0.1), row(1, 0.0, 0.97), row(2, 0.0, 0.99), row(3, 1.0, 0.6),
               row(4, 1.0, 0.99)]  # pane 4 ends after the horizon: its (wrong) D does not count
    got = score_run(windows, [], truth, 0.10, 300.0, end=4 * 300.0, p_fire=0.95)
    assert got["windows_scored"] == 4
    assert got["fidelity"] == 3 / 4  # wrong only at pane 2, before the alarm
    assert got["fidelity_never_alarm"] == 2 / 4
    assert got["fidelity_per_window"] == 2 / 4  # wrong at panes 1 (false) and 3 (missed)
    assert got["fidelity_by_key"]["p/s"] == {"windows": 4, "monitor": 0.75, "never_alarm": 0.5, "per_window": 0.5}


def _npo(*args, cwd):
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_replay_and_validate_on_a_users_log(tmp_path):
    from streams.simulate import simulate

    events = simulate(SimConfig(seed=2, n_windows=24, decisions_per_window=60)).events
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    done = _npo("validate", str(log), cwd=tmp_path)
    assert done.returncode == 0 and "ok" in done.stdout
    done = _npo("replay", str(log), "--out", "out", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "report.html").is_file()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counters"]["events_in/score"] == sum(e["type"] == "score" for e in events)

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"type":"score","v":1}\nnot json\n')
    done = _npo("validate", str(bad), cwd=tmp_path)
    assert done.returncode == 1
    assert "bad.jsonl:1: schema" in done.stdout and "bad.jsonl:2: not_json" in done.stdout
    assert _npo("replay", "missing.jsonl", cwd=tmp_path).returncode == 2


def test_bench_kernels_prints_one_json_object_with_both_rates(tmp_path):
    done = _npo("bench", "kernels", "--json", "--events", "200000", "--keys", "2000", "--repeats", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["events"] == 200000
    assert result["events_per_s"] > 0 and result["baseline_events_per_s"] > 0
