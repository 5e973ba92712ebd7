"""Target ``jpeg``: JPEG files and JPEG frames in DICOM through the strict decoder.

Seeds: valid JPEGs (gray, color, progressive, restart intervals, EXIF-rotated, CMYK, 4:2:0 and 4:4:4)
and the same files with their scans corrupted (zero-filled, random, half zeros, truncated, extra
bytes), plain and encapsulated in a JPEG-baseline DICOM. The first byte picks the wrapper (plain
file or DICOM frame) and the last byte the decode options, as in ``decode``.

Properties beyond "only EdgedxError escapes": a plain JPEG that decodes is pixel for pixel what
OpenCV gives for the same bytes and options (the strict decoder only ever refuses, it never decodes
differently); a DICOM frame that decodes has the Rows x Columns of its dataset.
"""

from __future__ import annotations

import io

import cv2
import numpy as np

from edgedx.decode import DecodeOptions, decode_bytes
from tests.fuzz.common import Finding, expect_edgedx_error
from tests.fuzz.fuzz_decode import check_decoded

MAX_PIXELS = 1 << 22
OPTIONS = (
    DecodeOptions(max_pixels=MAX_PIXELS),
    DecodeOptions(max_pixels=MAX_PIXELS, target_size=(8, 8), target_channels=1),
    DecodeOptions(max_pixels=MAX_PIXELS, target_size=(8, 8), target_channels=3),
    DecodeOptions(max_pixels=MAX_PIXELS, target_size=(4, 6), target_channels=1),
)
_CV_FLAGS = {
    1: (cv2.IMREAD_GRAYSCALE, cv2.IMREAD_COLOR),
    2: (cv2.IMREAD_REDUCED_GRAYSCALE_2, cv2.IMREAD_REDUCED_COLOR_2),
    4: (cv2.IMREAD_REDUCED_GRAYSCALE_4, cv2.IMREAD_REDUCED_COLOR_4),
    8: (cv2.IMREAD_REDUCED_GRAYSCALE_8, cv2.IMREAD_REDUCED_COLOR_8),
}
_PLAIN, _DICOM = 0, 1


def _image(h: int, w: int, color: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = cv2.GaussianBlur(rng.integers(0, 256, (h, w), dtype=np.uint8), (0, 0), 1.5)
    return np.dstack([g, np.roll(g, 3, 1), g[::-1]]) if color else g


def valid_jpegs() -> list[bytes]:
    from PIL import Image

    out = []
    for color in (False, True):
        img = _image(48, 64, color, 1)
        for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 2],
                       [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]):  # fmt: skip
            out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80, *params])[1].tobytes())
    out.append(cv2.imencode(".jpg", _image(64, 96, False, 2))[1].tobytes())  # 1/2, 1/4 and 1/8 decodes
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(_image(24, 40, True, 3)).save(buf, "JPEG", exif=exif.tobytes())
    out.append(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(_image(24, 40, True, 4)).convert("CMYK").save(buf, "JPEG")
    out.append(buf.getvalue())
    return out


def corrupted_scans(data: bytes, seed: int) -> list[bytes]:
    """The corruptions of issue 12: the headers valid, the last scan's entropy data damaged."""
    sos = data.rfind(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    body = max(len(data) - 2 - start, 2)
    rng = np.random.default_rng(seed)
    return [
        data[:start] + bytes(body) + b"\xff\xd9",
        data[:start] + rng.integers(0, 256, body, dtype=np.uint8).tobytes() + b"\xff\xd9",
        data[: start + body // 2] + bytes(body - body // 2) + b"\xff\xd9",
        data[: start + body // 2],
        data[:-2] + bytes(range(1, 65)) + b"\xff\xd9",
    ]


def seeds() -> list[bytes]:
    plain = valid_jpegs()
    plain += [bad for i, good in enumerate(plain) for bad in corrupted_scans(good, i)]
    out = [bytes([_PLAIN]) + d + bytes([i % len(OPTIONS)]) for i, d in enumerate(plain)]
    gray = [d for d in plain[:12]]  # gray and color frames, valid and corrupt
    out += [bytes([_DICOM]) + d + b"\0" for d in gray]
    return out


def _dicom(frame: bytes) -> bytes:
    """A JPEG-baseline DICOM around ``frame``, Rows/Columns/samples from its own header when readable."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    from edgedx import jpeg
    from tests.fuzz.seeds import dataset, dicom_bytes

    try:
        h = jpeg.frame_header(frame)
        rows, columns, samples = h.height, h.width, h.components
    except Exception:
        rows, columns, samples = 16, 16, 1
    rows, columns = max(1, min(rows, 256)), max(1, min(columns, 256))
    color = samples == 3
    ds = dataset(np.zeros((2, 2, 3) if color else (2, 2), np.uint8), "YBR_FULL_422" if color else "MONOCHROME2")
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return dicom_bytes(ds, JPEGBaseline8Bit)


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    wrapper, body, options = data[0] % 2, data[1:-1], OPTIONS[data[-1] % len(OPTIONS)]
    if wrapper == _DICOM:
        try:
            file = _dicom(body)
        except Exception:
            return  # pydicom could not write the dataset: not an input edgedx would see
        out = expect_edgedx_error(lambda: decode_bytes(file, options))
        if out is not None:
            check_decoded(out, options)
            info = out[0].info
            if out[0].image.shape[:2] != (info.height, info.width):
                raise Finding(f"DICOM frame decoded to {out[0].image.shape}, Rows x Columns {info.height}x{info.width}")
        return
    out = expect_edgedx_error(lambda: decode_bytes(body, options))
    if out is None:
        return
    check_decoded(out, options)
    if not body.startswith(b"\xff\xd8\xff"):
        return  # another format after mutation: the decode target covers it
    info = out[0].info
    flags = _CV_FLAGS[info.reduced][0 if out[0].image.ndim == 2 else 1]
    reference = cv2.imdecode(np.frombuffer(body, np.uint8), flags)
    if reference is None:
        raise Finding("decoded a JPEG that OpenCV refuses")
    if reference.ndim == 3:
        reference = cv2.cvtColor(reference, cv2.COLOR_BGR2RGB)
    if reference.shape != out[0].image.shape or not np.array_equal(reference, out[0].image):
        raise Finding(f"pixels differ from OpenCV's decode ({out[0].image.shape} vs {reference.shape})")
