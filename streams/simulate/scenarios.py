"""Scenario definitions and their exact ground truth.

A scenario is one monitored key (policy_id, segment).  Its model, human and
feedback parameters are schedules of ``u`` = fraction of the simulated horizon
elapsed (0..1, evaluated at each window's midpoint), so one scenario stretches
over any ``n_windows``.

Generating model (the generator samples it, ``ground_truth`` integrates it):

* score ``s ~ Beta(*beta)``; decision ``act`` if ``s >= tau`` else ``hold``,
  except that a decision with ``|s - tau| < abstain_band`` is deferred to a
  person (``abstain``) with probability ``abstain_prob``.
* the human's true preference ``y* ~ Bernoulli(p)``, ``p = sigmoid(k (s - c))``,
  with ``c`` the human's indifference point.  Human/reviewer/llm_judge labels
  are reported with error rate ``noise`` (y* flipped); audit labels never are.
* feedback on an ``act``/``hold`` decision is ``override`` iff the reported
  label disagrees with it, else ``like``.  On an ``abstain`` decision the
  person endorses the deferral (``like``) with probability equal to their own
  ambiguity ``1 - |2p - 1|``; otherwise they ``override`` with ``preferred`` =
  their reported label.  So deferring near the human's indifference point is
  right and deferring clear cases is an error.
* each decision gets non-audit feedback with probability ``coverage``, from
  human, reviewer or llm_judge in the split ``sources``; that feedback is kind
  ``abstain`` with probability ``abstention``.  Independently an
  ``AUDIT_RATE`` sample gets an audit (never abstains, never noisy); with
  ``paired_audit_rate`` the audits instead sample the decisions that got
  non-audit feedback, so each audited decision is labelled twice.
* a reviewer reports ``like`` on a share ``under_report`` of the decisions
  they would override (a biased channel); the audits of the same decisions
  still show the truth.

Because coverage, abstention, audit sampling and under-reporting do not depend
on the score, P(override | labelled) is an exact mixture of two integrals over
the score density; no sampled events are counted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

Schedule = Callable[[float], float]

AUDIT_RATE = 0.02
"""Fraction of decisions given a gold-standard audit review."""

SOURCE_P = (0.75, 0.22, 0.03)
"""Default split of non-audit feedback between human, reviewer and llm_judge."""
REVIEWER = 1

GRID = (np.arange(2001) + 0.5) / 2001
"""Midpoints of 2001 equal cells on [0, 1]: the integration grid."""


def const(value: float) -> Schedule:
    return lambda u: value


def stretch(base: float, level: float, start: float = 0.4, end: float = 0.7) -> Schedule:
    """``level`` for start <= u < end, else ``base``: a temporary episode."""
    return lambda u: level if start <= u < end else base


def ramp(v0: float, v1: float, start: float, end: float) -> Schedule:
    """Linear from v0 (u <= start) to v1 (u >= end)."""
    return lambda u: v0 + (v1 - v0) * min(max((u - start) / (end - start), 0.0), 1.0)


@dataclass(frozen=True)
class Scenario:
    name: str
    policy_id: str
    segment: str
    tau: Schedule
    c: Schedule
    coverage: Schedule = const(0.3)
    abstention: Schedule = const(0.05)
    noise: Schedule = const(0.02)
    rate: Schedule = const(1.0)
    """Multiplier of SimConfig.decisions_per_window."""
    under_report: Schedule = const(0.0)
    """Share of the overrides a reviewer reports as ``like``."""
    sources: tuple[float, float, float] = SOURCE_P
    paired_audit_rate: float = 0.0
    """If > 0: audits sample the decisions with non-audit feedback at this rate (not AUDIT_RATE of all)."""
    k: float = 80.0
    beta: tuple[float, float] = (2.0, 2.0)
    abstain_band: float = 0.02
    abstain_prob: float = 0.5


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x)))


def _override_prob(sc: Scenario, s, tau: float, p, noise: float):
    """P(override | score s) marginalised over the decision and the person,
    given the human's preference p = P(y* = 1 | s)."""
    q = noise + (1.0 - 2.0 * noise) * p
    decided = np.where(s >= tau, 1.0 - q, q)
    deferred = sc.abstain_prob * (np.abs(s - tau) < sc.abstain_band)
    return (1.0 - deferred) * decided + deferred * np.abs(2.0 * p - 1.0)


