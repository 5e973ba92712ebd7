"""Acquisition shift, in the pixel domain: the training augmentation and a shifted validation set.

Both work on decoded gray images (float32, 0..255), before :func:`edgedx.preprocess.apply`.

- :class:`Augmenter` is what training draws from every time it sees an image: random resized crops
  with aspect jitter (and some zoom-out), small rotations, flips, exposure (gamma, contrast,
  brightness), lower resolution, blur and noise.
- :func:`shifted_copy` builds a *fixed* second validation set from the held-out patients: every
  image changed once, with a seeded draw of framing (crop or zoom-out, aspect change), exposure,
  contrast, gamma, resampling or blur, and processing the training never applies (sharpening,
  JPEG re-encoding), at another class mix (62.5% positive by default). It imitates the kind of
  acquisition shift a new site brings, without touching any test data; it is no substitute for a
  real test set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

#: Interpolations a scanner or PACS may have used to resample an image.
_INTERPOLATIONS = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST)


def _crop_matrix(r: np.random.Generator, w: int, h: int, scale: tuple[float, float], log_ratio: float,
                 angle: float) -> np.ndarray:
    """Affine matrix mapping a random box (area fraction in ``scale``, aspect ratio jittered by
    exp(+-log_ratio)) to the full output, with a rotation about the box centre.

    Area fractions above 1 zoom out: the box is larger than the image and the border is padded.
    """
    area = r.uniform(*scale)
    ratio = math.exp(r.uniform(-log_ratio, log_ratio))
    bw, bh = w * math.sqrt(area * ratio), h * math.sqrt(area / ratio)
    # Box centre: anywhere the box still covers the image centre region.
    cx = w / 2 + r.uniform(-1, 1) * abs(w - bw) / 2
    cy = h / 2 + r.uniform(-1, 1) * abs(h - bh) / 2
    sx, sy = w / bw, h / bh
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # out = S R (in - centre) + (w/2, h/2)
    m = np.array([[sx * c, sx * s, 0.0], [-sy * s, sy * c, 0.0]])
    m[:, 2] = np.array([w / 2, h / 2]) - m[:, :2] @ np.array([cx, cy])
    return m


def _exposure(x: np.ndarray, gamma: float, contrast: float, brightness: float) -> np.ndarray:
    x = 255.0 * (np.clip(x, 0, 255) / 255.0) ** gamma
    mean = float(x.mean())
    return (x - mean) * contrast + mean + brightness


class Augmenter:
    """Random geometry and acquisition changes in the pixel domain (float32, 0..255).

    Args:
        rng: the random source (seeded by the caller, so a run reproduces).
        strength: scales every range (0 turns augmentation nearly off).
        crop_scale: area fractions of the random resized crop; above 1 zooms out.
    """

    def __init__(self, rng: np.random.Generator, strength: float = 1.0, crop_scale: tuple[float, float] = (0.4, 1.0)) -> None:
        self.rng, self.s, self.crop_scale = rng, strength, crop_scale

    def __call__(self, img: np.ndarray) -> np.ndarray:
        r, s = self.rng, self.s
        h, w = img.shape[:2]
        x = img.astype(np.float32)
        angle = r.uniform(-10, 10) * s
        if r.random() < 0.8:  # random resized crop with aspect jitter
            lo, hi = self.crop_scale
            m = _crop_matrix(r, w, h, (1 - (1 - lo) * s, hi), math.log(4 / 3) * s, angle)
        else:  # zoom out: the whole image smaller, with a border
            m = _crop_matrix(r, w, h, (1.0, 1 + 0.5 * s), math.log(1.15) * s, angle)
        x = cv2.warpAffine(x, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if r.random() < 0.5:
            x = x[:, ::-1]
        if r.random() < 0.9:  # exposure and contrast
            x = _exposure(x, math.exp(r.uniform(-0.5, 0.5) * s), r.uniform(1 - 0.35 * s, 1 + 0.35 * s), r.uniform(-30, 30) * s)
        if r.random() < 0.3 * s:  # lower acquisition resolution
            f = r.uniform(0.35, 0.75)
            small = cv2.resize(x, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
            x = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        elif r.random() < 0.2 * s:
            x = cv2.GaussianBlur(x, (0, 0), r.uniform(0.5, 1.5))
        if r.random() < 0.2 * s:
            x = x + r.normal(0, r.uniform(2, 8), x.shape).astype(np.float32)
        return np.ascontiguousarray(np.clip(x, 0, 255), dtype=np.float32)


@dataclass(frozen=True)
class ShiftSpec:
    """Ranges of the shifted validation set (every image gets one draw of each)."""

    positive_fraction: float = 0.625
    crop_scale: tuple[float, float] = (0.55, 1.0)
    zoom_out: tuple[float, float] = (1.0, 1.35)
    zoom_out_p: float = 0.3
    log_ratio: float = math.log(1.3)
    gamma: float = 0.6          # gamma = exp(U(-g, g))
    contrast: float = 0.4       # factor U(1 - c, 1 + c)
    brightness: float = 35.0
    resample_p: float = 0.5     # down/up-sampling with a random interpolation
    blur_p: float = 0.25
    sharpen_p: float = 0.25     # unsharp mask: vendor edge enhancement, never seen in training
    jpeg_p: float = 0.4         # re-encoded at JPEG quality 30..80


def shifted_image(img: np.ndarray, r: np.random.Generator, spec: ShiftSpec = ShiftSpec()) -> np.ndarray:
    """One shifted copy of ``img`` (gray, 0..255), drawn from ``r``; uint8 like a stored scan."""
    h, w = img.shape[:2]
    x = img.astype(np.float32)
    if r.random() < spec.zoom_out_p:
        m = _crop_matrix(r, w, h, spec.zoom_out, spec.log_ratio, r.uniform(-5, 5))
    else:
        m = _crop_matrix(r, w, h, spec.crop_scale, spec.log_ratio, r.uniform(-5, 5))
    x = cv2.warpAffine(x, m, (w, h), flags=int(r.choice(_INTERPOLATIONS[1:3])), borderMode=cv2.BORDER_CONSTANT,
                       borderValue=float(r.uniform(0, 20)))
    x = _exposure(x, math.exp(r.uniform(-spec.gamma, spec.gamma)), r.uniform(1 - spec.contrast, 1 + spec.contrast),
                  r.uniform(-spec.brightness, spec.brightness))
    if r.random() < spec.resample_p:
        f = r.uniform(0.3, 0.7)
        small = cv2.resize(x, (max(8, int(w * f)), max(8, int(h * f))), interpolation=int(r.choice(_INTERPOLATIONS)))
        x = cv2.resize(small, (w, h), interpolation=int(r.choice(_INTERPOLATIONS[1:3])))
    if r.random() < spec.blur_p:
        x = cv2.GaussianBlur(x, (0, 0), r.uniform(0.6, 2.0))
    if r.random() < spec.sharpen_p:
        x = x + r.uniform(0.5, 1.5) * (x - cv2.GaussianBlur(x, (0, 0), r.uniform(1.0, 3.0)))
    out = np.clip(x, 0, 255).round().astype(np.uint8)
    if r.random() < spec.jpeg_p:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(r.integers(30, 81))])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return out


def class_mix(labels: np.ndarray, positive: int, fraction: float, r: np.random.Generator) -> np.ndarray:
    """Indices of a subset of ``labels`` whose positive share is ``fraction``, dropping as few as possible."""
    pos, neg = np.flatnonzero(labels == positive), np.flatnonzero(labels != positive)
    if not len(pos) or not len(neg):
        return np.arange(len(labels))
    if len(pos) / len(labels) > fraction:
        pos = r.choice(pos, max(1, round(fraction / (1 - fraction) * len(neg))), replace=False)
    else:
        neg = r.choice(neg, max(1, round((1 - fraction) / fraction * len(pos))), replace=False)
    return np.sort(np.concatenate([pos, neg]))


def shifted_copy(images: list[np.ndarray], labels: np.ndarray, positive: int | None, seed: int,
                 spec: ShiftSpec = ShiftSpec()) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The shifted validation set: (images, labels, indices into the originals), reproducible from ``seed``."""
    r = np.random.default_rng(seed)
    idx = class_mix(labels, positive, spec.positive_fraction, r) if positive is not None else np.arange(len(labels))
    gray = [images[i] if images[i].ndim == 2 else cv2.cvtColor(np.asarray(images[i]), cv2.COLOR_RGB2GRAY) for i in idx]
    return [shifted_image(g, r, spec) for g in gray], labels[idx], idx
