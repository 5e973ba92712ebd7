"""File -> decoded image array + source information.

Output contract (what :mod:`edgedx.preprocess` accepts): HxW (gray) or HxWx3 (RGB order) arrays,
uint8, uint16, or float32 in the 0..255 display range, never NaN or infinite.

The format is recognised from the content, never from the extension; only regular files are read.
PNG, TIFF and BMP are decoded by OpenCV; 8-bit JPEG by libjpeg-turbo in strict mode
(:mod:`edgedx.jpeg`: corrupt or truncated scans are errors, the pixels are OpenCV's); DICOM by
:mod:`edgedx.dicom`, which imports pydicom on first use. Files are read only when regular and no
larger than ``max_file_size``. Image dimensions are read from the header and checked against
``max_pixels`` before any pixel is decoded, so a decompression bomb is refused without allocating
it; PNG chunk lengths and JPEG scan counts are checked too (docs/fuzzing.md). Given the model's
input size, JPEGs are decoded at reduced scale where that matches a full decode (:func:`reduction`).
Every failure is an :class:`InputError` with a one-line message.
"""

from __future__ import annotations

import re
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from edgedx import jpeg
from edgedx.codestream import check_pixels
from edgedx.decoded import DEFAULT_MAX_PIXELS, Decoded, DecodeOptions, SourceInfo  # noqa: F401  (public here too)
from edgedx.errors import InputError
from edgedx.files import FileRefused, read_regular
from edgedx.limits import DEFAULT_MAX_FILE_SIZE
from edgedx.text import printable

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
    return decode_bytes(read_file(path, options.max_file_size), options)


def read_file(path: str | Path, max_size: int = DEFAULT_MAX_FILE_SIZE) -> bytes:
    """A regular file's bytes. FIFOs, devices, sockets and directories are refused without reading
    (a FIFO blocks until a writer comes, ``/dev/zero`` never ends), and so is a file larger than
    ``max_size`` bytes (:attr:`DecodeOptions.max_file_size`), before it is read.

    Raises:
        InputError: not a regular file, too large, or it cannot be opened or read.
    """
    try:
        return read_regular(path, max_size)
    except FileRefused as exc:
        hint = " (DecodeOptions.max_file_size, --max-file-size)" if "too large" in str(exc) else ""
        raise InputError(f"cannot read {printable(path)}: {exc}{hint}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise InputError(f"cannot read {printable(path)}: {printable(getattr(exc, 'strerror', None) or exc)}") from None


def decode_bytes(data: bytes, options: DecodeOptions = DecodeOptions()) -> list[Decoded]:
    """Decode a file's content, whatever its name said it was.

    Raises:
        InputError: empty, unsupported, too large, truncated or corrupt.
    """
    if not data:
        raise InputError("empty file")
    if len(data) > options.max_file_size:
        raise InputError(f"file too large: {len(data):,} bytes, more than the limit of {options.max_file_size:,} (DecodeOptions.max_file_size)")
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


#: Re-exported from :mod:`edgedx.jpeg` (their home) for existing callers.
MAX_JPEG_SCANS = jpeg.MAX_SCANS
check_jpeg_scans = jpeg.check_scans


#: DCT scaling denominators libjpeg offers, largest first (both the color and the gray decode, and
#: both apply the EXIF orientation).
_REDUCTIONS = (8, 4, 2)
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
    for r in _REDUCTIONS:
        if width % r == 0 and height % r == 0 and min(width, height) // r >= need:
            return r
    return 1


def _decode_raster(data: bytes, fmt: str, options: DecodeOptions) -> Decoded:
    try:
        width, height, kind = _HEADERS[fmt](data)
    except (struct.error, IndexError):
        raise InputError(f"truncated or malformed {fmt.upper()} header") from None
    check_pixels(width, height, options.max_pixels, f"{fmt.upper()} image")
    if fmt == "jpeg":
        check_jpeg_scans(data)
        return _decode_jpeg(data, width, height, kind, options)
    buf = np.frombuffer(data, np.uint8)
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


def _decode_jpeg(data: bytes, width: int, height: int, kind: str, options: DecodeOptions) -> Decoded:
    """An 8-bit JPEG, decoded strictly (corrupt entropy data is an error, :func:`edgedx.jpeg.decode`):
    gray straight from the luma plane when the file or the model is gray, and at reduced scale when
    the model input is much smaller (see :func:`reduction`)."""
    gray = kind == "gray" or options.target_channels == 1
    r = reduction(width, height, options.target_size)
    img = jpeg.decode(data, gray=gray, reduce=r)
    h, w = img.shape[:2]
    if r > 1:  # the file's size, in the decoded (EXIF-oriented) orientation
        w, h = (width, height) if (w, h) == (width // r, height // r) else (height, width)
    info = SourceInfo("jpeg", w, h, 1 if kind == "gray" else 3, 8, reduced=r)
    return Decoded(img, info)


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


def _jpeg_header(data: bytes) -> tuple[int, int, str]:
    h = jpeg.frame_header(data)
    return h.width, h.height, "gray" if h.components == 1 else "color"


#: Re-exported from :mod:`edgedx.jpeg` for existing callers.
_jpeg_sof_offset = jpeg.sof_offset


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


def _reason(exc: BaseException) -> str:
    """One line for the user: OpenCV's message without its source-file prefix."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = re.sub(r"^OpenCV\([^)]*\) \S+: error: ", "", lines[-1]) if lines else ""
    name = "OpenCV" if isinstance(exc, cv2.error) else type(exc).__name__
    return printable(f"{name}: {text}" if text else name)
