"""File -> decoded image array + source information.

Output contract (what :mod:`edgedx.preprocess` accepts): HxW (gray) or HxWx3 (RGB order) arrays,
uint8, uint16, or float32 in the 0..255 display range, never NaN or infinite.

The format is recognised from the content, never from the extension; only regular files are read.
Raster images (PNG, JPEG, TIFF, BMP) are decoded by OpenCV; DICOM by :mod:`edgedx.dicom`, which
imports pydicom on first use. Image dimensions are read from the header and checked against
``max_pixels`` before any pixel is decoded, so a decompression bomb is refused without allocating
it; PNG chunk lengths and JPEG scan counts are checked too (docs/fuzzing.md). Given the model's
input size, JPEGs are decoded at reduced scale where that matches a full decode (:func:`reduction`).
Every failure is an :class:`InputError` with a one-line message.
"""

from __future__ import annotations

import math
import os
import re
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgedx.errors import InputError, UsageError

DEFAULT_MAX_PIXELS = 100_000_000

#: File extensions a directory walk picks up without looking inside.
EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"})
#: Bytes :func:`sniff` needs: a DICOM preamble (128) and its ``DICM`` prefix.
HEAD_SIZE = 132

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"BM", "bmp"),
)
_BMP_DIB_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
_DICOM_LONG_VRS = frozenset(b"OB OD OF OL OV SQ SV UC UN UR UT UV".split())


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
    #: DICOM BodyPartExamined and ViewPosition (code strings, not patient data), for the gate's rules.
    body_part: str | None = None
    view_position: str | None = None
    #: DCT scaling denominator of a reduced JPEG decode (``DecodeOptions.target_size``): the image is
    #: about ``width / reduced`` x ``height / reduced``; 1 for a full decode.
    reduced: int = 1


@dataclass(frozen=True)
class DecodeOptions:
    """Args:
    window: DICOM window (center, width) overriding the file's VOI; width must be > 0.
    all_frames: decode every frame of a multi-frame DICOM, not only the first.
    max_pixels: refuse images with more pixels than this (decompression bombs); for DICOM, the
        pixels of every frame that would be decoded.
    target_size: (width, height) of the model input the image will be resized to. A JPEG at least
        6x larger on both sides is then decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling,
        never below :data:`REDUCED_MARGIN` times the target (see :func:`reduction`); other
        formats are unaffected. ``SourceInfo.reduced`` says which scale was used.
    target_channels: channels of the model input. 1 decodes 8-bit JPEGs straight to gray (the
        luma plane, no RGB round trip); the decoded image is then 2-D while ``SourceInfo.channels``
        still says what the file holds.

    Raises:
        UsageError: a window that is not two finite numbers with width > 0, max_pixels < 1, a
            target_size that is not two positive integers, or target_channels not 1 or 3.
    """

    window: tuple[float, float] | None = None
    all_frames: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    target_size: tuple[int, int] | None = None
    target_channels: int | None = None

    def __post_init__(self) -> None:
        if self.window is not None:
            if len(self.window) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.window):
                raise UsageError(f"window must be two finite numbers (center, width), got {self.window!r}")
            if self.window[1] <= 0:
                raise UsageError(f"window width must be > 0, got {self.window[1]}")
        if not _positive_int(self.max_pixels):
            raise UsageError(f"max_pixels must be a positive integer, got {self.max_pixels!r}")
        if self.target_size is not None and not (
            isinstance(self.target_size, tuple)
            and len(self.target_size) == 2
            and all(map(_positive_int, self.target_size))
        ):
            raise UsageError(f"target_size must be (width, height), two positive integers, got {self.target_size!r}")
        if self.target_channels not in (None, 1, 3) or isinstance(self.target_channels, bool):
            raise UsageError(f"target_channels must be 1, 3 or None, got {self.target_channels!r}")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray
    info: SourceInfo


def sniff(head: bytes) -> str | None:
    """The format of a file from its first bytes: 'png', 'jpeg', 'tiff', 'bmp', 'dicom' or None.

    DICOM is tested first: its 128-byte preamble may itself look like a TIFF header.

    Args:
        head: the file's first :data:`HEAD_SIZE` bytes (or all of it, if shorter).
    """
    if head[128:132] == b"DICM" or _bare_dicom(head):
        return "dicom"
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            if fmt == "bmp" and (len(head) < 18 or int.from_bytes(head[14:18], "little") not in _BMP_DIB_SIZES):
                return None
            return fmt
    return None


