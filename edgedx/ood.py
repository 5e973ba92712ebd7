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

A second, optional part (``ood.layout``) scores the **image layout**: the input as the model sees
it (after decoding and resizing), averaged down to ``size`` x ``size`` cells and standardised per
image (so exposure and contrast do not count), against the same kind of low-rank Gaussian fitted
on training images. Every chest radiograph shares one coarse layout (two dark lung fields either
side of a bright mediastinum); an ultrasound, a fundus photograph or noise does not, even when the
model's penultimate features happen to land near chest X-rays (blurred or upscaled images do).
It needs no graph output, so it runs on every backend, before inference.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

METHOD = "lowrank_mahalanobis"
KEYS = ("method", "mean", "components", "variances", "residual_variance", "threshold")
LAYOUT_SIZE = 8
LAYOUT_RANK = 4


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


def layout(pixels: np.ndarray, size: int = LAYOUT_SIZE) -> np.ndarray:
    """The image-layout vector (``size * size``) of resized pixels (H, W) or (H, W, C), any dtype:
    the gray image averaged over ``size`` x ``size`` cells, standardised to mean 0 and spread 1."""
    img = np.asarray(pixels, np.float32)
    if img.ndim == 3:
        img = img.mean(2)
    cells = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).reshape(-1).astype(np.float64)
    return (cells - cells.mean()) / (cells.std() + 1e-3)


def fit_layout(samples: list[np.ndarray] | np.ndarray, size: int = LAYOUT_SIZE, rank: int = LAYOUT_RANK) -> dict[str, Any]:
    """The ``ood.layout`` parameters (no threshold yet) from training images resized as the model takes them.

    Rank 4 of 64 cells: the few directions chest X-rays vary along (position, zoom, rotation) are
    allowed for; anything else counts against the image. Chosen on the bundled model's validation
    images against upscaled BreastMNIST ultrasound (see docs/trust.md).
    """
    vectors = np.stack([layout(s, size) for s in samples])
    return {"size": size, **fit(vectors, rank=rank)}


def _rounded(v: np.ndarray) -> list[float]:
    return [float(f"{x:.6g}") for x in np.asarray(v, np.float64)]


class Scorer:
    """The score of :mod:`edgedx.ood` from a manifest's ``ood`` section."""

    def __init__(self, params: Mapping[str, Any], what: str = "feature distance") -> None:
        self.what = what
        self.size = int(params.get("size", 0))
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
        return f"{self.what} {score:.3g} is past the model's training-distribution limit {self.threshold:.3g}"


def layout_scorer(section: Mapping[str, Any]) -> Scorer | None:
    """The image-layout part of a manifest's ``ood`` section, or None."""
    part = section.get("layout") if section else None
    return Scorer(part, what="image layout distance") if part else None


def validate(section: Any, features_output: str | None) -> list[str]:
    """Problems in a manifest's ``ood`` section."""
    if not isinstance(section, Mapping):
        return ["ood: must be an object"]
    problems = [f"ood.{k}: missing" for k in KEYS if k not in section]
    if problems:
        return problems
    if not features_output:
        problems.append("ood: needs output.features, the graph output it scores")
    problems += _validate_part(section, "ood")
    if "layout" in section:
        part = section["layout"]
        if not isinstance(part, Mapping):
            return [*problems, "ood.layout: must be an object"]
        missing = [f"ood.layout.{k}: missing" for k in (*KEYS, "size") if k not in part]
        if missing:
            return problems + missing
        size = part["size"]
        if not (isinstance(size, int) and not isinstance(size, bool) and 2 <= size <= 64):
            problems.append("ood.layout.size: must be a whole number from 2 to 64")
        else:
            problems += _validate_part(part, "ood.layout", size * size)
    return problems


def _validate_part(section: Mapping[str, Any], where: str, width: int | None = None) -> list[str]:
    problems = []
    if section["method"] != METHOD:
        problems.append(f"{where}.method: this edgedx knows {METHOD!r}, got {section['method']!r}")
    try:
        mean = np.asarray(section["mean"], np.float64)
        comps = np.asarray(section["components"], np.float64)
        var = np.asarray(section["variances"], np.float64)
        scale = np.asarray(section.get("scale", np.ones_like(mean)), np.float64)
        if mean.ndim != 1 or comps.ndim != 2 or comps.shape[1] != mean.size or var.shape != (comps.shape[0],) or scale.shape != mean.shape:
            problems.append(f"{where}: mean (C), scale (C), components (k, C) and variances (k) do not fit together")
        elif width is not None and mean.size != width:
            problems.append(f"{where}: {mean.size} means for {width} layout cells")
        elif not (np.isfinite(mean).all() and np.isfinite(comps).all() and (var > 0).all() and (scale > 0).all()):
            problems.append(f"{where}: parameters must be finite, variances and scales positive")
        res, thr = section["residual_variance"], section["threshold"]
        if not (isinstance(res, (int, float)) and res > 0):
            problems.append(f"{where}.residual_variance: must be a positive number")
        if thr is not None and not (isinstance(thr, (int, float)) and not isinstance(thr, bool) and thr > 0):
            problems.append(f"{where}.threshold: must be a positive number or null")
    except (TypeError, ValueError):
        problems.append(f"{where}: mean, components and variances must be numbers")
    return problems
