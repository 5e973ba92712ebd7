"""Build the hostile-input corpus in a folder: ``python -m tests.hostile.make DIR`` or :func:`build`.

Nothing binary is committed: every case is generated (in well under a second) from a few lines of
code, so the corpus stays reviewable. Each :class:`Case` says what the Classifier and the CLI must
answer for it: exactly one record, with status ``ok``, ``rejected`` or ``error``, and for errors a
pattern the one-line message must match.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tests.factories import frame
from tests.fuzz.seeds import dataset, dicom_bytes, mm_tiff


@dataclass(frozen=True)
class Case:
    path: Path
    expect: str  # "ok", "rejected" or "error"
    message: str = ""  # regex the error (or rejection reason) must match

    @property
    def name(self) -> str:
        return os.fsencode(self.path.name).decode("ascii", "backslashreplace")


@dataclass(frozen=True)
class Corpus:
    root: Path
    cases: list[Case]
    skipped: dict[str, str]  # case name -> why it could not be made here


# ---------------------------------------------------------------- encoders


def _cv(ext: str, img: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok, ext
    return buf.tobytes()


def _pil(img, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack(">I", size) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height, with a little data (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(bytes(4096)))
        + _png_chunk(b"IEND", b"")
    )


def png_huge_chunk() -> bytes:
    """A 10x12 PNG whose IDAT chunk declares 4 GB (fuzzing finding: OpenCV allocated it)."""
    ihdr = struct.pack(">IIBBBBB", 10, 12, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", bytes(80), length=0xFF000085)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG with its frame header patched to width x height."""
    data = bytearray(_cv(".jpg", frame(16, 16)))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def jpeg_many_scans(extra: int = 1000, side: int = 512) -> bytes:
    """A progressive JPEG whose last refinement scan is repeated ``extra`` times: each repeat is a
    pass over the whole image (a decoding-time bomb: 6.6 s for 1,000 repeats at 4000x4000)."""
    from PIL import Image

    data = _pil(Image.fromarray(np.zeros((side, side), np.uint8)), "JPEG", progressive=True, quality=50)
    last = data[data.rfind(b"\xff\xda") : -2]
    return data[:-2] + last * extra + b"\xff\xd9"


def bmp_claiming(width: int, height: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54 + 64, 0, 0, 54)
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 64, 2835, 2835, 0, 0)
    return header + dib + bytes(64)


def tiff_claiming(width: int, height: int) -> bytes:
    data = bytearray(mm_tiff(frame(4, 4)))
    for tag, value in ((256, width), (257, height)):  # LONG entries: tag, type 4, count 1, value
        pos = data.find(struct.pack(">HHI", tag, 4, 1))
        struct.pack_into(">I", data, pos + 8, value)
    return bytes(data)


def tiff_huge_tile() -> bytes:
    """A 16x16 TIFF declaring 16384x16384 tiles: OpenCV refuses it, and logs several lines."""
    data = bytearray(mm_tiff(frame(4, 4)))
    count = struct.unpack_from(">H", data, 8)[0]
    entries = [bytes(data[10 + 12 * i : 22 + 12 * i]) for i in range(count)]
    entries = [e for e in entries if struct.unpack_from(">H", e)[0] not in (273, 278, 279)]
    entries += [
        struct.pack(">HHII", tag, 4, 1, value) for tag, value in ((322, 16384), (323, 16384), (324, 8), (325, 64))
    ]
    entries.sort()
    ifd = struct.pack(">H", len(entries)) + b"".join(entries) + bytes(4)
    out = bytearray(b"MM\x00*" + struct.pack(">I", 8) + ifd + bytes(64))
    for tag in (256, 257):  # 16x16
        pos = out.find(struct.pack(">HHI", tag, 4, 1))
        struct.pack_into(">I", out, pos + 8, 16)
    return bytes(out)


def float_tiff() -> bytes:
    img = frame(8, 8).astype(np.float32)
    img[2, 3], img[4, 4] = np.nan, np.inf
    return _cv(".tiff", img)


