"""report.html and its PNGs, from small synthetic inputs: demo-shaped and replay-shaped summaries."""
from __future__ import annotations

import math

import numpy as np
import pytest

from streams.config import MonitorConfig
from streams.demo.report import write_report

T0 = 1767225600.0
PANE = 300.0
EVIL_POLICY = "<script>alert('x')</script>$a$"
KEYS = [("policy-a", "seg-1"), (EVIL_POLICY, "seg-&-2")]
SECTIONS = ["Run", "Headline", "Sequential alarm rules", "Plots", "Triggers", "Counters"]
PNGS = ["loss.png", "fidelity.png", "coverage.png"]


def _windows(truth: bool, n: int = 30) -> list[dict]:
    """Tumbling rows for two keys (the second drifts over budget halfway), plus a hopping row per key.

    The last five tumbling windows carry late feedback only (no decisions), as in the demo.
    """
    rng = np.random.default_rng(0)
    rows = []
    for k, (policy, segment) in enumerate(KEYS):
        for i in range(n):
            true = 0.05 if (k == 0 or i < n // 2) else 0.2
            loss = float(np.clip(true + rng.normal(0, 0.02), 0, 1))
            row = {"policy_id": policy, "segment": segment, "kind": "tumbling", "start": T0 + i * PANE,
                   "end": T0 + (i + 1) * PANE, "n_decisions": 0.0 if i >= n - 5 else 400.0,
                   "n_labels": 100.0, "loss": loss, "loss_lo": max(loss - 0.04, 0.0), "loss_hi": loss + 0.04,
                   "p_exceed": float(loss > 0.1), "coverage": 0.3 if i < n - 5 else math.nan,
                   "abstention_rate": 0.05, "alarmed": float(k == 1 and i > n // 2 + 2),
                   "phi": 0.5 + 0.5 * i / n, "tau": 0.5, "tau_star": 0.5, "cost_saved": 0.0,
                   "audit_loss": math.nan}
            if i == 3:
                row["loss"] = math.nan  # NaNs must not break the plots
            if truth:
                row["true_loss"] = true
            rows.append(row)
        if k == 0:
            del rows[-12]  # a missing window: the line must break, not bridge it
        rows.append({"policy_id": policy, "segment": segment, "kind": "hopping", "start": T0,
                     "end": T0 + 3600.0, "loss": 0.1, "coverage": 0.3})
    return rows


def _trigger(rule: str, key: tuple[str, str], pane: int, kind: str = "tumbling", reason: str = "because") -> dict:
    start, end = T0 + pane * PANE, T0 + (pane + (12 if kind == "hopping" else 1)) * PANE
    return {"type": "trigger", "v": 1, "trigger_id": f"{rule}-{pane}", "rule": rule, "reason": reason,
            "policy_id": key[0], "segment": key[1], "window": {"kind": kind, "start": start, "end": end},
            "evidence": {"p_exceed": 0.99, "loss": 0.21, "n_labels": 100.0}, "config_version": "cfg-test",
            "emitted_at": end}


def _triggers() -> list[dict]:
    return [
        _trigger("retrain", KEYS[1], 18, reason="sequential alarm <b>bold</b>"),
        _trigger("threshold_adjust", KEYS[1], 10, kind="hopping"),
        _trigger("monitor_degraded", KEYS[0], 2, kind="hopping", reason="fidelity <0.6"),
        _trigger("rollback", KEYS[1], 20),
    ]


def _headline(variant_shift: int = 0) -> dict:
    return {"windows_scored": 50, "fidelity": 0.9 - 0.1 * variant_shift, "false_alarms": variant_shift,
            "retrain_triggers": 1 + variant_shift,
            "detection_delay_windows": math.nan if variant_shift == 2 else 3.0 + variant_shift,
            "delay_by_key": {f"{EVIL_POLICY}/seg-&-2": 3}, "detections": 1, "missed_detections": 0,
            "mean_coverage": 0.3,
            "triggers_by_rule": {"retrain": 1, "threshold_adjust": 1, "rollback": 1, "monitor_degraded": 1}}


def _demo_summary() -> dict:
    return {
        "seed": 7, "events": 12345, "messages": 13, "config_version": "cfg-test", "l_budget": 0.1,
        "headline": _headline(),
        "convergence": [{"n": n, "mean_abs_error": 0.2 / math.sqrt(n), "one_minus_phi": 0.9 / math.sqrt(n),
                         "reduction_bound": 2.0 / math.sqrt(n)} for n in (10, 100, 1000)],
        "counters": {"events/accepted": 12000, "events/duplicate": 345},
        "scenarios": ["stationary", "step_drift"],
    }


def _replay_summary() -> dict:
    return {"files": ["logs/<a>.jsonl"], "messages": 60, "config_version": "cfg-test",
            "counters": {"events/accepted": 60},
            "triggers_by_rule": {"retrain": 1, "threshold_adjust": 1, "rollback": 1, "monitor_degraded": 1}}


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG"), path
    assert len(data) > 5_000, (path, len(data))


def _assert_escaped(text: str) -> None:
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    assert "<b>bold</b>" not in text and "&lt;b&gt;bold&lt;/b&gt;" in text
    assert "seg-&amp;-2" in text


@pytest.fixture(scope="module")
def config() -> MonitorConfig:
    return MonitorConfig()


def test_demo_report(tmp_path, config):
    path = write_report(tmp_path, _windows(truth=True), _triggers(), _demo_summary(), config,
                        extra=["<h2>Closing the loop</h2>"])
    assert path == tmp_path / "report.html" and path.exists()
    text = path.read_text(encoding="utf-8")
    for title in SECTIONS + ["Closing the loop", "Convergence"]:
        assert f"<h2>{title}</h2>" in text, title
    assert text.index("<h2>Headline</h2>") < text.index("<h2>Closing the loop</h2>") < text.index(
        "<h2>Sequential alarm rules</h2>")  # the caller's sections follow the scenarios
    _assert_escaped(text)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert "log(8640/0.050)" in text  # the rule paragraph uses the configuration's numbers
    assert "consistent with 1/√n" in text  # synthetic convergence has slope exactly -1/2
    assert "true loss" in text
    for name in PNGS + ["convergence.png"]:
        assert f'src="{name}"' in text
        _assert_png(tmp_path / name)


def test_replay_report_without_truth_ablation_or_convergence(tmp_path, config):
    path = write_report(tmp_path, _windows(truth=False), _triggers(), _replay_summary(), config)
    text = path.read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in text, title
    assert "<h2>Closing the loop</h2>" not in text and "<h2>Convergence</h2>" not in text
    assert "No ground truth" in text and "true loss" not in text
    assert "logs/&lt;a&gt;.jsonl" in text
    _assert_escaped(text)
    for name in PNGS:
        _assert_png(tmp_path / name)
    assert not (tmp_path / "convergence.png").exists()


def test_no_windows_no_triggers(tmp_path, config):
    """An empty replay still yields a report (and placeholder plots) rather than an exception."""
    path = write_report(tmp_path, [], [], {"files": [], "messages": 0, "counters": {}}, config)
    text = path.read_text(encoding="utf-8")
    assert "No triggers fired." in text
    for name in PNGS:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
