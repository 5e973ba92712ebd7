"""Out-of-distribution score from the model's own penultimate features.

A low-rank Mahalanobis distance: the training images' pooled features (the graph output named by
the manifest's ``output.features``) are summarised at export by their mean (and optionally each
feature's spread, ``scale``), the top ``k`` principal directions with shrunk variances, and one variance for
everything outside those directions. At run time::

    z = (f - mean) / scale          # scale: 1 unless the fit standardised the features
    score = (sum_i (u_i . z)^2 / var_i + |z - sum_i (u_i . z) u_i|^2 / residual_variance) / C

about 1 for a typical training image, and much larger for inputs whose features the model never
produced in training (noise, other body parts, other modalities). The manifest's ``ood`` section
holds the parameters and the ``threshold``, set at export so that only a small share of shifted
validation chest X-rays exceed it; above it the input gate abstains with reason
``out_of_distribution``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

METHOD = "lowrank_mahalanobis"
KEYS = ("method", "mean", "components", "variances", "residual_variance", "threshold")


def fit(features: np.ndarray, rank: int = 16, shrinkage: float = 0.1, standardize: bool = False) -> dict[str, Any]:
    """Parameters of the score from (N, C) training features (no threshold yet).

    ``shrinkage`` pulls the kept variances toward their mean (a Ledoit-Wolf style guard against
    tiny variances from a finite sample); the residual variance is the mean of the rest, floored.
    ``standardize`` divides each feature by its spread first. Off by default: on the bundled
    model it let nearly silent channels decide and rejected less noise and fewer leg radiographs
    (rank 16 without it rejected all noise images and scored the leg CR at 2.3x the threshold).
    """
    x = np.asarray(features, np.float64)
    n, c = x.shape
    # Standardise each feature: without it the few high-variance channels decide the principal
    # directions and off-distribution changes in the quiet ones go unseen.
    scale = x.std(0) if standardize else np.ones(c)
    scale = np.where(scale > 1e-6 * max(float(scale.max()), 1e-12), scale, max(float(scale.max()), 1.0))
    x = x / scale
    rank = max(1, min(rank, c - 1, n - 1))
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    eig = s**2 / max(1, n - 1)
    kept = eig[:rank]
    variances = (1 - shrinkage) * kept + shrinkage * kept.mean()
    rest = eig[rank:]
    residual = float(max(rest.mean() if rest.size else 0.0, 1e-6 * kept.mean(), 1e-12))
    return {
        "method": METHOD,
        "mean": _rounded(mean * scale),
        **({"scale": _rounded(scale)} if standardize else {}),
        "components": [_rounded(v) for v in vt[:rank]],
        "variances": _rounded(variances),
        "residual_variance": float(f"{residual:.6g}"),
    }


def _rounded(v: np.ndarray) -> list[float]:
    return [float(f"{x:.6g}") for x in np.asarray(v, np.float64)]


class Scorer:
    """The score of :mod:`edgedx.ood` from a manifest's ``ood`` section."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.mean = np.asarray(params["mean"], np.float64)
        self.scale = np.asarray(params.get("scale", np.ones_like(self.mean)), np.float64)
        self.components = np.asarray(params["components"], np.float64)
        self.variances = np.asarray(params["variances"], np.float64)
        self.residual = float(params["residual_variance"])
        self.threshold = params.get("threshold")

    def score(self, features: np.ndarray) -> np.ndarray:
        """(N, C) or (C,) features -> (N,) or scalar scores."""
        f = np.asarray(features, np.float64)
        single = f.ndim == 1
        z = (f.reshape(-1, self.mean.size) - self.mean) / self.scale
        proj = z @ self.components.T
        inside = (proj**2 / self.variances).sum(1)
        outside = np.maximum((z**2).sum(1) - (proj**2).sum(1), 0.0) / self.residual
        s = (inside + outside) / self.mean.size
        return float(s[0]) if single else s

    def reason(self, score: float) -> str | None:
        """The rejection detail when ``score`` is past the threshold, else None."""
        if self.threshold is None or score <= self.threshold:
            return None
        return f"feature distance {score:.3g} is past the model's training-distribution limit {self.threshold:.3g}"


def validate(section: Any, features_output: str | None) -> list[str]:
    """Problems in a manifest's ``ood`` section."""
    if not isinstance(section, Mapping):
        return ["ood: must be an object"]
    problems = [f"ood.{k}: missing" for k in KEYS if k not in section]
    if problems:
        return problems
    if section["method"] != METHOD:
        problems.append(f"ood.method: this edgedx knows {METHOD!r}, got {section['method']!r}")
    if not features_output:
        problems.append("ood: needs output.features, the graph output it scores")
    try:
        mean = np.asarray(section["mean"], np.float64)
        comps = np.asarray(section["components"], np.float64)
        var = np.asarray(section["variances"], np.float64)
        scale = np.asarray(section.get("scale", np.ones_like(mean)), np.float64)
        if mean.ndim != 1 or comps.ndim != 2 or comps.shape[1] != mean.size or var.shape != (comps.shape[0],) or scale.shape != mean.shape:
            problems.append("ood: mean (C), scale (C), components (k, C) and variances (k) do not fit together")
        elif not (np.isfinite(mean).all() and np.isfinite(comps).all() and (var > 0).all() and (scale > 0).all()):
            problems.append("ood: parameters must be finite, variances and scales positive")
        res, thr = section["residual_variance"], section["threshold"]
        if not (isinstance(res, (int, float)) and res > 0):
            problems.append("ood.residual_variance: must be a positive number")
        if thr is not None and not (isinstance(thr, (int, float)) and not isinstance(thr, bool) and thr > 0):
            problems.append("ood.threshold: must be a positive number or null")
    except (TypeError, ValueError):
        problems.append("ood: mean, components and variances must be numbers")
    return problems
