"""The input gate: abstain, with a reason code, instead of a confident answer on an input the model
was never meant to see.

Two kinds of checks:
- what the manifest's ``accepts`` section declares: DICOM ``modalities``, ``photometric``
  interpretations, ``min_size`` (shorter side, pixels), ``channels`` of the file, ``color``
  judged from the pixels (an RGB image with three equal channels is gray), and
  ``dicom_conditions``: DICOM tag rules in the form of a MONAI Deploy series-selector
  ``conditions`` object (``{"BodyPartExamined": "(?i)^(CHEST|THORAX)$", "ViewPosition": ["PA", "AP"]}``:
  a string is a regular expression searched in the tag value, a list names the allowed values,
  case-insensitively; a file without the tag passes that rule); ``description`` is free text;
- content every model needs: not blank or constant, not saturated.

Reason codes are stable strings, documented in README.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np

#: Fraction of pixels at the extremes of the range above which an image counts as saturated.
SATURATED_FRACTION = 0.95
#: Pixel-value spread (0..255 domain) below which an image counts as constant.
CONSTANT_SPREAD = 2.0
#: Mean absolute difference between colour channels (0..255) up to which an RGB image counts as gray
#: (JPEG chroma rounding of a gray scan stays far below it).
GRAY_MEAN_DIFF = 3.0
#: ... and the fraction of sampled pixels allowed to differ by more than 12 levels.
GRAY_OUTLIER_FRACTION = 0.01
ACCEPTS_KEYS = ("modalities", "photometric", "min_size", "channels", "color", "dicom_conditions", "description")
#: DICOM keywords the ``dicom_conditions`` rules can test, and the SourceInfo field holding each.
DICOM_RULE_FIELDS = {"Modality": "modality", "BodyPartExamined": "body_part", "ViewPosition": "view_position",
                     "PhotometricInterpretation": "photometric"}


@dataclass(frozen=True)
class Rejection:
    code: str
    detail: str

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


def validate_accepts(accepts: Mapping[str, Any]) -> list[str]:
    """Problems in a manifest's ``accepts`` section (for manifest validation)."""
    problems = []
    for key, value in accepts.items():
        if key not in ACCEPTS_KEYS:
            problems.append(f"accepts.{key}: unknown key (known: {', '.join(ACCEPTS_KEYS)})")
        elif key == "min_size" and not (isinstance(value, int) and value >= 1):
            problems.append("accepts.min_size: must be a positive integer")
        elif key == "description":
            if not isinstance(value, str):
                problems.append("accepts.description: must be a string")
        elif key == "dicom_conditions":
            problems.extend(_validate_conditions(value))
        elif key == "color" and isinstance(value, list) and not set(value) <= {"gray", "color"}:
            problems.append('accepts.color: values must be "gray" or "color"')
        elif key not in ("min_size", "dicom_conditions") and not (isinstance(value, list) and value):
            problems.append(f"accepts.{key}: must be a non-empty list")
    return problems


def check(image: np.ndarray, info: Any | None, accepts: Mapping[str, Any]) -> Rejection | None:
    """The first reason to abstain on ``image`` (decoded, pixel domain), or None to go ahead.

    Args:
        image: HxW or HxWx3, uint8/uint16/float32 (0..255 display range for float).
        info: the decoder's SourceInfo, or None for a numpy frame.
        accepts: the manifest's ``accepts`` section.
    """
    modality = getattr(info, "modality", None)
    if "modalities" in accepts and getattr(info, "format", None) == "dicom":
        if modality not in accepts["modalities"]:
            return Rejection("modality_not_accepted", f"DICOM modality {modality or 'unknown'}; the model accepts {', '.join(accepts['modalities'])}")
    photometric = getattr(info, "photometric", None)
    if "photometric" in accepts and photometric is not None and photometric not in accepts["photometric"]:
        return Rejection("photometric_not_accepted", f"photometric interpretation {photometric}; the model accepts {', '.join(accepts['photometric'])}")
    # Size and channels of the file itself: the decoder may hand over a reduced or gray image.
    h, w = (info.height, info.width) if info is not None else image.shape[:2]
    if "min_size" in accepts and min(h, w) < accepts["min_size"]:
        return Rejection("too_small", f"{w}x{h} pixels; the model needs at least {accepts['min_size']} on the shorter side")
    channels = info.channels if info is not None else 1 if image.ndim == 2 else image.shape[2]
    if "channels" in accepts and channels not in accepts["channels"]:
        return Rejection("channels_not_accepted", f"{channels} channel(s); the model accepts {accepts['channels']}")
    dicom_rules = accepts.get("dicom_conditions") if getattr(info, "format", None) == "dicom" else None
    if dicom_rules and (rejected := _dicom_rules(info, dicom_rules)) is not None:
        return rejected
    if "color" in accepts:
        kind = pixel_color(image)
        if kind not in accepts["color"]:
            return Rejection("color_not_accepted", f"the pixels are {kind}; the model accepts {', '.join(accepts['color'])} images")
    return _content(image)


