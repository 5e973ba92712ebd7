"""Checks on image codestreams and headers that both decoders (rasters in :mod:`edgedx.decode`,
DICOM in :mod:`edgedx.dicom`) apply before any pixel is decoded, and the one-line message helper.

Pure Python (struct): no OpenCV, no pydicom.
"""

from __future__ import annotations

import struct

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


#: Scans a JPEG may have. libjpeg makes up to 10 for a progressive color image; each scan is a pass
#: over the whole image, so a 94 kB file repeating a refinement scan 1,000 times over 4000x4000
#: pixels took 6.6 s to decode (a decoding-time bomb the pixel limit does not catch).
MAX_JPEG_SCANS = 100


def check_jpeg_scans(data: bytes | memoryview, what: str = "JPEG") -> None:
    """Refuse a JPEG stream with more than :data:`MAX_JPEG_SCANS` scans (SOS markers).

    Counted from the first SOS: entropy-coded data never holds FF DA (an FF there is followed by 00
    or a restart marker), and an EXIF thumbnail's own scans come before it.
    """
    data = bytes(data)
    scans = data.count(b"\xff\xda", max(data.find(b"\xff\xda"), 0))
    if scans > MAX_JPEG_SCANS:
        raise InputError(f"{what} has {scans:,} scans, more than {MAX_JPEG_SCANS} (a decoding-time bomb, or corrupt)")


JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC


def jpeg_sof_offset(data: bytes, sof: frozenset[int] = JPEG_SOF) -> int:
    """Offset of the first frame header (SOFn marker) of a JPEG stream starting with SOI."""
    pos = 2
    while True:
        if data[pos] != 0xFF:
            raise InputError("malformed JPEG: bad marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        elif marker in (0xD9, 0xDA):
            raise InputError("malformed JPEG: no frame header before the image data")
        elif marker in sof:
            return pos
        else:
            pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]


def printable(text: object, limit: int = 200) -> str:
    """``text`` fit for a one-line message: control characters (newlines, terminal escapes) that a
    hostile file could put in a value are escaped, and the result is cut to ``limit`` characters."""
    out = str(text)
    if not out.isprintable():
        out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in out)
    return out if len(out) <= limit else out[: limit - 3] + "..."
