"""report.html and its PNG plots for `npo demo` and `npo replay`.

The report is what a reviewer opens first, so it must stand on its own: one
HTML file (plain CSS, no JavaScript, no external URLs) next to four PNGs.
It works for both runs: the demo's summary carries ground truth and a
convergence study (and the demo adds its closed-loop sections, see
loop_report.py); a replay's summary has none of these, and their sections are
left out. Policy ids and reasons come from user data in a
replay, so every piece of text is HTML-escaped, and `$` is escaped before it
reaches matplotlib (which would otherwise parse it as mathtext).

Plots use `matplotlib.figure.Figure` directly: no pyplot, no global backend
state, safe to call from any thread or process.
"""
from __future__ import annotations

import html
import math
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

from streams.operators.triggers import TriggerEvaluator

DPI = 100
MAX_PANELS = 12  # keys drawn per figure; a replay may have hundreds
MAX_TRIGGER_ROWS = 200
ROLLING_WINDOWS = 12
RULE_STYLE = {  # marker, colour and height (axes fraction) of the non-retrain rules in loss.png
    "threshold_adjust": ("D", "tab:orange", 0.95),
    "monitor_degraded": ("s", "grey", 0.88),
    "rollback": ("v", "purple", 0.81),
}
RULES = ("retrain", "threshold_adjust", "rollback", "monitor_degraded")


# ---------------------------------------------------------------- helpers

def _num(x) -> float:
    """Float or NaN: CSV-style rows may hold None or strings."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _fmt(x, digits: int = 3) -> str:
    """Numbers for tables: ints as ints, NaN/None as an en dash."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "–"
        if x.is_integer() and abs(x) < 1e12:
            return str(int(x))
        return f"{x:.{digits}f}" if abs(x) >= 10 ** -digits else f"{x:.2e}"
    return str(x)


def _fixed(x, digits: int = 3) -> str:
    """A probability or loss with fixed decimals, so a column lines up (1.000, not 1; 0.000, not 2.95e-07)."""
    x = _num(x)
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _label(text: str, limit: int = 48) -> str:
    """User text safe for matplotlib: no mathtext, bounded length."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _key_name(key: tuple[str, str]) -> str:
    return f"{key[0]} / {key[1]}"


def _iso(ts) -> str:
    ts = _num(ts)
    if math.isnan(ts):
        return "–"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _series(rows: list[dict], name: str) -> np.ndarray:
    return np.array([_num(r.get(name)) for r in rows], dtype=float)


def _tumbling_by_key(windows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Tumbling rows per key, in time order."""
    by_key: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for w in windows:
        if w.get("kind") == "tumbling":
            by_key[(str(w["policy_id"]), str(w["segment"]))].append(w)
    return {k: sorted(v, key=lambda r: _num(r["start"])) for k, v in sorted(by_key.items())}


def _select_keys(by_key: dict, triggers: list[dict], cap: int = MAX_PANELS) -> list[tuple[str, str]]:
    """All keys if few; otherwise those with the most triggers, so the interesting ones get drawn."""
    keys = list(by_key)
    if len(keys) <= cap:
        return keys
    count: dict[tuple, int] = defaultdict(int)
    for t in triggers:
        count[(str(t.get("policy_id")), str(t.get("segment")))] += 1
    return sorted(sorted(keys, key=lambda k: -count[k])[:cap])


def _grid(n: int, panel_w: float = 6.0, panel_h: float = 2.8) -> tuple[Figure, list]:
    """A constrained-layout figure with one axes per key, sharing the time axis."""
    ncols = 1 if n <= 1 else 2
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(panel_w * ncols, panel_h * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax in axes[max(n - ncols, 0):n]:  # bottom axes of each column carry the x label
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("hours since start (window end)")
    return fig, list(axes[:n])


def _empty_figure(message: str) -> Figure:
    fig = Figure(figsize=(6, 2.5))
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    return fig


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=DPI)