def is_candidate(path: Path) -> bool:
    """Whether a directory walk should try to decode ``path``.

    True for the image and DICOM extensions in :data:`EXTENSIONS`; for files without an extension
    (or with a numeric one, as UID-named DICOM files have) when their first bytes sniff as DICOM.
    A DICOMDIR index holds no image and is skipped.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in EXTENSIONS:
        return True
    if (suffix and not suffix[1:].isdigit()) or path.name.upper() == "DICOMDIR":
        return False
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block, a device might never end
            return False
        with path.open("rb") as f:
            head = f.read(HEAD_SIZE)
    except OSError:
        return False
    return sniff(head) == "dicom"


def decode_file(path: str | Path, options: DecodeOptions = DecodeOptions()) -> list[Decoded]:
    """Decode one file; a list because a multi-frame DICOM may give several images.

    Raises:
        InputError: the file cannot be read or decoded.
    """
    return decode_bytes(read_file(path), options)


def read_file(path: str | Path) -> bytes:
    """A regular file's bytes. FIFOs, devices, sockets and directories are refused without reading:
    a FIFO blocks until a writer comes, ``/dev/zero`` never ends.

    Raises:
        InputError: not a regular file, or it cannot be opened or read.
    """
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; a regular file reads as usual.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise InputError(f"cannot read {path}: not a regular file ({kind})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def decode_bytes(data: bytes, options: DecodeOptions = DecodeOptions()) -> list[Decoded]:
    """Decode a file's content, whatever its name said it was.

    Raises:
        InputError: empty, unsupported, too large, truncated or corrupt.
    """
    if not data:
        raise InputError("empty file")
    fmt = sniff(data[:HEAD_SIZE])
    if fmt is None:
        raise InputError("not a supported image or DICOM file (PNG, JPEG, TIFF, BMP, DICOM)")
    if fmt == "dicom":
        from edgedx import dicom  # imports pydicom; it guards its own messages against patient data

        return dicom.decode(data, options)
    try:
        return [_decode_raster(data, fmt, options)]
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"not enough memory to decode this {fmt.upper()} image") from None
    except Exception as exc:  # cv2.error, struct.error, ...: a per-file failure, never a traceback
        raise InputError(f"cannot decode {fmt.upper()}: {_reason(exc)}") from None


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


#: DCT scaling denominators libjpeg offers through OpenCV, largest first, with their imread flags
#: (gray, color). REDUCED_COLOR gives BGR, like IMREAD_COLOR; both apply the EXIF orientation.
_REDUCED_FLAGS = {
    8: (cv2.IMREAD_REDUCED_GRAYSCALE_8, cv2.IMREAD_REDUCED_COLOR_8),
    4: (cv2.IMREAD_REDUCED_GRAYSCALE_4, cv2.IMREAD_REDUCED_COLOR_4),
    2: (cv2.IMREAD_REDUCED_GRAYSCALE_2, cv2.IMREAD_REDUCED_COLOR_2),
}
#: A reduced image stays at least this many times the target on both sides. Measured on real
#: radiographs (docs/fuzzing.md): at 3x the 224x224 gray model input differs from full decode +
#: resize by at most 0.031 (max) and 0.002 (mean abs) after normalization (mean 0.5, std 0.25);
#: at 2x a sharp text marker reached 0.125. Decoding at 1/4 costs about what 1/2 does (entropy
#: decoding dominates), so the larger margin loses little throughput.
REDUCED_MARGIN = 3


def reduction(width: int, height: int, target: tuple[int, int] | None) -> int:
    """The DCT scaling denominator (8, 4, 2, or 1: none) for a ``width`` x ``height`` JPEG.

    The largest r that divides both sides (a reduced pixel then stands for exactly r x r source
    pixels, so the resize that follows keeps its geometry: an r that does not divide them stretches
    the image by up to r - 1 pixels and raised the mean difference fourfold) and whose reduced image
    is still at least :data:`REDUCED_MARGIN` times the target on both sides. The larger target
    side is compared with the smaller image side, so an EXIF rotation cannot break the margin.
    """
    if target is None:
        return 1
    need = REDUCED_MARGIN * max(target)
    for r in _REDUCED_FLAGS:
        if width % r == 0 and height % r == 0 and min(width, height) // r >= need:
            return r
    return 1


def _decode_raster(data: bytes, fmt: str, options: DecodeOptions) -> Decoded:
    try:
        width, height, kind = _HEADERS[fmt](data)
    except (struct.error, IndexError):
        raise InputError(f"truncated or malformed {fmt.upper()} header") from None
    check_pixels(width, height, options.max_pixels, f"{fmt.upper()} image")
    buf = np.frombuffer(data, np.uint8)
    if fmt == "jpeg":
        check_jpeg_scans(data)
        if not _jpeg_12bit(data):
            return _decode_jpeg(buf, width, height, kind, options)
    # Not IMREAD_UNCHANGED: that skips the EXIF orientation. ANYDEPTH keeps 16 bit, ANYCOLOR keeps
    # gray 2-D; alpha is dropped, palettes and CMYK become BGR.
    img = cv2.imdecode(buf, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if img is None:
        raise InputError(f"cannot decode {fmt.upper()}: truncated or corrupt data")
    if img.dtype not in (np.uint8, np.uint16):
        raise InputError(f"unsupported {fmt.upper()} pixel type {img.dtype}: expected 8 or 16-bit unsigned")
    if img.ndim == 3:
        img = _bgr_to_rgb(img)
        if kind == "gray" or (kind == "palette" and _channels_equal(img)):
            img = np.ascontiguousarray(img[:, :, 0])
    h, w = img.shape[:2]
    info = SourceInfo(fmt, w, h, 1 if img.ndim == 2 else 3, img.dtype.itemsize * 8)
    return Decoded(img, info)


def _decode_jpeg(buf: np.ndarray, width: int, height: int, kind: str, options: DecodeOptions) -> Decoded:
    """An 8-bit JPEG: gray straight from the luma plane when the file or the model is gray, and at
    reduced scale when the model input is much smaller (see :func:`reduction`)."""
    gray = kind == "gray" or options.target_channels == 1
    r = reduction(width, height, options.target_size)
    if r > 1:
        flags = _REDUCED_FLAGS[r][0 if gray else 1]
    else:
        flags = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
    img = cv2.imdecode(buf, flags)
    if img is None:
        raise InputError("cannot decode JPEG: truncated or corrupt data")
    if img.ndim == 3:
        img = _bgr_to_rgb(img)
    h, w = img.shape[:2]
    if r > 1:  # the file's size, in the decoded (EXIF-oriented) orientation
        w, h = (width, height) if (w, h) == (width // r, height // r) else (height, width)
    info = SourceInfo("jpeg", w, h, 1 if kind == "gray" else 3, 8, reduced=r)
    return Decoded(img, info)


def _jpeg_12bit(data: bytes) -> bool:
    """Whether the JPEG's frame header declares 12-bit (or 16-bit) samples; decoded the generic way."""
    try:
        pos = _jpeg_sof_offset(data)
    except (IndexError, struct.error, InputError):
        return False
    return data[pos + 4] != 8


