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


def dicom_jpeg(frame_bytes: bytes, pixels: np.ndarray) -> bytes:
    """A JPEG-baseline DICOM holding ``frame_bytes`` as its one frame (decoded without the extra)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = dataset(pixels)
    ds.PixelData = encapsulate([frame_bytes])
    ds["PixelData"].VR = "OB"
    return dicom_bytes(ds, JPEGBaseline8Bit)


def dicom_modality_lut_12bit(pixels: np.ndarray) -> bytes:
    """A valid 12-bit Modality LUT (pydicom's own apply_modality_lut raises TypeError on it)."""
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = dataset(pixels.astype(np.uint16) * 16, BitsStored=12, HighBit=11)
    for key in ("RescaleSlope", "RescaleIntercept"):
        if key in ds:
            del ds[key]
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.add(DataElement(0x00283006, "US", list(range(4095, -1, -1))))
    ds.ModalityLUTSequence = Sequence([item])
    return dicom_bytes(ds)


def twelve_bit_jpeg() -> bytes | None:
    """A valid 12-bit JPEG (the frame of pydicom's JPEG-lossy.dcm), or None where pydicom lacks it."""
    import pydicom
    from pydicom.encaps import get_frame

    path = Path(pydicom.__file__).parent / "data" / "test_files" / "JPEG-lossy.dcm"
    if not path.exists():
        return None
    return get_frame(pydicom.dcmread(path).PixelData, 0, number_of_frames=1)


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
    add("dicom_jpeg_baseline.dcm", dicom_jpeg(_cv(".jpg", gray), gray), "ok")  # no [dicom] extra needed
    add("dicom_mlut_12bit.dcm", dicom_modality_lut_12bit(gray), "ok")
    add(b"new\nline\x1b[31m.png", png, "ok")  # a newline and a terminal escape in the name

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

    # Corrupt JPEG scans after valid headers (issue 12): libjpeg only warns; each must be an error.
    from tests.fuzz.fuzz_jpeg import corrupted_scans

    for how, bad in zip(("zeros", "random", "half_zeros", "truncated", "extra_bytes"), corrupted_scans(jpeg, 7), strict=True):
        add(f"jpeg_scan_{how}.jpg", bad, "error", "corrupt or truncated JPEG data")
    gray_jpeg = _cv(".jpg", gray)
    add("dicom_jpeg_scan_zeros.dcm", dicom_jpeg(corrupted_scans(gray_jpeg, 8)[0], gray), "error", "DICOM frame 0: corrupt")
    add("dicom_jpeg_scan_random.dcm", dicom_jpeg(corrupted_scans(gray_jpeg, 9)[1], gray), "error", "DICOM frame 0: corrupt")
    twelve = twelve_bit_jpeg()
    if twelve is None:
        skipped["jpeg_12bit.jpg"] = "pydicom's test files are not installed"
    else:
        add("jpeg_12bit.jpg", twelve, "error", "12-bit JPEG is not supported")

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
    big = root / "big_sparse.jpeg"  # 300 MiB that take no disk: refused by size, before any read
    with open(big, "wb") as f:
        f.write(b"\xff\xd8\xff")
        f.truncate(300 << 20)
    cases.append(Case(big, "error", "file too large: 314,572,800 bytes"))
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


@dataclass(frozen=True)
class ModelCase:
    """A hostile or broken model: what ``edgedx classify`` must exit with, and the line it prints
    (for ``exit_code`` 1, the error every record must carry)."""

    path: Path
    exit_code: int
    message: str


def build_models(root: Path) -> list[ModelCase]:
    """Hostile model folders and broken graphs under ``root`` (issue 12, items 2, 5 and 6)."""
    import json

    from tests import bad_models
    from tests.factories import manifest_dict, tiny_cnn

    root.mkdir(parents=True, exist_ok=True)
    good = tiny_cnn(root / "good.onnx", manifest=manifest_dict())
    cases = []

    def folder(name: str, make) -> Path:  # the good model, with a hostile sidecar beside it
        (root / name).mkdir()
        model = root / name / "m.onnx"
        model.write_bytes(good.read_bytes())
        make(root / name / "m.onnx.json")
        return model

    cases.append(ModelCase(folder("sidecar_fifo", os.mkfifo), 4, "m.onnx.json: not a regular file \\(a FIFO\\)"))
    cases.append(ModelCase(folder("sidecar_dev_zero", lambda p: p.symlink_to("/dev/zero")), 4, "not a regular file \\(a device\\)"))
    cases.append(ModelCase(
        folder("sidecar_huge", lambda p: p.write_text(json.dumps(manifest_dict()) + " " * (2 << 20))), 4, "file too large",
    ))  # fmt: skip
    cases.append(ModelCase(folder("sidecar_dangling", lambda p: p.symlink_to("nowhere.json")), 4, "No such file"))
    cases.append(ModelCase(folder("sidecar_directory", lambda p: p.mkdir()), 4, "not a regular file \\(a directory\\)"))
    cases.append(ModelCase(folder("sidecar_nested", lambda p: p.write_text("[" * 100_000)), 4, "nested too deeply"))
    cases.append(ModelCase(bad_models.no_outputs(root / "no_outputs.onnx"), 4, "has no outputs"))
    cases.append(ModelCase(bad_models.int64_input(root / "int64_input.onnx"), 4, "is tensor\\(int64\\)"))
    cases.append(ModelCase(bad_models.single_column(root / "one_column.onnx"), 4, "one output with softmax"))
    cases.append(ModelCase(bad_models.ignores_batch(root / "ignores_batch.onnx"), 4, "expected one row of scores per image"))
    cases.append(ModelCase(bad_models.scaled(root / "nan.onnx", float("nan")), 1, "NaN or infinite: no answer"))
    cases.append(ModelCase(bad_models.scaled(root / "inf.onnx", float("inf")), 1, "NaN or infinite: no answer"))
    (root / "zero.onnx").symlink_to("/dev/zero")
    cases.append(ModelCase(root / "zero.onnx", 4, "model not found"))
    os.mkfifo(root / "fifo.onnx")
    cases.append(ModelCase(root / "fifo.onnx", 4, "model not found"))
    return cases


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