def _density(sc: Scenario):
    f = GRID ** (sc.beta[0] - 1) * (1 - GRID) ** (sc.beta[1] - 1)
    return f / f.sum()


def _audits(sc: Scenario, cov: float, audit_rate: float) -> tuple[float, float]:
    """(audits per decision, P(a decision gets any feedback)); audit_rate 0 means no audits at all."""
    if audit_rate > 0 and sc.paired_audit_rate > 0:
        return cov * sc.paired_audit_rate, cov
    return audit_rate, 1 - (1 - cov) * (1 - audit_rate)


def _loss(sc: Scenario, f, tau: float, c, h: float, noise: float, audit_rate: float, hidden: float = 0.0):
    """Mixture of noisy (weight h) and audit (weight audit_rate) override rates, the noisy
    ones with a share `hidden` reported as likes; c may be a column of candidates, giving
    one loss per row."""
    p = sigmoid(sc.k * (GRID - c))
    loss_noisy = (1.0 - hidden) * (_override_prob(sc, GRID, tau, p, noise) @ f)
    loss_audit = _override_prob(sc, GRID, tau, p, 0.0) @ f
    return (h * loss_noisy + audit_rate * loss_audit) / (h + audit_rate) if h + audit_rate > 0 else loss_noisy


def ground_truth(sc: Scenario, u: float, audit_rate: float = AUDIT_RATE, tau: float | None = None,
                 shift: float = 0.0) -> dict:
    """Exact truth at horizon fraction u, under the scenario's threshold or the policy in force:
    threshold ``tau`` and a model whose emitted score is ``clip(s + shift, 0, 1)`` (a retrained
    model re-maps the raw score s; the person's preference stays a function of s). For tau in
    (0, 1) that policy decides as the raw score against ``tau - shift``, which is what is
    integrated; ``tau`` and ``true_tau_star`` are reported on the emitted scale.

    true_loss = (h * L_noisy + r * L_audit) / (h + r) with h = coverage *
    (1 - abstention) and r the audits, both labelled feedback per decision,
    and L = integral of _override_prob against the score density: what the
    labels measure when every source reports honestly.  apparent_loss is what
    they measure with the reviewers' under-reporting (L_noisy scaled by
    1 - under_report * reviewer share); the two differ only on a biased channel.
    true_tau_star minimises the c_fp = c_fn = 1 cost
    sum_{s<t} f p + sum_{s>=t} f (1 - p) over grid thresholds t.
    coverage is P(a decision gets any feedback); abstention_rate is the
    expected share of feedback events that are kind "abstain".
    """
    tau = sc.tau(u) if tau is None else tau
    c, cov, abst = sc.c(u), sc.coverage(u), sc.abstention(u)
    f = _density(sc)
    r, any_feedback = _audits(sc, cov, audit_rate)
    raw_tau = tau - shift
    loss = _loss(sc, f, raw_tau, c, cov * (1 - abst), sc.noise(u), r)
    hidden = sc.under_report(u) * sc.sources[REVIEWER]
    apparent = _loss(sc, f, raw_tau, c, cov * (1 - abst), sc.noise(u), r, hidden) if hidden else loss
    p = sigmoid(sc.k * (GRID - c))
    cost = np.concatenate(([0.0], np.cumsum(f * p)[:-1])) + np.cumsum((f * (1 - p))[::-1])[::-1]
    return {
        "true_loss": float(loss),
        "apparent_loss": float(apparent),
        "under_report": float(sc.under_report(u)),
        "true_tau_star": float(min(max(GRID[np.argmin(cost)] + shift, 0.0), 1.0)),
        "tau": float(tau),
        "coverage": float(any_feedback),
        "abstention_rate": float(cov * abst / (cov + r)) if cov + r > 0 else 0.0,
    }


