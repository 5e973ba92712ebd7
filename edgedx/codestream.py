"""Checks on declared image sizes that both decoders (rasters in :mod:`edgedx.decode`, DICOM in
:mod:`edgedx.dicom`) apply before any pixel is decoded. JPEG codestream checks live in
:mod:`edgedx.jpeg`, the one-line message helper in :mod:`edgedx.text`.
"""

from __future__ import annotations

from edgedx.errors import InputError


def check_pixels(width: int, height: int, max_pixels: int, what: str = "image", frames: int = 1) -> None:
    """Refuse a declared size that is empty or exceeds ``max_pixels`` (before decoding anything).

    Raises:
        InputError: with both numbers, so the user knows what to raise the limit to.
    """
    size = f"{width}x{height}" + (f"x{frames} frames" if frames > 1 else "")
    if width <= 0 or height <= 0 or frames <= 0:
        raise InputError(f"malformed {what}: header declares {size} pixels")
    if width * height * frames > max_pixels:
        raise InputError(
            f"{what} too large: {size} = {width * height * frames:,} pixels exceeds the limit of "
            f"{max_pixels:,} (DecodeOptions.max_pixels)"
        )
