"""Class-activation heatmaps: the model's input as it saw it, with where its score came from.

The map comes from the model graph itself (the manifest's ``output.cam``: per-class maps
``W_c . f(y, x)`` of a global-average-pooling + linear model, see :mod:`export.explain`). For a
binary screening model the map shown is the positive class's minus the other's, the spatial
layout of the decision margin; for other models, the decided label's map. Only the positive part
counts (where the evidence for the answer lies).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

#: Width of the border band, as a fraction of each side, for :func:`border_mass`.
BORDER = 0.1
#: Side of each corner square, as a fraction of each side.
CORNER = 0.2


def decision_map(cam: np.ndarray, positive_index: int | None, label_index: int) -> np.ndarray:
    """(K, h, w) class maps -> the (h, w) map of the decision, positive part only."""
    cam = np.asarray(cam, np.float32)
    if positive_index is not None and cam.shape[0] == 2:
        m = cam[positive_index] - cam[1 - positive_index]
        if label_index != positive_index:
            m = -m  # evidence for the negative answer
    else:
        m = cam[label_index]
    return np.maximum(m, 0.0)


def upsample(m: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.maximum(cv2.resize(m.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC), 0.0)


def overlay(pixels: np.ndarray, m: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """BGR uint8 picture: ``pixels`` (the resized model input, gray or RGB, 0..255) under the map."""
    img = np.clip(np.asarray(pixels, np.float32), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    base = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    h, w = base.shape[:2]
    big = upsample(m, w, h)
    peak = float(big.max())
    norm = (big / peak * 255.0).astype(np.uint8) if peak > 0 else np.zeros((h, w), np.uint8)
    color = cv2.applyColorMap(norm, cv2.COLORMAP_JET)
    weight = (alpha * norm.astype(np.float32) / 255.0)[..., None]
    return (base * (1 - weight) + color * weight).astype(np.uint8)


def file_name(path: str | None, frame: int | None, index: int) -> str:
    """A PNG name unique per input: the file's stem plus a hash of its absolute path (and frame).

    Two ``scan.png`` files in different folders get different names; a numpy frame is named by
    its position in the call.
    """
    if path is None:
        return f"array-{index:06d}.png"
    key = os.path.abspath(path) + ("" if frame is None else f"#{frame}")
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(path).stem)[:60] or "input"
    return f"{stem}{'' if frame is None else f'-f{frame}'}-{digest}.png"


def write(directory: str | Path, name: str, picture: np.ndarray) -> str:
    """Write ``picture`` as ``directory/name`` (atomically: temp file, then rename); returns the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    tmp = directory / f".{name}.{os.getpid()}.tmp.png"
    if not cv2.imwrite(str(tmp), picture):
        raise OSError(f"cannot write {tmp}")
    os.replace(tmp, target)
    return str(target)


def border_mass(m: np.ndarray, size: int = 224) -> dict[str, float]:
    """Share of the map's mass on the image border band and in the corners (upsampled to ``size``).

    A model that reads text markers, collimation edges or exposure at the frame puts its mass
    there; a uniform map would give the band's and corners' area shares, also returned.
    """
    big = upsample(m, size, size)
    total = float(big.sum())
    b, c = max(1, round(size * BORDER)), max(1, round(size * CORNER))
    band = np.ones((size, size), bool)
    band[b:-b, b:-b] = False
    corners = np.zeros((size, size), bool)
    for ys in (slice(0, c), slice(-c, None)):
        for xs in (slice(0, c), slice(-c, None)):
            corners[ys, xs] = True
    if total <= 0:
        return {"border": 0.0, "corners": 0.0, "border_area": float(band.mean()), "corners_area": float(corners.mean())}
    return {"border": float(big[band].sum() / total), "corners": float(big[corners].sum() / total),
            "border_area": float(band.mean()), "corners_area": float(corners.mean())}


def summarize(classifier: Any, dataset: Any, batch_size: int = 32) -> dict[str, Any]:
    """Over a labelled dataset: the mean share of each decision map's mass on the border band and in
    the corners, overall and per true label, beside what a uniform map would give.

    A shortcut detector, cheap and blunt: a model reading text markers, collimation edges or the
    frame puts its evidence there.

    Raises:
        UsageError: the model has no CAM output, or its backend cannot return it.
    """
    from edgedx import postprocess, preprocess
    from edgedx.errors import InputError, UsageError

    m = classifier.manifest
    session = classifier.session
    if not m.cam_output or m.cam_output not in {t.name for t in session.outputs}:
        raise UsageError("--heatmap-summary needs a model with a class-activation-map output (output.cam in its manifest)")
    if not session.supports_extra_outputs:
        raise UsageError(f"the {session.name} backend cannot return the model's CAM output yet; use --backend onnxruntime")
    rows: list[tuple[int, dict[str, float]]] = []
    skipped = 0

    def flush(images: list[np.ndarray], targets: list[int]) -> None:
        batch = preprocess.apply_batch(images, m.preprocess)
        raw, extras = session.run_with(batch, (m.cam_output,))
        preds = postprocess.decide(postprocess.probabilities(raw, m), m, getattr(classifier, "threshold", None))
        for cam, pred, target in zip(extras[m.cam_output], preds, targets):
            share = border_mass(decision_map(cam, m.positive_index, m.labels.index(pred.label)), m.preprocess.width)
            rows.append((target, share))

    images: list[np.ndarray] = []
    targets: list[int] = []
    for i in range(len(dataset)):
        try:
            images.append(dataset.image(i))
        except InputError:
            skipped += 1
            continue
        targets.append(int(dataset.targets[i]))
        if len(images) == batch_size:
            flush(images, targets)
            images, targets = [], []
    if images:
        flush(images, targets)
    if not rows:
        raise UsageError("no image could be read")

    def mean(part: list[dict[str, float]]) -> dict[str, float]:
        return {k: float(np.mean([r[k] for r in part])) for k in ("border", "corners")} | {"n": len(part)}

    shares = [r for _, r in rows]
    return {
        "border_band": BORDER, "corner_square": CORNER,
        "uniform": {"border": shares[0]["border_area"], "corners": shares[0]["corners_area"]},
        "all": mean(shares),
        "by_label": {label: mean([r for t, r in rows if t == k]) for k, label in enumerate(m.labels) if any(t == k for t, _ in rows)},
        "border_heavy": float(np.mean([r["border"] > 2 * r["border_area"] for r in shares])),
        "skipped": skipped,
    }