def _calibrated(base: Scenario, target_loss: Schedule) -> Scenario:
    """Set c(u) = tau + d where d gives true_loss == target_loss(u).

    Targets are stated as losses because that is what the monitor measures;
    the loss is increasing in d >= 0, so invert a table by interpolation
    (computed at the base coverage/abstention, u = 0).
    """
    tau, h = base.tau(0.0), base.coverage(0.0) * (1 - base.abstention(0.0))
    offsets = np.linspace(0.0, 0.45, 91)
    r, _ = _audits(base, base.coverage(0.0), AUDIT_RATE)
    losses = _loss(base, _density(base), tau, tau + offsets[:, None], h, base.noise(0.0), r)
    return replace(base, c=lambda u: tau + float(np.interp(target_loss(u), losses, offsets)))


def _key(name: str, segment: str, tau: float, **kw) -> Scenario:
    return Scenario(name, "remediation-" + name.replace("_", "-"), segment, const(tau), const(tau), **kw)


SCENARIOS: dict[str, Scenario] = {
    sc.name: sc
    for sc in (
        _calibrated(_key("stationary", "dc-eu", 0.50), const(0.05)),
        _calibrated(_key("step_drift", "dc-us", 0.55), stretch(0.05, 0.20, 0.4, 1.01)),
        _calibrated(_key("gradual_drift", "dc-eu", 0.45), ramp(0.05, 0.25, 0.25, 0.75)),
        replace(_key("miscalibrated_threshold", "dc-us", 0.70), c=const(0.50)),
        _calibrated(_key("feedback_drought", "dc-eu", 0.50, coverage=stretch(0.3, 0.01)), const(0.05)),
        _calibrated(_key("abstention_spike", "dc-us", 0.50, abstention=stretch(0.05, 0.5)), const(0.05)),
        _calibrated(_key("biased_channel", "dc-eu", 0.50, under_report=const(0.5), sources=(0.0, 1.0, 0.0),
                         paired_audit_rate=0.1), const(0.15)),
    )
}
"""Step drift steps at u = 0.4; gradual drift ramps over u in [0.25, 0.75];
drought (coverage 1%) and abstention spike (50%) last for u in [0.4, 0.7).
Biased channel: all non-audit feedback comes from reviewers, who report like on
half the decisions they would override, throughout; a tenth of the decisions
they label are audited too. Its true loss (0.15) is over budget while the
labels' apparent loss is under it, so only the audits can show it."""


STUDY_SCENARIOS: dict[str, Scenario] = {
    sc.name: sc
    for sc in (
        replace(_key("sparse_ambiguous", "dc-us", 0.50, rate=const(0.1)), k=25.0),
    )
}
"""Keys outside the default set, run only where asked for by name. Sparse ambiguous: a
tenth of the traffic, and people less decided than elsewhere (k = 25), so at 100 decisions a
window an hour holds a few dozen labels, many of them near the threshold; its threshold is right (true loss 0.088,
within budget), so any advice on it is noise, and the closed loop shows what acting on a
window's own point saving, without held-out validation, does with it."""


def scenario_names() -> tuple[str, ...]:
    """The default keys (the demo's, the load generator's)."""
    return tuple(SCENARIOS)


def scenario(name: str) -> Scenario:
    """A default or study key, by name."""
    return SCENARIOS[name] if name in SCENARIOS else STUDY_SCENARIOS[name]


def stream_index(name: str) -> int:
    """The key's own random stream: its place among the default keys, then the study keys
    (so adding a key at the end changes no other key's draws)."""
    return (*SCENARIOS, *STUDY_SCENARIOS).index(name)
