"""What a simulated retrain learns, from the labels the system received and nothing else.

The people's preference is ``P(y* = 1 | s) = sigmoid(k (s - c))`` on the model's raw score s,
and drift moves their indifference point c. A retrain fits that curve by weighted logistic
regression of the human-implied label y* on s (Newton's method), and re-maps the model's
output to ``clip(s + shift, 0, 1)`` so that the score at which acting and holding cost the
same, ``c + logit(c_fp / (c_fp + c_fn)) / k``, lands on the threshold in force: the operator's
threshold stays put and the decisions it makes become the cost-optimal ones again. The fit
sees only labels (noisy, sometimes under-reported), so the new model is as good as they are;
there is no reset to the truth. A refit whose point is within its own confidence interval of
the current model's is not deployed: it could not tell the two apart, and its error alone
would move every decision near the threshold.
"""
from __future__ import annotations

import math

import numpy as np


def fit_indifference(score: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None,
                     iters: int = 50, ridge: float = 1e-6) -> tuple[float, float, float] | None:
    """(c, k, se) of the weighted logistic fit ``P(y = 1 | s) = sigmoid(k (s - c))``, ``se`` the
    standard error of c (delta method on the inverse information), or None when the labels
    cannot place the curve (fewer than two of either label, or a slope that is not positive).
    A tiny ridge on the slope keeps separable labels finite. Label noise flattens the fitted
    slope below the people's; c, where the curve crosses one half, is what a retrain uses."""
    s, y = np.asarray(score, float), np.asarray(y, float)
    w = np.ones_like(s) if weight is None else np.asarray(weight, float)
    if s.size == 0 or (w * y).sum() < 2 or (w * (1 - y)).sum() < 2:
        return None
    mu = float(np.average(s, weights=w))
    sd = float(np.sqrt(np.average((s - mu) ** 2, weights=w)))
    if not sd > 0:
        return None
    x = np.column_stack([np.ones_like(s), (s - mu) / sd])
    beta = np.zeros(2)
    penalty = np.diag([0.0, ridge * w.sum()])
    for _ in range(iters):
        p = 0.5 * (1.0 + np.tanh(0.5 * (x @ beta)))
        grad = x.T @ (w * (y - p)) - penalty @ beta
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + penalty
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return None
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    a, b = beta
    if not (np.isfinite(beta).all() and b > 0):
        return None
    grad = np.array([-1.0 / b, a / b**2])  # of c = -a/b, in standard units
    se = sd * math.sqrt(max(float(grad @ np.linalg.solve(hess, grad)), 0.0))
    return float(mu - a * sd / b), float(b / sd), se


def realigning_shift(c: float, k: float, tau: float, c_fp: float = 1.0, c_fn: float = 1.0) -> float:
    """The shift that moves the raw score where acting and holding cost the same onto ``tau``."""
    p = c_fp / (c_fp + c_fn)
    indifferent = c + math.log(p / (1 - p)) / k if 0 < p < 1 else c
    return tau - indifferent
