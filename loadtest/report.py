"""Plots of rate, lag, latency and RSS over time, and one HTML page around them.

Why: a single figure hides a stall, a slow start or a leak; the curves show them.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np


def _series(samples: list[tuple], who: str | None = None):
    rows = sorted(s for s in samples if who is None or s[4] == who)
    if not rows:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    t = np.array([r[0] for r in rows])
    n = np.array([r[1] for r in rows], dtype=float)
    rss = np.array([r[2] for r in rows], dtype=float)
    return t, n, rss


def _rate(t: np.ndarray, n: np.ndarray):
    if len(t) < 2:
        return t[:0], n[:0]
    dt = np.diff(t)
    ok = dt > 0
    return t[1:][ok], np.diff(n)[ok] / dt[ok]


def _page(path: Path, title: str, result: dict, image: str) -> Path:
    rows = "\n".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v))}</td></tr>"
                     for k, v in result.items())
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td{{padding:2px 10px;border-bottom:1px solid #ddd;
font-family:monospace}}</style></head><body><h1>{html.escape(title)}</h1>
<img src="{image}" style="width:100%"><h2>Figures</h2><table>{rows}</table></body></html>
""")
    return path


def write_bench_report(out_dir, result: dict, phases: dict, latencies: list, produced: list) -> Path:
    """bench.json, bench.png (rate, lag and latency over time) and bench.html in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    fig, ax = plt.subplots(3, 1, figsize=(11, 11))
    for name, phase in phases.items():
        whos = sorted({s[4] for s in phase.samples})
        for who in whos:
            t, n, _ = _series(phase.samples, who)
            if not len(t):
                continue
            label = name if len(whos) == 1 else f"{name}:{who}"
            tr, r = _rate(t, n)
            ax[0].plot(tr - t[0], r, label=label)
            if name == "latency" and produced:
                pt = np.array([p[0] for p in produced])
                pn = np.array([p[1] for p in produced], dtype=float)
                ax[1].plot(t - t[0], np.interp(t, pt, pn) - n, label=f"{label} (produced - processed)")
            elif len(whos) == 1:
                ax[1].plot(t - t[0], n[-1] - n, label=f"{label} (backlog left)")
    ax[0].set(title="events/s per path (per sample)", xlabel="s since the path started", ylabel="events/s")
    ax[1].set(title="lag", xlabel="s since the path started", ylabel="events", yscale="symlog")
    if latencies:
        t0 = min(x[0] for x in latencies)
        for rule in sorted({x[2] for x in latencies}):
            pts = [(x[0] - t0, x[1] * 1000) for x in latencies if x[2] == rule]
            ax[2].scatter(*zip(*pts), s=8, label=rule)
        ax[2].axhline(500, color="r", lw=0.8, ls="--", label="target 500 ms")
    ax[2].set(title=f"trigger latency at {result.get('latency_target_events_per_s', '?')} events/s",
              xlabel="s since the first trigger", ylabel="ms")
    for a in ax:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=90)
    plt.close(fig)
    return _page(out / "bench.html", "npo bench pipeline", result, "bench.png")


def write_soak_report(out_dir, result: dict, samples: list[tuple], produced: list[tuple]) -> Path:
    """soak.json, soak.png (rate, lag, RSS, join state over time) and soak.html in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    t, n, rss = _series(samples)
    fig, ax = plt.subplots(4, 1, figsize=(11, 13), sharex=True)
    if len(t):
        t0 = t[0]
        tr, r = _rate(t, n)
        ax[0].plot(tr - t0, r)
        if produced:
            pt = np.array([p[0] for p in produced])
            pn = np.array([p[1] for p in produced], dtype=float)
            ax[1].plot(t - t0, np.interp(t, pt, pn) - n)
        ax[2].plot(t - t0, rss)
        warm = result.get("warmup_end_s")
        if warm is not None:
            for a in ax:
                a.axvline(warm, color="gray", ls=":", lw=0.8)
        joins = [(s[0] - t0, s[3]) for s in sorted(samples) if s[3] is not None]
        if joins:
            ax[3].plot(*zip(*joins))
    ax[0].set(title="worker events/s", ylabel="events/s")
    ax[1].set(title="lag (produced - processed)", ylabel="events")
    ax[2].set(title="worker RSS", ylabel="MiB")
    ax[3].set(title="join keys (pending scenarios)", ylabel="keys", xlabel="s since the soak started")
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=90)
    plt.close(fig)
    return _page(out / "soak.html", "npo loadtest --soak", result, "soak.png")
