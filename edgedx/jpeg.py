"""JPEG codestreams: frame header, scan count, EXIF orientation, and a strict 8-bit decode.

Shared by plain JPEG files (:mod:`edgedx.decode`) and JPEG frames inside DICOM (:mod:`edgedx.dicom`).

Why a strict decoder: libjpeg repairs what it cannot read. Random or zero-filled entropy-coded
data after a valid header, or a scan cut short, decodes to a plausible gray image with only a
warning on stderr ("Corrupt JPEG data: ...", "Premature end of data segment"), and OpenCV, which
cannot report those warnings, returns that image as if it were the scan. :func:`decode` uses
libjpeg-turbo through simplejpeg with ``strict=True``, which turns every such warning into an error.
It is the same libjpeg-turbo OpenCV uses, with the same defaults (islow IDCT, fancy upsampling), so
the pixels are bit-identical to OpenCV's (tested), and there is one decode per image, not a decode
plus a check. EXIF orientation, which OpenCV applies, is applied here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from edgedx.errors import InputError
from edgedx.text import printable

#: Frame header markers SOF0-SOF15, without DHT (C4), JPG (C8) and DAC (CC).
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Lossless processes (SOF3, 7, 11, 15): not DCT-based, libjpeg-turbo's 8-bit path cannot decode them.
LOSSLESS_MARKERS = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
#: Scans a JPEG may have. libjpeg makes up to 10 for a progressive color image; each scan is a pass
#: over the whole image, so a 94 kB file repeating a refinement scan 1,000 times over 4000x4000
#: pixels took 6.6 s to decode (a decoding-time bomb the pixel limit does not catch).
MAX_SCANS = 100


@dataclass(frozen=True)
class FrameHeader:
    """What a JPEG's first frame header (SOFn) declares."""

    width: int
    height: int
    components: int
    precision: int
    marker: int

    @property
    def lossless(self) -> bool:
        return self.marker in LOSSLESS_MARKERS


def sof_offset(data: bytes | memoryview, sof: frozenset[int] = SOF_MARKERS) -> int:
    """Offset of the first frame header (a marker in ``sof``) of a JPEG stream starting with SOI.

    Raises:
        InputError: a bad marker or no frame header before the image data.
        IndexError, struct.error: the stream ends first.
    """
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


def frame_header(data: bytes | memoryview, sof: frozenset[int] = SOF_MARKERS) -> FrameHeader:
    """The first frame header. Raises like :func:`sof_offset`."""
    pos = sof_offset(data, sof)
    precision, height, width, components = struct.unpack_from(">BHHB", data, pos + 4)
    return FrameHeader(width, height, components, precision, data[pos + 1])


def check_scans(data: bytes | memoryview, what: str = "JPEG") -> None:
    """Refuse a JPEG stream with more than :data:`MAX_SCANS` scans (SOS markers).

    Counted from the first SOS: entropy-coded data never holds FF DA (an FF there is followed by 00
    or a restart marker), and an EXIF thumbnail's own scans come before it.
    """
    data = bytes(data)
    scans = data.count(b"\xff\xda", max(data.find(b"\xff\xda"), 0))
    if scans > MAX_SCANS:
        raise InputError(f"{what} has {scans:,} scans, more than {MAX_SCANS} (a decoding-time bomb, or corrupt)")


def exif_orientation(data: bytes | memoryview) -> int:
    """The EXIF orientation (1-8) of a JPEG stream; 1 when it has none or it cannot be read."""
    try:
        pos = 2
        while data[pos] == 0xFF and data[pos + 1] not in (0xDA, 0xD9):
            marker = data[pos + 1]
            if marker == 0xFF:
                pos += 1
                continue
            length = struct.unpack_from(">H", data, pos + 2)[0]
            if marker == 0xE1 and bytes(data[pos + 4 : pos + 10]) == b"Exif\x00\x00":
                return _tiff_orientation(bytes(data[pos + 10 : pos + 2 + length]))
            pos += 2 + length
    except (IndexError, struct.error):
        pass
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    for i in range(min(count, 1000)):
        tag, typ, _n = struct.unpack_from(order + "HHI", tiff, ifd + 2 + 12 * i)
        if tag == 0x0112 and typ == 3:  # Orientation, SHORT
            (value,) = struct.unpack_from(order + "H", tiff, ifd + 2 + 12 * i + 8)
            return value if 1 <= value <= 8 else 1
    return 1