def _rolling_mean(x: np.ndarray, n: int) -> np.ndarray:
    """Trailing mean over the last n entries, ignoring NaN; NaN until half the window has values."""
    valid = ~np.isnan(x)
    s = np.cumsum(np.where(valid, x, 0.0))
    c = np.cumsum(valid)
    s_lag = np.concatenate((np.zeros(n), s[:-n])) if len(x) > n else np.zeros(len(x))
    c_lag = np.concatenate((np.zeros(n), c[:-n])) if len(x) > n else np.zeros(len(x))
    count = c - c_lag
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count >= max(1, n // 2), (s - s_lag) / count, np.nan)


class Frame:
    """The shared time axis: origin, right edge, and where decisions stop.

    Feedback trails its decisions by hours to days, so after the last
    decision come many windows holding a few late labels each. Their
    statistics are noise and would squeeze the monitored period into a
    sliver of the plot, so the axis ends at the last decision or the last
    trigger, whichever is later, and the late-feedback stretch is shaded.
    """

    def __init__(self, by_key: dict, triggers: list[dict], pane_s: float):
        self.step_h = pane_s / 3600.0
        rows = [r for rs in by_key.values() for r in rs]
        self.t0 = min((_num(r["start"]) for r in rows), default=0.0)
        ends = np.array([_num(r["end"]) for r in rows])
        decided = np.array([_num(r.get("n_decisions")) > 0 for r in rows], dtype=bool)
        last = float(np.nanmax(ends)) if rows else self.t0 + 3600.0
        self.decisions_end = float(np.nanmax(ends[decided])) if decided.any() else None
        trig_ends = [_num((t.get("window") or {}).get("end")) for t in triggers]
        trig_end = max((e for e in trig_ends if np.isfinite(e)), default=-math.inf)
        right = last if self.decisions_end is None else min(last, max(self.decisions_end, trig_end))
        self.right = right
        self.hidden = int((ends > right).sum()) if rows else 0
        self.last = last

    @property
    def shaded(self) -> bool:
        return self.decisions_end is not None and self.right > self.decisions_end

    def hours(self, ts) -> np.ndarray:
        return (np.asarray(ts, dtype=float) - self.t0) / 3600.0

    def apply(self, ax) -> None:
        """Clip to the frame and shade the late-feedback stretch."""
        right_h = float(self.hours(self.right))
        ax.set_xlim(-0.02 * max(right_h, 1e-9), right_h * 1.02 + 1e-9)
        if self.shaded:
            ax.axvspan(float(self.hours(self.decisions_end)), right_h * 1.02 + 1e-9, color="0.85", alpha=0.5,
                       linewidth=0, zorder=0)

    def note(self) -> str:
        """Caption text saying what the frame leaves out."""
        text = ""
        if self.shaded:
            text = (f" Shaded: after the last decision ({float(self.hours(self.decisions_end)):.3g} h), windows "
                    "hold only late feedback.")
        if self.hidden:
            text += (f" {self.hidden} later tumbling windows (late feedback only, after the last decision and "
                     f"the last trigger, up to {float(self.hours(self.last)):.3g} h) are not drawn; they are in "
                     "windows.csv.")
        return text


def _broken(x: np.ndarray, step_h: float, *ys: np.ndarray) -> tuple[np.ndarray, ...]:
    """Insert NaN where consecutive windows are not adjacent, so lines do not bridge gaps in the data."""
    if len(x) < 2:
        return (x, *ys)
    cut = np.flatnonzero(np.diff(x) > 1.5 * step_h) + 1
    return (np.insert(x, cut, np.nan), *(np.insert(y, cut, np.nan) for y in ys))


def _loglog_slope(n: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y on log n over the positive points (NaN if fewer than 2)."""
    ok = (n > 0) & (y > 0) & np.isfinite(y)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(n[ok]), np.log(y[ok]), 1)[0])


# ---------------------------------------------------------------- plots

def _panel(ax, key, frame: Frame, ylabel: str) -> None:
    """What every per-key panel shares: title, time frame, grid."""
    frame.apply(ax)
    ax.set_title(_label(_key_name(key)), fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _legend(fig: Figure, handles: list, ncols: int) -> None:
    """One legend above all panels, so no panel's data is hidden under it."""
    fig.legend(handles=handles, loc="outside upper center", ncols=ncols, fontsize=9, frameon=False)


def _late_handle():
    return Patch(color="0.85", alpha=0.5, label="late feedback only")


def plot_loss(path: Path, by_key: dict, keys: list, triggers: list[dict], budget: float, n_min: int,
              frame: Frame) -> None:
    """Estimated loss with its interval against the budget, and where each rule fired.

    The reader should see at a glance whether retrain lines sit where the
    loss (and, in the demo, the true loss) crosses the budget. Windows with
    fewer than n_min labels are dots, not line: joined up, their 0-or-1
    estimates turn the late-feedback tail into a solid block of zigzags.
    """
    if not keys:
        _save(_empty_figure("no tumbling windows"), path)
        return
    fig, axes = _grid(len(keys))
    by_trig: dict[tuple, list[dict]] = defaultdict(list)
    for t in triggers:
        by_trig[(str(t.get("policy_id")), str(t.get("segment")))].append(t)
    has_truth = False
    for ax, key in zip(axes, keys):
        rows = by_key[key]
        x, loss, lo, hi, truth, labels = _broken(
            frame.hours(_series(rows, "end")), frame.step_h, _series(rows, "loss"), _series(rows, "loss_lo"),
            _series(rows, "loss_hi"), _series(rows, "true_loss"), _series(rows, "n_labels"))
        thin = labels < n_min
        ax.fill_between(x, lo, hi, color="tab:blue", alpha=0.2, linewidth=0)
        ax.plot(x, np.where(thin, np.nan, loss), color="tab:blue", linewidth=0.9)
        ax.plot(x, np.where(thin, loss, np.nan), color="tab:blue", marker=".", markersize=2.5, linestyle="none")
        if np.isfinite(truth).any():
            has_truth = True
            ax.plot(x, truth, color="black", linestyle="--", linewidth=1.3)
        ax.axhline(budget, color="tab:green", linewidth=1.2)
        _mark_triggers(ax, by_trig.get(key, []), frame)
        ax.set_ylim(0.0, _loss_top(x, hi, truth, budget, frame))
        _panel(ax, key, frame, "loss")
    handles = [Line2D([], [], color="tab:blue", label="estimated loss"),
               Line2D([], [], color="tab:blue", marker=".", linestyle="none", label=f"estimate, < {n_min} labels"),
               Patch(color="tab:blue", alpha=0.2, label="interval (loss_lo..loss_hi)")]
    if has_truth:
        handles.append(Line2D([], [], color="black", linestyle="--", label="true loss"))
    handles += [Line2D([], [], color="tab:green", label=f"budget {budget:g}"),
                Line2D([], [], color="red", label="retrain")]
    handles += [Line2D([], [], color=c, marker=m, linestyle="none", label=r) for r, (m, c, _) in RULE_STYLE.items()]
    if frame.shaded:
        handles.append(_late_handle())
    _legend(fig, handles, ncols=5)
    _save(fig, path)


def _loss_top(x: np.ndarray, hi: np.ndarray, truth: np.ndarray, budget: float, frame: Frame) -> float:
    """Upper y limit: room for the budget and truth, and for most upper bounds while decisions flow.

    Windows with a handful of labels (the late-feedback tail, droughts) have
    upper bounds near 1; letting them set the scale would flatten the rest.
    """
    edge = frame.right if frame.decisions_end is None else frame.decisions_end
    shown = np.isfinite(x) & (x <= float(frame.hours(edge)))
    candidates = [budget * 2.5]
    if np.isfinite(hi[shown]).any():
        candidates.append(float(np.nanpercentile(hi[shown], 95)) * 1.1)
    if np.isfinite(truth[shown]).any():
        candidates.append(float(np.nanmax(truth[shown])) * 1.2)
    return min(1.0, max(candidates))


def _mark_triggers(ax, triggers: list[dict], frame: Frame) -> None:
    """Retrain as red vertical lines; the other rules as markers along the top of the panel.

    Triggers are placed at their window's end, the moment they were emitted,
    which is where the tumbling statistic of the same pane is drawn too.
    """
    top = blended_transform_factory(ax.transData, ax.transAxes)
    for t in triggers:
        x = float(frame.hours(_num((t.get("window") or {}).get("end"))))
        rule = t.get("rule")
        if rule == "retrain":
            ax.axvline(x, color="red", linewidth=1.3, alpha=0.85)
        elif rule in RULE_STYLE:
            marker, colour, y = RULE_STYLE[rule]
            ax.plot([x], [y], marker=marker, color=colour, markersize=5, linestyle="none", transform=top)


def plot_fidelity(path: Path, by_key: dict, keys: list, budget: float, frame: Frame) -> None:
    """The monitor's own fidelity estimate phi next to, in the demo, the realised agreement of D with truth.

    phi is what production sees; the realised agreement is what it is meant to
    estimate. A gap between the two lines is the estimate's error. phi is
    reported, not alarmed on, so no threshold is drawn.
    """
    if not keys:
        _save(_empty_figure("no tumbling windows"), path)
        return
    fig, axes = _grid(len(keys), panel_h=2.5)
    has_truth = False
    for ax, key in zip(axes, keys):
        rows = by_key[key]
        truth, alarmed = _series(rows, "true_loss"), _series(rows, "alarmed")
        agree = np.where(np.isfinite(truth) & np.isfinite(alarmed),
                         ((alarmed > 0.5) == (truth > budget)).astype(float), np.nan)
        x, phi, realised = _broken(frame.hours(_series(rows, "end")), frame.step_h, _series(rows, "phi"),
                                   _rolling_mean(agree, ROLLING_WINDOWS))
        ax.plot(x, phi, color="tab:blue", linewidth=1.3)
        if np.isfinite(truth).any():
            has_truth = True
            ax.plot(x, realised, color="black", linestyle="--", linewidth=1.2)
        ax.set_ylim(-0.02, 1.05)
        _panel(ax, key, frame, "fidelity")
    handles = [Line2D([], [], color="tab:blue", label="phi (monitor's estimate)")]
    if has_truth:
        handles.append(Line2D([], [], color="black", linestyle="--",
                              label=f"realised P(D = T), rolling {ROLLING_WINDOWS} windows"))
    if frame.shaded:
        handles.append(_late_handle())
    _legend(fig, handles, ncols=len(handles))
    _save(fig, path)


def plot_coverage(path: Path, by_key: dict, keys: list, c_min: float, a_max: float, frame: Frame) -> None:
    """Feedback coverage and abstention per window: the inputs of the monitor_degraded rule.

    Low coverage or high abstention is why a monitor stops seeing its loss;
    the rule's thresholds are drawn so a reader can check it fired when it should.
    """
    if not keys:
        _save(_empty_figure("no tumbling windows"), path)
        return
    fig, axes = _grid(len(keys), panel_h=2.5)
    for ax, key in zip(axes, keys):
        rows = by_key[key]
        x, cov, abst = _broken(frame.hours(_series(rows, "end")), frame.step_h, _series(rows, "coverage"),
                               _series(rows, "abstention_rate"))
        ax.plot(x, cov, color="tab:blue", linewidth=1.0)
        ax.plot(x, abst, color="tab:orange", linewidth=1.0)
        ax.axhline(c_min, color="tab:blue", linestyle=":", linewidth=1.2)
        ax.axhline(a_max, color="tab:orange", linestyle=":", linewidth=1.2)
        ax.set_ylim(-0.02, 1.02)
        _panel(ax, key, frame, "share")
    handles = [Line2D([], [], color="tab:blue", label="coverage"),
               Line2D([], [], color="tab:orange", label="abstention rate"),
               Line2D([], [], color="tab:blue", linestyle=":", label=f"c_min {c_min:g}"),
               Line2D([], [], color="tab:orange", linestyle=":", label=f"a_max {a_max:g}")]
    if frame.shaded:
        handles.append(_late_handle())
    _legend(fig, handles, ncols=len(handles))
    _save(fig, path)


def plot_convergence(path: Path, rows: list[dict]) -> None:
    """The paper's rate claim on a log-log scale: both errors should run parallel to 1/sqrt(n).

    Reference lines are anchored at each series' first point so the eye
    compares slopes, not levels. Zeros (no wrong decisions at large n) cannot
    be drawn on a log axis and are left out.
    """
    n = np.array([_num(r.get("n")) for r in rows])
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()
    series = (("mean_abs_error", "mean |L̂ − L|", "tab:blue"), ("one_minus_phi", "1 − φ", "tab:orange"))
    for name, label, colour in series:
        y = np.array([_num(r.get(name)) for r in rows])
        ok = (n > 0) & (y > 0) & np.isfinite(y)
        if not ok.any():
            continue
        ax.plot(n[ok], y[ok], marker="o", color=colour, label=label)
        i = int(np.argmax(ok))
        ax.plot(n[ok], y[i] * np.sqrt(n[i] / n[ok]), color=colour, linestyle="--", linewidth=0.9, alpha=0.7,
                label=f"{label}: 1/√n reference")
    bound = np.array([_num(r.get("reduction_bound")) for r in rows])
    ok = (n > 0) & (bound > 0) & np.isfinite(bound)
    if ok.any():
        ax.plot(n[ok], bound[ok], color="tab:green", linestyle=":", marker=".", linewidth=1.5,
                label="P(|L̂ − L| ≥ |L − budget|)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("labels per window n")
    ax.set_ylabel("error")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    _save(fig, path)


# ---------------------------------------------------------------- html

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1250px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.92em; color: #444; max-width: 70em; }
p.note { color: #555; font-size: 0.92em; }
"""


def _table(headers: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    """An HTML table; every cell is formatted with _fmt and escaped."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{_esc(_fmt(c))}</td>' if i in numeric else f"<td>{_esc(_fmt(c))}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _rules_text(by_rule: dict) -> str:
    return ", ".join(f"{r}: {by_rule.get(r, 0)}" for r in RULES)


def _facts_section(summary: dict, config, budget: float, n_windows: int, n_triggers: int) -> str:
    """What was run: enough to reproduce it (seed, config version) or find its inputs (files)."""
    rows = []
    for key, label in (("seed", "seed"), ("events", "events"), ("messages", "messages")):
        if key in summary:
            rows.append([label, summary[key]])
    if "files" in summary:
        rows.append(["input files", ", ".join(map(str, summary["files"]))])
    if "scenarios" in summary:
        rows.append(["scenarios", ", ".join(map(str, summary["scenarios"]))])
    rows += [["configuration version", summary.get("config_version", config.version)],
             ["loss budget", budget],
             ["tumbling window", f"{config.windows.tumbling_s:g} s"],
             ["window rows", n_windows], ["triggers", n_triggers]]
    return "<h2>Run</h2>" + _table(["", "value"], rows)


def _headline_section(summary: dict, triggers: list[dict], pane_s: float, p_fire: float) -> str:
    """The demo's scored headline, or for a replay (no truth) just the triggers by rule."""
    headline = summary.get("headline")
    if not headline:
        by_rule = summary.get("triggers_by_rule") or {r: sum(t.get("rule") == r for t in triggers) for r in RULES}
        return ("<h2>Headline</h2><p class=\"note\">No ground truth in this run: false alarms, detection delay "
                "and fidelity cannot be scored.</p>"
                + _table(["rule", "triggers"], [[r, by_rule.get(r, 0)] for r in RULES], {1}))
    delay = _num(headline.get("detection_delay_windows"))
    rows = [
        ["mean feedback coverage", headline.get("mean_coverage")],
        ["false alarms (retrain triggers with true loss within budget)", headline.get("false_alarms")],
        ["retrain triggers", headline.get("retrain_triggers")],
        ["detections / missed detections",
         f"{_fmt(headline.get('detections'))} / {_fmt(headline.get('missed_detections'))}"],
        ["mean detection delay (windows)", delay],
        ["mean detection delay (minutes)", delay * pane_s / 60.0],
        ["detection delay by key (windows)",
         ", ".join(f"{k}: {_fmt(v)}" for k, v in (headline.get("delay_by_key") or {}).items()) or "–"],
        ["triggers by rule", _rules_text(headline.get("triggers_by_rule", {}))],
        ["tumbling windows inside the simulated horizon (fidelity is scored on these)",
         headline.get("windows_scored")],
        ["fidelity P(D = T), realised: the monitor", headline.get("fidelity")],
        ["fidelity, baseline: never alarm (D = 0)", headline.get("fidelity_never_alarm")],
        [f"fidelity, baseline: per-window rule D = 1[p_exceed ≥ {p_fire:g}]", headline.get("fidelity_per_window")],
    ]
    return ("<h2>Headline</h2>" + _table(["measure", "value"], rows, {1})
            + "<p class=\"note\">T = 1[true loss &gt; budget] per tumbling window; windows after the simulated "
            "end hold only late feedback and are not scored. The per-window rule has no memory: each window "
            "decides alone.</p>")


def _sequential_section(config) -> str:
    """The alarm rules and their false-alarm guarantee, stated with this run's numbers."""
    t, pane_s = config.triggers, config.windows.tumbling_s
    thresholds = TriggerEvaluator(t, config.version, pane_s, config.layout, config.stats).thresholds
    horizon = math.ceil(t.horizon_days * 86_400.0 / pane_s)

    def log_a(name: str) -> str:  # log(H·m/α) as configured: m statistics or looks share α
        return f"log({round(math.exp(thresholds[name]) * t.alpha)}/{_fmt(t.alpha)}) = {thresholds[name]:.2f}"

    rows = [
        ["retrain", f"loss above the budget p₀ = {_fmt(t.l_budget)}", log_a("retrain")],
        ["rollback", f"loss above the hard ceiling p₀ = {_fmt(t.l_hard)}, also at each mid-window look "
                     "(one statistic per partition's looks plus the final windows)", log_a("rollback")],
        ["monitor_degraded", f"coverage below c_min = {_fmt(t.c_min)} (Poisson ratio); abstention above a_max = "
                             f"{_fmt(t.a_max)}; on decisions labelled by an audit and by another channel, the "
                             "share of disagreements where the channel likes what the audit overrides above ½, "
                             "or the reverse (four statistics share α)", log_a("degraded")],
    ]
    used = ("This run used the sequential retrain rule." if t.retrain_rule == "sequential" else
            f"<strong>This run used the naive per-window retrain rule instead</strong> (fire when p_exceed ≥ "
            f"{t.p_fire:g} with at least {t.n_min} labels), which carries no such guarantee.")
    return (
        "<h2>Sequential alarm rules</h2><p>"
        "Every alarm rule is a mixture Shiryaev–Roberts detector. For each alternative rate p<sub>j</sub> (the "
        "odds of p<sub>0</sub> times 1.1 to 8, equal weights) a key keeps R<sub>j</sub> ← (1 + R<sub>j</sub>) · "
        "LR<sub>j</sub> once per final tumbling window, LR<sub>j</sub> being the likelihood ratio of the window's "
        "labels under p<sub>j</sub> against p<sub>0</sub>; the rule alarms when the log of the mixture R reaches "
        "log A, and then restarts. Each label counts with weight min(w, 1): a heavy weight counts as one label, "
        "never as many. While the key is in control R<sub>n</sub> − n is a supermartingale, so by Ville's "
        f"inequality P(false alarm within H windows) ≤ α = {_esc(_fmt(t.alpha))} for any number of looks, with "
        f"H = {horizon} windows ({_esc(f'{t.horizon_days:g}')} days of {pane_s:g} s windows) and A = H/α, "
        "times the number of statistics or looks that share α.</p>"
        + _table(["rule", "tests", "threshold log A"], rows)
        + f"<p>After a retrain the key stays alarmed until a hopping window with at least {t.hour_min_labels} "
        f"labels gives p_exceed &lt; {t.p_rearm:g}; retrain triggers are at least {t.cooldown_panes} windows "
        "apart. The fidelity φ is estimated and reported, but no rule alarms on it. "
        f"{used}</p>")


def _scenarios_section(summary: dict) -> str:
    """Per scenario: what its truth calls for against what fired, and fidelity against the baselines."""
    rows = summary.get("by_scenario") or []
    if not rows:
        return ""
    by_key = (summary.get("headline") or {}).get("fidelity_by_key") or {}
    biased = (" In biased_channel the reviewers report like on half the decisions they would override, so the "
              "labels put the loss under budget while the true loss is over it: the audits of the same decisions "
              "are the only evidence, and monitor_degraded is the answer its truth calls for."
              if any(r["scenario"] == "biased_channel" for r in rows) else "")
    table = []
    for r in rows:
        fired = ", ".join(f"{rule} ×{n} (first {_fmt(r['first_hours'][rule], 1)} h)"
                          for rule, n in r["triggers"].items() if n) or "none"
        fid = by_key.get(r["key"], {})
        table.append([r["scenario"], ", ".join(r["expected"]) or "none", fired,
                      ", ".join(r["missing"]) or "–", ", ".join(r["unexpected"]) or "–",
                      f"{r['audit_pairs']} ({r['audit_pairs_b']} / {r['audit_pairs_c']})",
                      fid.get("monitor"), fid.get("never_alarm"), fid.get("per_window")])
    return ("<h2>Scenarios</h2><p>The rules each scenario's ground truth calls for (retrain: true loss over budget; "
            "rollback: over the hard ceiling; threshold_adjust: the true cost-optimal threshold more than τ_ε "
            "from the one in force; monitor_degraded: coverage under c_min, abstention over a_max, or a channel "
            "that under-reports overrides) against the rules that fired. Audit pairs: decisions labelled by an "
            f"audit and by another channel (audit overrides where the channel likes / the reverse).{biased}</p>"
            + _table(["scenario", "expected", "fired", "missing", "unexpected", "audit pairs (b / c)",
                      "fidelity", "never alarm", "per-window rule"], table, {6, 7, 8}))


def _convergence_section(summary: dict) -> str:
    rows = summary.get("convergence") or []
    if not rows:
        return ""
    n = np.array([_num(r.get("n")) for r in rows])
    slopes = {name: _loglog_slope(n, np.array([_num(r.get(name)) for r in rows]))
              for name in ("mean_abs_error", "one_minus_phi")}
    sentence = ("Fitted log-log slopes (least squares of log error on log n, zero entries left out): "
                + "; ".join(_slope_phrase(label, slopes[name]) for name, label in
                            (("mean_abs_error", "mean |L̂ − L|"), ("one_minus_phi", "1 − φ")))
                + ". A 1/√n rate has slope −0.5.")
    table = [[r.get("n"), r.get("mean_abs_error"), r.get("one_minus_phi"), r.get("reduction_bound")] for r in rows]
    return ("<h2>Convergence</h2>"
            + _table(["n", "mean |L̂ − L|", "1 − φ", "P(|L̂ − L| ≥ |L − budget|)"], table, {0, 1, 2, 3})
            + f"<p>{sentence}</p>")


def _slope_phrase(label: str, slope: float) -> str:
    """One series' slope against -1/2, in words: within 0.1 counts as matching the rate."""
    if not np.isfinite(slope):
        return f"{label}: too few positive points to fit"
    if abs(slope + 0.5) <= 0.1:
        verdict = "consistent with 1/√n"
    elif slope < -0.5:
        verdict = "faster than 1/√n"
    else:
        verdict = "slower than 1/√n"
    return f"{label} {slope:.2f} ({verdict})"


def _figure(src: str, caption: str) -> str:
    return (f'<figure><img src="{_esc(src)}" alt="{_esc(src)}"><figcaption>{caption}</figcaption></figure>')


def _plots_section(has_truth: bool, has_convergence: bool, shown: int, total: int, config, budget: float,
                   frame_note: str) -> str:
    t = config.triggers
    subset = (f" Showing {shown} of {total} keys, those with the most triggers." if shown < total else "")
    subset = _esc(frame_note) + subset
    truth = " The dashed black line is the simulator's true loss." if has_truth else ""
    parts = [
        "<h2>Plots</h2>",
        _figure("loss.png",
                f"Estimated loss per tumbling window (blue) with its interval (band) against the budget "
                f"{_esc(_fmt(budget))} (green); dots are windows with fewer than {config.triggers.n_min} labels."
                f"{truth} Red vertical lines: retrain triggers; markers along the top: "
                "threshold_adjust (orange diamonds), monitor_degraded (grey squares), rollback (purple triangles). "
                f"Everything is drawn at the end of its window.{subset}"),
        _figure("fidelity.png",
                "The monitor's running fidelity estimate φ (posterior probability that its decision D is right, "
                "exponentially weighted over hopping windows)"
                + (f" and the realised agreement of D with T = 1[true loss &gt; budget], a rolling mean over "
                   f"{ROLLING_WINDOWS} windows (dashed)" if has_truth else "")
                + f". φ is reported, not alarmed on.{subset}"),
        _figure("coverage.png",
                f"Share of decisions with feedback (coverage) and share of feedback that abstains, per tumbling "
                f"window, with the levels c<sub>min</sub> = {_esc(_fmt(t.c_min))} and a<sub>max</sub> = "
                f"{_esc(_fmt(t.a_max))} (dotted) that monitor_degraded's sequential detectors test these counts "
                f"against.{subset}"),
    ]
    if has_convergence:
        parts.append(_figure(
            "convergence.png",
            "Simulated windows of n labels with true losses near the budget: mean |L̂ − L| and 1 − φ against n "
            "(log-log), each with a 1/√n reference anchored at its first point (dashed), and the reduction bound "
            "P(|L̂ − L| ≥ |L − budget|) that 1 − φ must stay under (dotted)."))
    return "".join(parts)


def _trigger_time(t: dict) -> float:
    """Sort key: window end (emission time in event time); triggers without one go last."""
    end = _num((t.get("window") or {}).get("end"))
    return math.inf if math.isnan(end) else end


def _triggers_section(triggers: list[dict]) -> str:
    """The first triggers in time order, with the evidence a reviewer checks first."""
    if not triggers:
        return "<h2>Triggers</h2><p>No triggers fired.</p>"
    rows = []
    for t in sorted(triggers, key=_trigger_time)[:MAX_TRIGGER_ROWS]:  # stable: ties keep emission order
        ev, w = t.get("evidence") or {}, t.get("window") or {}
        rows.append([t.get("rule"), _key_name((str(t.get("policy_id")), str(t.get("segment")))),
                     _iso(w.get("start")), w.get("kind", ""), t.get("reason"),
                     _fixed(ev.get("p_exceed")), _fixed(ev.get("loss"))])
    note = (f"<p class=\"note\">First {MAX_TRIGGER_ROWS} of {len(triggers)} triggers by window end; all are in "
            "triggers.jsonl.</p>" if len(triggers) > MAX_TRIGGER_ROWS else "")
    return ("<h2>Triggers</h2>" + note
            + _table(["rule", "key", "window start (UTC)", "window", "reason", "p_exceed", "loss"], rows, {5, 6}))


def _counters_section(summary: dict) -> str:
    counters = summary.get("counters") or {}
    if not counters:
        return ""
    return "<h2>Counters</h2>" + _table(["counter", "value"], [[k, v] for k, v in sorted(counters.items())], {1})


# ---------------------------------------------------------------- entry point

def write_report(out: Path, windows: list[dict], triggers: list[dict], summary: dict, config,
                 extra: list[str] = ()) -> Path:
    """Write PNG plots and report.html into `out`; return the html path. `extra`: sections the
    caller rendered (the demo's closed loop and ablation), placed after the scenarios."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    budget = _num(summary.get("l_budget", config.stats.l_budget))
    pane_s = float(config.windows.tumbling_s)
    by_key = _tumbling_by_key(windows)
    keys = _select_keys(by_key, triggers)
    frame = Frame(by_key, triggers, pane_s)
    has_truth = any(np.isfinite(_num(r.get("true_loss"))) for rows in by_key.values() for r in rows)
    convergence = summary.get("convergence") or []

    plot_loss(out / "loss.png", by_key, keys, triggers, budget, config.triggers.n_min, frame)
    plot_fidelity(out / "fidelity.png", by_key, keys, budget, frame)
    plot_coverage(out / "coverage.png", by_key, keys, config.triggers.c_min, config.triggers.a_max, frame)
    if convergence:
        plot_convergence(out / "convergence.png", convergence)

    title = "NPO stream monitor report" + (" — demo" if "headline" in summary else " — replay")
    body = [
        f"<h1>{_esc(title)}</h1>",
        f"<p class=\"note\">Data from {_esc(_iso(frame.t0))} (first tumbling window) · "
        f"{len(by_key)} keys · configuration {_esc(summary.get('config_version', config.version))}</p>",
        _facts_section(summary, config, budget, len(windows), len(triggers)),
        _headline_section(summary, triggers, pane_s, config.triggers.p_fire),
        _scenarios_section(summary),
        *extra,
        _sequential_section(config),
        _convergence_section(summary),
        _plots_section(has_truth, bool(convergence), len(keys), len(by_key), config, budget, frame.note()),
        _triggers_section(triggers),
        _counters_section(summary),
    ]
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