def dicom_embedded_jpeg_bomb() -> bytes:
    """A 16x16 JPEG-baseline DICOM whose JPEG frame declares 60000x60000."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = dataset(frame(16, 16))
    ds.PixelData = encapsulate([jpeg_claiming(60000, 60000)])
    ds["PixelData"].VR = "OB"
    return dicom_bytes(ds, JPEGBaseline8Bit)


def dicom_truncated_pixel_element() -> bytes:
    """A file cut in the middle of its pixel data: the element declares more bytes than remain."""
    data = dicom_bytes(dataset(frame(64, 64).astype(np.uint16) * 100))
    return data[: len(data) - 64 * 64]


def _random(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# ---------------------------------------------------------------- the corpus


def build(root: Path) -> Corpus:
    """Write every case under ``root`` (created); return what each must give."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    skipped: dict[str, str] = {}

    def add(name: str | bytes, data: bytes, expect: str, message: str = "") -> Path:
        path = Path(os.fsdecode(os.path.join(os.fsencode(root), os.fsencode(name))))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        cases.append(Case(path, expect, message))
        return path

    gray = frame(64, 48)
    rgb = np.dstack([gray, np.roll(gray, 7, axis=1), gray[::-1]])
    png = _cv(".png", gray)
    jpeg = _cv(".jpg", rgb, cv2.IMWRITE_JPEG_QUALITY, 90)
    tif = _cv(".tif", gray)
    dcm = dicom_bytes(dataset(gray.astype(np.uint16) * 100))
    exif = Image.Exif()
    exif[0x0112] = 6

    # Valid, unusual inputs: one ok record each.
    add("ok_gray.png", png, "ok")
    add("png_named.jpg", png, "ok")
    add("jpeg_named.dcm", jpeg, "ok")
    add("dicom_named.png", dcm, "ok")
    add("IM0001", dcm, "ok")  # no extension: a DICOM found by its content
    add("sixteen_bit.png", _cv(".png", gray.astype(np.uint16) * 257), "ok")
    add("sixteen_bit.tif", _cv(".tif", gray.astype(np.uint16) * 257), "ok")
    add("palette.png", _pil(Image.fromarray(rgb).convert("P"), "PNG"), "ok")
    add("cmyk.jpg", _pil(Image.fromarray(rgb).convert("CMYK"), "JPEG"), "ok")
    add("exif_rotated.jpg", _pil(Image.fromarray(rgb), "JPEG", exif=exif.tobytes()), "ok")
    add("big_endian.tif", mm_tiff(gray), "ok")
    add("multiframe.dcm", dicom_bytes(dataset(np.stack([gray, gray[::-1], gray[:, ::-1]]).astype(np.uint16))), "ok")
    add(b"scan_\xff\xfe.png", png, "ok")  # not UTF-8: reaches Python as surrogate escapes
    add("deeper/nested/ok.jpg", jpeg, "ok")
    add("one_pixel.png", _cv(".png", np.full((1, 1), 128, np.uint8)), "rejected", "constant_image")

    # Broken or hostile content: one error record each, with a one-line message.
    add("empty.png", b"", "error", "empty file")
    add("text.png", b"this is not an image\n" * 4, "error", "not a supported image")
    add("truncated.png", png[: len(png) // 2], "error", "PNG")
    add("truncated.jpg", jpeg[: len(jpeg) // 2], "error", "JPEG")
    add("truncated.tif", tif[:40], "error", "TIFF")
    add("truncated.dcm", dcm[:300], "error", "DICOM")
    add("truncated_pixel_element.dcm", dicom_truncated_pixel_element(), "error", "DICOM")
    for name, signature in (
        ("random.png", b"\x89PNG\r\n\x1a\n"), ("random.jpg", b"\xff\xd8\xff"), ("random_ii.tif", b"II*\x00"),
        ("random_mm.tif", b"MM\x00*"), ("random.bmp", b"BM" + bytes(12) + struct.pack("<I", 40)),
        ("random.dcm", bytes(128) + b"DICM"),
    ):  # fmt: skip
        add(name, signature + _random(600, len(name)), "error", "")
    add("bomb.png", png_claiming(100_000, 100_000), "error", "too large")
    add("bomb.jpg", jpeg_claiming(65_000, 65_000), "error", "too large")
    add("bomb.tif", tiff_claiming(100_000, 100_000), "error", "too large")
    add("bomb.bmp", bmp_claiming(100_000, 100_000), "error", "too large")
    add(
        "bomb_rows_columns.dcm",
        dicom_bytes(dataset(gray.astype(np.uint16), Rows=65535, Columns=65535)),
        "error",
        "too large",
    )
    add("bomb_embedded_jpeg.dcm", dicom_embedded_jpeg_bomb(), "error", "declares 60000x60000")
    add("png_4gb_chunk.png", png_huge_chunk(), "error", "declares 4,278,190,213 bytes")
    add("many_scans.jpg", jpeg_many_scans(), "error", "1,006 scans, more than 100")
    add("float_nan_inf.tif", float_tiff(), "error", "unsupported TIFF pixel type float32")
    add("huge_tile.tif", tiff_huge_tile(), "error", "cannot decode TIFF")
    add(
        "dicom_slope_inf.dcm",
        dicom_bytes(dataset(gray.astype(np.uint16), RescaleSlope="1e308", RescaleIntercept="0")),
        "error",
        "NaN or infinite",
    )
    nan_float = gray.astype(np.float32)
    nan_float[5, 5] = np.nan
    add("dicom_float_nan.dcm", dicom_bytes(dataset(nan_float)), "error", "NaN or infinite")
    add(
        "dicom_window_nan.dcm",
        dicom_bytes(dataset(gray.astype(np.uint16), WindowCenter="NaN", WindowWidth="400")),
        "error",
        "not a finite number",
    )
    no_pixels = dataset(gray.astype(np.uint16))
    del no_pixels.PixelData
    add("dicom_no_pixels.dcm", dicom_bytes(no_pixels), "error", "no pixel data")
    add(
        "dicom_unknown_syntax.dcm",
        dicom_bytes(dataset(gray.astype(np.uint16)), "1.2.3.4.5.6.7.8.9"),
        "error",
        "unsupported DICOM transfer syntax",
    )
    add("dicom_hsv.dcm", dicom_bytes(dataset(rgb, "HSV")), "error", "photometric interpretation HSV")

    # Hostile file-system objects.
    _special(root, cases, skipped)
    return Corpus(root, cases, skipped)


def _special(root: Path, cases: list[Case], skipped: dict[str, str]) -> None:
    loop_a, loop_b = root / "loop_a.png", root / "loop_b.png"
    loop_a.symlink_to(loop_b.name)
    loop_b.symlink_to(loop_a.name)
    cases += [Case(loop_a, "error", "symbolic links"), Case(loop_b, "error", "symbolic links")]
    (root / "deeper" / "up").symlink_to("..", target_is_directory=True)  # a directory loop: not followed
    (root / "dangling.jpg").symlink_to("does-not-exist.jpg")
    cases.append(Case(root / "dangling.jpg", "error", "No such file"))
    (root / "zeros.png").symlink_to("/dev/zero")  # endless: must be refused, not read
    cases.append(Case(root / "zeros.png", "error", "not a regular file"))
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "pipe.png")  # opening it for reading would block forever
        cases.append(Case(root / "pipe.png", "error", "not a regular file"))
        os.mkfifo(root / "IM_PIPE")  # no extension: must be skipped without being opened
    locked = root / "unreadable.png"
    locked.write_bytes(_cv(".png", frame(8, 8)))
    locked.chmod(0)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        skipped[locked.name] = "running as root: permissions do not stop reads (the file is then a valid PNG)"
        locked.unlink()
    else:
        cases.append(Case(locked, "error", "Permission denied"))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.hostile.make DIR", file=sys.stderr)
        return 2
    corpus = build(Path(argv[0]))
    for case in corpus.cases:
        print(f"{case.expect:8} {case.name}  {case.message}")
    for name, why in corpus.skipped.items():
        print(f"skipped  {name}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