def pixel_color(image: np.ndarray) -> str:
    """``gray`` or ``color``, judged from the pixels: an RGB image whose channels agree is gray.

    Chest JPEGs are often stored as RGB with three identical channels; a file's channel count says
    nothing about whether it is a colour photograph.
    """
    if image.ndim == 2 or image.shape[2] == 1:
        return "gray"
    # A strided sample (about 64 a side, as _content uses) judges the channels' agreement as well as
    # every pixel does; the full image cost a third of a millisecond per 224 px scan.
    step = max(1, min(image.shape[:2]) // 64)
    view = image[::step, ::step, :3].astype(np.float32) * (255.0 / 65535.0 if image.dtype == np.uint16 else 1.0)
    diff = np.maximum(np.abs(view[..., 0] - view[..., 1]), np.abs(view[..., 1] - view[..., 2]))
    gray = float(diff.mean()) <= GRAY_MEAN_DIFF and float(np.mean(diff > 12.0)) <= GRAY_OUTLIER_FRACTION
    return "gray" if gray else "color"


def _validate_conditions(rules: Any) -> list[str]:
    import re

    if not isinstance(rules, Mapping) or not rules:
        return ["accepts.dicom_conditions: must be a non-empty object of DICOM keyword -> rule"]
    problems = []
    for keyword, rule in rules.items():
        where = f"accepts.dicom_conditions.{keyword}"
        if keyword not in DICOM_RULE_FIELDS:
            problems.append(f"{where}: unsupported keyword (supported: {', '.join(DICOM_RULE_FIELDS)})")
        elif isinstance(rule, str):
            try:
                re.compile(rule)
            except re.error as exc:
                problems.append(f"{where}: bad regular expression: {exc}")
        elif not (isinstance(rule, list) and rule and all(isinstance(v, str) for v in rule)):
            problems.append(f"{where}: must be a regular expression or a non-empty list of values")
    return problems


def _dicom_rules(info: Any, rules: Mapping[str, Any]) -> Rejection | None:
    import re

    for keyword, rule in rules.items():
        value = getattr(info, DICOM_RULE_FIELDS.get(keyword, ""), None)
        if not value:
            continue  # a file without the tag passes this rule
        ok = re.search(rule, value) is not None if isinstance(rule, str) else value.upper() in {v.upper() for v in rule}
        if not ok:
            wanted = rule if isinstance(rule, str) else ", ".join(rule)
            return Rejection("dicom_tag_not_accepted", f"DICOM {keyword} {value}; the model accepts {wanted}")
    return None


def _content(image: np.ndarray) -> Rejection | None:
    # A strided view (about 64 samples a side) is enough to judge spread and saturation.
    step = max(1, min(image.shape[:2]) // 64)
    view = image[::step, ::step]
    top = 65535.0 if image.dtype == np.uint16 else 255.0
    scale = 255.0 / top
    low_cut, high_cut = 0.5 / scale, top - 0.5 / scale
    if image.dtype in (np.uint8, np.uint16):
        # OpenCV's single-pass kernels on a compact copy: the same numbers, 5x faster than numpy's
        # reductions over a strided view (this runs once per input).
        view = np.ascontiguousarray(view).reshape(-1)
        lo, hi = (v * scale for v in cv2.minMaxLoc(view)[:2])
        inside = cv2.countNonZero(cv2.inRange(view, math.floor(low_cut) + 1, math.ceil(high_cut) - 1))  # integers strictly between the cuts
        extreme = (view.size - inside) / view.size
    else:
        lo, hi = float(view.min()) * scale, float(view.max()) * scale
        extreme = np.count_nonzero((view <= low_cut) | (view >= high_cut)) / view.size
    if hi - lo < CONSTANT_SPREAD:
        return Rejection("constant_image", "the image is blank or constant")
    if extreme > SATURATED_FRACTION:
        return Rejection("saturated_image", f"{extreme:.0%} of pixels are at black or white")
    return None