def _bgr_to_rgb(img: np.ndarray) -> np.ndarray:
    """BGR(A) -> RGB, in place when the decoder's buffer allows it (no extra full-size copy)."""
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img if img.flags.c_contiguous else None)


def _channels_equal(img: np.ndarray) -> bool:
    return bool(np.array_equal(img[:, :, 0], img[:, :, 1]) and np.array_equal(img[:, :, 0], img[:, :, 2]))


# Header parsers: (width, height, kind), kind "gray" | "palette" | "color". They raise struct.error
# or IndexError on truncated data and InputError on inconsistent data.


def _png_header(data: bytes) -> tuple[int, int, str]:
    if data[12:16] != b"IHDR":
        raise InputError("malformed PNG: the first chunk is not IHDR")
    width, height, _depth, color_type = struct.unpack_from(">IIBB", data, 16)
    _png_chunks_fit(data)
    return width, height, {0: "gray", 4: "gray", 3: "palette"}.get(color_type, "color")


def _png_chunks_fit(data: bytes) -> None:
    """Refuse a chunk that declares more bytes than the file holds.

    OpenCV 5's PNG reader allocates (and fills) a chunk's declared length before reading it: a
    127-byte file declaring a 4 GB IDAT chunk took 4 GB of memory and 10 s (found by fuzzing).
    """
    pos, end = 8, len(data)
    while pos + 8 <= end:
        (length,) = struct.unpack_from(">I", data, pos)
        if length > 0x7FFFFFFF or pos + 12 + length > end:
            kind, left = data[pos + 4 : pos + 8].decode("latin-1"), max(end - pos - 12, 0)
            raise InputError(
                f"truncated or malformed PNG: chunk {kind!r} declares {length:,} bytes, the file has {left:,} left"
            )
        if data[pos + 4 : pos + 8] == b"IEND":
            return
        pos += 12 + length


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC


