"""File -> decoded image array + source information.

Output contract (what :mod:`edgedx.preprocess` accepts): HxW (gray) or HxWx3 (RGB order) arrays,
uint8, uint16, or float32 in the 0..255 display range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgedx.errors import InputError

DEFAULT_MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class SourceInfo:
    """What the file was; never patient data."""

    format: str
    width: int
    height: int
    channels: int
    bit_depth: int
    frame: int | None = None
    frames: int = 1
    photometric: str | None = None
    modality: str | None = None
    transfer_syntax: str | None = None


@dataclass(frozen=True)
class DecodeOptions:
    """Args:
    window: DICOM window (center, width) overriding the file's VOI.
    all_frames: decode every frame of a multi-frame DICOM, not only the first.
    max_pixels: refuse images with more pixels than this (decompression bombs).
    """

    window: tuple[float, float] | None = None
    all_frames: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray
    info: SourceInfo


def decode_file(path: str | Path, options: DecodeOptions = DecodeOptions()) -> list[Decoded]:
    """Decode one file; a list because a multi-frame DICOM may give several images.

    Raises:
        InputError: the file cannot be read or decoded.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_bytes(data, options)


def decode_bytes(data: bytes, options: DecodeOptions = DecodeOptions()) -> list[Decoded]:
    if not data:
        raise InputError("empty file")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise InputError(f"cannot decode image: {str(exc).strip().splitlines()[-1]}") from None
    if img is None:
        raise InputError("not a decodable image")
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    info = SourceInfo("image", w, h, 1 if img.ndim == 2 else 3, img.dtype.itemsize * 8)
    return [Decoded(img, info)]