def _segments(data: bytes):
    """(marker, start, end) of each marker segment before the first SOS (or the end)."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] not in (0xDA, 0xD9):
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        end = pos + 2 + struct.unpack_from(">H", data, pos + 2)[0]
        yield marker, pos, end
        pos = end


#: An Adobe APP14 segment with transform 0: the components are stored as they are (no YCbCr).
_ADOBE_NO_TRANSFORM = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


def without_color_transform(data: bytes) -> bytes:
    """``data`` marked so that libjpeg keeps 3 components as stored (no YCbCr -> RGB conversion).

    DICOM's Photometric Interpretation RGB says the JPEG holds RGB components, while libjpeg, seeing
    a JFIF marker or no Adobe marker, would convert them as YCbCr. As pydicom does, a complete Adobe
    APP14 marker is obeyed; otherwise JFIF APP0 and short Adobe segments are dropped and an Adobe
    APP14 marker with transform 0 is put after SOI.
    """
    try:
        segments = list(_segments(data))
    except struct.error:
        return data
    if any(m == 0xEE and data[s + 4 : s + 9] == b"Adobe" and e - s >= 16 for m, s, e in segments):
        return data  # a complete Adobe marker (with its transform byte) says what the data is
    out, pos = bytearray(data[:2] + _ADOBE_NO_TRANSFORM), 2
    for marker, start, end in segments:
        if (marker, data[start + 4 : start + 9]) in ((0xE0, b"JFIF\x00"), (0xEE, b"Adobe")):
            out += data[pos:start]
            pos = end
    out += data[pos:]
    return bytes(out)


def orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an HxW[xC] image, as viewers (and OpenCV) do."""
    if orientation in (5, 6, 7, 8):
        img = img.swapaxes(0, 1)
    flip = {2: (slice(None), slice(None, None, -1)), 3: (slice(None, None, -1), slice(None, None, -1)),
            4: (slice(None, None, -1), slice(None)), 6: (slice(None), slice(None, None, -1)),
            7: (slice(None, None, -1), slice(None, None, -1)), 8: (slice(None, None, -1), slice(None))}.get(orientation)  # fmt: skip
    if flip is not None:
        img = img[flip]
    return np.ascontiguousarray(img)


def decode(
    data: bytes | memoryview,
    *,
    gray: bool,
    reduce: int = 1,
    apply_orientation: bool = True,
    header: FrameHeader | None = None,
    what: str = "JPEG",
) -> np.ndarray:
    """Decode an 8-bit JPEG strictly: HxW uint8 (``gray``, the luma plane of a color file) or HxWx3 RGB.

    Args:
        gray: decode to one channel.
        reduce: libjpeg's DCT scaling denominator (1, 2, 4 or 8); it must divide both sides.
        apply_orientation: rotate/flip by the EXIF orientation (plain files; DICOM frames have none).
        header: the stream's frame header, when the caller has read it already.
        what: names the stream in messages ("JPEG", "DICOM frame 0").

    Raises:
        InputError: not 8-bit, lossless, or any corrupt, missing or extra data libjpeg notices.
    """
    import simplejpeg

    try:
        h = header or frame_header(data)
    except (IndexError, struct.error):
        raise InputError(f"truncated or malformed {what} header") from None
    if h.lossless:
        raise InputError(f"{what}: lossless JPEG is not supported")
    if h.precision != 8:
        raise InputError(f"{what}: {h.precision}-bit JPEG is not supported (8-bit JPEG only)")
    if h.components not in (1, 3, 4):
        raise InputError(f"{what}: JPEG with {h.components} components is not supported")
    size = {"min_factor": reduce, "min_height": h.height // reduce, "min_width": h.width // reduce} if reduce > 1 else {}
    try:
        if h.components == 4:  # CMYK/YCCK: validate strictly, let OpenCV convert (Adobe-inverted CMYK)
            simplejpeg.decode_jpeg(bytes(data), "CMYK", min_factor=8, min_height=1, min_width=1, strict=True)
            img = _cv2_cmyk(data, gray, reduce)
        else:
            img = simplejpeg.decode_jpeg(bytes(data), "GRAY" if gray or h.components == 1 else "RGB", strict=True, **size)
    except ValueError as exc:
        raise InputError(f"{what}: corrupt or truncated JPEG data ({printable(exc, 120)})") from None
    if img.ndim == 3 and img.shape[2] == 1:
        img = img.reshape(img.shape[:2])
    if apply_orientation:
        o = exif_orientation(data)
        if o != 1:
            img = orient(img, o)
    return img


def _cv2_cmyk(data: bytes | memoryview, gray: bool, reduce: int) -> np.ndarray:
    import cv2

    flags = {
        1: (cv2.IMREAD_GRAYSCALE, cv2.IMREAD_COLOR),
        2: (cv2.IMREAD_REDUCED_GRAYSCALE_2, cv2.IMREAD_REDUCED_COLOR_2),
        4: (cv2.IMREAD_REDUCED_GRAYSCALE_4, cv2.IMREAD_REDUCED_COLOR_4),
        8: (cv2.IMREAD_REDUCED_GRAYSCALE_8, cv2.IMREAD_REDUCED_COLOR_8),
    }[reduce][0 if gray else 1]
    img = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ValueError("OpenCV cannot decode this CMYK JPEG")
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