def _jpeg_header(data: bytes) -> tuple[int, int, str]:
    pos = _jpeg_sof_offset(data)
    height, width, components = struct.unpack_from(">HHB", data, pos + 5)
    return width, height, "gray" if components == 1 else "color"


def _jpeg_sof_offset(data: bytes, sof: frozenset[int] = _JPEG_SOF) -> int:
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


def _bmp_header(data: bytes) -> tuple[int, int, str]:
    if struct.unpack_from("<I", data, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _planes, bpp = struct.unpack_from("<HHHH", data, 18)
    else:
        width, height, _planes, bpp = struct.unpack_from("<iiHH", data, 18)
    return width, abs(height), "palette" if bpp <= 8 else "color"


def _tiff_header(data: bytes) -> tuple[int, int, str]:
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big:
        offset, count_fmt, entry_size, value_at = struct.unpack_from(order + "Q", data, 8)[0], "Q", 20, 12
    else:
        offset, count_fmt, entry_size, value_at = struct.unpack_from(order + "I", data, 4)[0], "H", 12, 8
    count = struct.unpack_from(order + count_fmt, data, offset)[0]
    offset += struct.calcsize(count_fmt)
    value_fmt = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
    tags: dict[int, int] = {}
    for i in range(count):
        entry = offset + i * entry_size
        tag, typ = struct.unpack_from(order + "HH", data, entry)
        if tag in (256, 257, 262) and typ in value_fmt:  # ImageWidth, ImageLength, Photometric
            tags[tag] = struct.unpack_from(order + value_fmt[typ], data, entry + value_at)[0]
    if 256 not in tags or 257 not in tags:
        raise InputError("malformed TIFF: no image width or length")
    return tags[256], tags[257], {0: "gray", 1: "gray", 3: "palette"}.get(tags.get(262, 2), "color")


_HEADERS: dict[str, Callable[[bytes], tuple[int, int, str]]] = {
    "png": _png_header,
    "jpeg": _jpeg_header,
    "bmp": _bmp_header,
    "tiff": _tiff_header,
}


def _bare_dicom(head: bytes) -> bool:
    """A DICOM dataset without preamble: its first elements parse as group 0x0002/0x0008, in tag order."""
    pos, last = 0, -1
    for _ in range(3):
        if pos + 8 > len(head):
            break
        group, element = struct.unpack_from("<HH", head, pos)
        tag = group << 16 | element
        if tag <= last or (last < 0 and group not in (0x0002, 0x0008)):
            return False
        vr = head[pos + 4 : pos + 6]
        if vr in _DICOM_LONG_VRS:
            if pos + 12 > len(head):
                return True
            length, header = struct.unpack_from("<I", head, pos + 8)[0], 12
        elif vr in _DICOM_VRS:
            length, header = struct.unpack_from("<H", head, pos + 6)[0], 8
        else:  # implicit VR
            length, header = struct.unpack_from("<I", head, pos + 4)[0], 8
        if length % 2 and length != 0xFFFFFFFF:
            return False
        pos, last = pos + header + length, tag
    return last >= 0


def printable(text: object, limit: int = 200) -> str:
    """``text`` fit for a one-line message: control characters (newlines, terminal escapes) that a
    hostile file could put in a value are escaped, and the result is cut to ``limit`` characters."""
    out = str(text)
    if not out.isprintable():
        out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in out)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    """One line for the user: OpenCV's message without its source-file prefix."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = re.sub(r"^OpenCV\([^)]*\) \S+: error: ", "", lines[-1]) if lines else ""
    name = "OpenCV" if isinstance(exc, cv2.error) else type(exc).__name__
    return printable(f"{name}: {text}" if text else name)
