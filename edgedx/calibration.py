"""Probability calibration in numpy: fitted on the workstation, stored in the manifest, applied by
:func:`edgedx.postprocess.probabilities` for every backend.

Two methods, both on the model's log-probabilities ``L`` (log-softmax of softmax logits; for a
one-unit sigmoid, ``log sigmoid(±z)``):

- ``platt`` (binary models): ``p_pos = sigmoid(a * (L_pos - L_other) + b)``; for softmax logits the
  margin is the logit difference, for a one-unit sigmoid the logit itself.
- ``temperature`` (any model with softmax): ``p = softmax(L / T)``; the arg-max never changes.

Manifest section::

    "calibration": {"method": "platt", "a": 1.31, "b": -0.42, "n": 524, "fitted_on": "val.npz"}
    "calibration": {"method": "temperature", "temperature": 1.7, "n": 120}
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

METHODS = ("platt", "temperature")
#: Bounds on the fitted slope (Platt) and temperature: a small or separable set cannot run off.
SLOPE_RANGE = (0.001, 20.0)
TEMPERATURE_RANGE = (0.05, 20.0)


def validate(section: Mapping[str, Any], labels: Sequence[str], positive: str | None, activation: str) -> list[str]:
    """Problems in a manifest's ``calibration`` section (for manifest validation)."""
    method = section.get("method")
    if method not in METHODS:
        return [f"calibration.method: must be one of {list(METHODS)}, got {method!r}"]
    problems = []
    if method == "platt":
        if positive is None:
            problems.append("calibration: platt scaling is for binary models with a positive_label")
        for key in ("a", "b"):
            if not _finite(section.get(key)):
                problems.append(f"calibration.{key}: must be a finite number, got {section.get(key)!r}")
    else:
        t = section.get("temperature")
        if not _finite(t) or t <= 0:
            problems.append(f"calibration.temperature: must be a finite number > 0, got {t!r}")
        if activation == "sigmoid" and not (len(labels) == 2 and positive is not None):
            problems.append("calibration: temperature scaling needs exclusive classes (softmax), not independent sigmoid outputs")
    return problems


def log_probabilities(raw: np.ndarray, probs: np.ndarray, activation: str, positive_index: int | None) -> np.ndarray:
    """(N, K) log-probabilities in label order, computed from the logits where there are logits."""
    raw = np.asarray(raw, np.float64).reshape(raw.shape[0], -1)
    if activation == "softmax":
        z = raw - raw.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    if activation == "sigmoid" and raw.shape[1] == 1 and probs.shape[1] == 2:
        pos = 1 if positive_index is None else positive_index
        out = np.empty((raw.shape[0], 2))
        out[:, pos] = -np.logaddexp(0.0, -raw[:, 0])
        out[:, 1 - pos] = -np.logaddexp(0.0, raw[:, 0])
        return out
    return np.log(np.clip(probs, 1e-300, None))


def apply(section: Mapping[str, Any], logp: np.ndarray, positive_index: int | None) -> np.ndarray:
    """Calibrated probabilities from log-probabilities ``logp`` (N, K)."""
    if not section:
        return np.exp(logp)
    if section["method"] == "platt":
        assert positive_index is not None
        margin = logp[:, positive_index] - logp[:, 1 - positive_index]
        p = sigmoid(float(section["a"]) * margin + float(section["b"]))
        out = np.empty_like(logp)
        out[:, positive_index], out[:, 1 - positive_index] = p, 1.0 - p
        return out
    return softmax(logp / float(section["temperature"]))


def fit_platt(margin: np.ndarray, positive: np.ndarray, prior: float = 1.0) -> tuple[float, float]:
    """Logistic fit p = sigmoid(a * margin + b) (margin: positive minus other log-probability).

    Newton's method with a backtracking line search on the penalized log-loss; a Gaussian prior pulls
    (a, b) toward the identity (1, 0), so a small or separable validation set cannot send the scale to
    infinity. a is kept within :data:`SLOPE_RANGE` all the same.
    """
    x = np.stack([np.asarray(margin, np.float64), np.ones(len(margin))], 1)
    y = np.asarray(positive, np.float64)
    centre = np.array([1.0, 0.0])

    def loss(w: np.ndarray) -> float:
        z = x @ w
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * prior * np.sum((w - centre) ** 2))

    w = centre.copy()
    for _ in range(100):
        p = sigmoid(x @ w)
        grad = x.T @ (p - y) + prior * (w - centre)
        hess = (x * (p * (1 - p))[:, None]).T @ x + prior * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t, current = 1.0, loss(w)
        while loss(w - t * step) > current - 1e-4 * t * grad @ step and t > 1e-8:
            t *= 0.5
        w = w - t * step
        if np.abs(t * step).max() < 1e-10:
            break
    a = float(np.clip(w[0], *SLOPE_RANGE))
    b = float(w[1])
    if a != w[0]:  # clipped: refit the intercept for the slope kept
        for _ in range(50):
            p = sigmoid(a * x[:, 0] + b)
            step = (np.sum(p - y) + prior * b) / (np.sum(p * (1 - p)) + prior)
            b -= step
            if abs(step) < 1e-12:
                break
    return a, float(b)


def fit_temperature(logp: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T minimizing the log-loss of softmax(logp / T) (golden-section search on log T)."""
    logp = np.asarray(logp, np.float64)
    targets = np.asarray(targets, int)

    def nll(log_t: float) -> float:
        z = logp / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), targets]))

    lo, hi = math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])
    g = (math.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = nll(c), nll(d)
    for _ in range(80):
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = nll(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = nll(d)
    return float(math.exp((lo + hi) / 2))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """A sigmoid that cannot overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
