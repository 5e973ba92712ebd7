"""Target ``decode``: arbitrary file content through :func:`edgedx.decode.decode_bytes`.

The input is the file's bytes (raster images and small DICOM files as seeds); its last byte picks
the decode options, so the reduced-scale and gray JPEG paths and multi-frame DICOM are covered too.
A decoded image must be well formed and small enough, and its model input finite.
"""

from __future__ import annotations

import numpy as np

from edgedx.decode import Decoded, DecodeOptions, decode_bytes
from edgedx.preprocess import PreprocessSpec, apply
from tests.fuzz import seeds as seedmod
from tests.fuzz.common import Finding, expect_edgedx_error

MAX_PIXELS = 1 << 22  # 4 Mpx: a bomb past it must be refused from the header, before allocation
OPTIONS = (
    DecodeOptions(max_pixels=MAX_PIXELS),
    DecodeOptions(max_pixels=MAX_PIXELS, target_size=(8, 8), target_channels=1),
    DecodeOptions(max_pixels=MAX_PIXELS, target_size=(4, 6), target_channels=3),
    DecodeOptions(max_pixels=MAX_PIXELS, all_frames=True),
)
_SPECS = (PreprocessSpec(8, 8, 1, mean=(0.5,), std=(0.25,)), PreprocessSpec(6, 5, 3, resize="letterbox"))


def seeds() -> list[bytes]:
    return [*seedmod.raster(), *seedmod.made_dicoms(), *seedmod.real_dicoms()]


def options_for(data: bytes) -> DecodeOptions:
    return OPTIONS[data[-1] % len(OPTIONS)] if data else OPTIONS[0]


def one_input(data: bytes) -> None:
    options = options_for(data)
    out = expect_edgedx_error(lambda: decode_bytes(data, options))
    if out is not None:
        check_decoded(out, options)


def check_decoded(out: object, options: DecodeOptions) -> None:
    """What decode_bytes returns: Decoded images edgedx.preprocess accepts, within the pixel limit."""
    if not isinstance(out, list) or not out or not all(isinstance(d, Decoded) for d in out):
        raise Finding(f"decode_bytes returned {type(out).__name__} {out!r:.200}")
    if len(out) > 1 and not options.all_frames:
        raise Finding(f"{len(out)} images without all_frames")
    total = 0
    for d in out:
        img = d.image
        if not isinstance(img, np.ndarray) or img.dtype not in (np.uint8, np.uint16, np.float32):
            raise Finding(f"image of type {getattr(img, 'dtype', type(img))}")
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3) or 0 in img.shape:
            raise Finding(f"image of shape {img.shape}")
        if img.dtype == np.float32 and not (np.isfinite(img).all() and img.min() >= -1e-3 and img.max() <= 255.001):
            raise Finding(f"float image outside the finite 0..255 display range: {img.min()}..{img.max()}")
        total += img.shape[0] * img.shape[1]
        for spec in _SPECS:
            x = expect_edgedx_error(lambda img=img, spec=spec: apply(img, spec))
            if x is None or not np.isfinite(x).all():
                raise Finding(f"a decoded image's model input is refused or not finite ({img.dtype} {img.shape})")
    if total > options.max_pixels:
        raise Finding(f"{total} pixels decoded, over max_pixels {options.max_pixels}")
