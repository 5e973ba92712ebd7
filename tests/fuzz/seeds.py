"""Small valid inputs the fuzzers start from, built in memory (nothing committed, nothing downloaded).

Real DICOM files come from ../shared/data/dicom when present; every target still has seeds without them.
"""

from __future__ import annotations

import functools
import io
import json
import struct
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np

DICOM_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom"
#: Real files small enough to mutate byte by byte (the large RG1/RG3 chest files are not).
SMALL_REAL_DICOMS = ("MR_small.dcm", "CT_small.dcm", "dicomdirtests_CR1_6154.dcm")
#: Real files with LUTs, for the structured DICOM target (parsed once, edited, re-encoded).
LUT_REAL_DICOMS = ("vlut_04.dcm", "mlut_18.dcm")


def _gradient(h: int, w: int, channels: int = 1, dtype: type = np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    y, x = np.mgrid[0:h, 0:w]
    img = ((x * 7 + y * 13) % 97 * (top // 97)).astype(dtype)
    return img if channels == 1 else np.dstack([img, img[::-1], np.roll(img, 3, axis=1)][:channels])


def _cv(ext: str, img: np.ndarray, params: tuple[int, ...] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok, ext
    return buf.tobytes()


def _pil(img: np.ndarray | object, fmt: str, mode: str | None = None, **kwargs: object) -> bytes:
    from PIL import Image

    pil = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    if mode:
        pil = pil.convert(mode)
    buf = io.BytesIO()
    pil.save(buf, fmt, **kwargs)
    return buf.getvalue()


@functools.cache
def raster() -> tuple[bytes, ...]:
    """PNG, JPEG, TIFF and BMP variants: 8/16-bit, gray, RGB, palette, CMYK, EXIF, progressive."""
    from PIL import Image

    g, c = _gradient(12, 10), _gradient(12, 10, 3)
    g16 = _gradient(9, 7, dtype=np.uint16)
    exif = Image.new("RGB", (24, 16), (200, 30, 30)).getexif()
    exif[0x0112] = 6
    big_gray = _gradient(64, 80)
    return (
        _cv(".png", g), _cv(".png", c), _cv(".png", g16), _cv(".png", np.dstack([c, g])),
        _pil(c, "PNG", mode="P"),
        _cv(".jpg", g, (cv2.IMWRITE_JPEG_QUALITY, 80)), _cv(".jpg", c),
        _cv(".jpg", big_gray, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        _cv(".jpg", _gradient(192, 200, 3), (cv2.IMWRITE_JPEG_QUALITY, 30)),  # reduced 1/8 for an 8x8 target
        _pil(c, "JPEG", mode="CMYK"),
        _pil(Image.new("RGB", (24, 16), (200, 30, 30)), "JPEG", exif=exif),
        _cv(".tif", g), _cv(".tif", g16), _cv(".tif", c),
        _pil(g, "TIFF", compression="tiff_lzw"), _pil(c, "TIFF", compression="packbits"),
        mm_tiff(g),
        _cv(".bmp", g), _cv(".bmp", c), _pil(c, "BMP", mode="P"),
    )  # fmt: skip


def mm_tiff(img: np.ndarray) -> bytes:
    """A big-endian ("MM") uncompressed 8-bit gray TIFF, which OpenCV and Pillow do not write."""
    h, w = img.shape
    tags = [
        (256, 4, w),
        (257, 4, h),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 0),
        (277, 3, 1),
        (278, 4, h),
        (279, 4, w * h),
    ]
    offset = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack(">H", len(tags))
    for tag, typ, value in tags:
        value = offset if tag == 273 else value
        ifd += struct.pack(">HHI", tag, typ, 1) + (
            struct.pack(">HH", value, 0) if typ == 3 else struct.pack(">I", value)
        )
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + b"\0\0\0\0" + img.astype(np.uint8).tobytes()


def dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", **attrs: object):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds = Dataset()
    ds.file_meta, ds.preamble = meta, b"\0" * 128
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, "1.2.3.4", "OT"
    color = pixels.ndim == 3 and pixels.shape[-1] == 3
    frames = pixels.shape[0] if pixels.ndim == 3 and not color else 1
    ds.Rows, ds.Columns = pixels.shape[1:3] if frames > 1 else pixels.shape[:2]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 3 if color else 1
    if color:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    if pixels.dtype == np.float32:
        ds.BitsAllocated = 32
        ds.FloatPixelData = pixels.tobytes()
    else:
        ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hostile values (DS "NaN") are the point
        for key, value in attrs.items():
            setattr(ds, key, value)
    return ds


def dicom_bytes(ds, transfer_syntax: str | None = None) -> bytes:
    """A Part 10 file; an unknown (made-up) transfer syntax is written as explicit VR little endian."""
    from pydicom.uid import UID

    buf = io.BytesIO()
    if transfer_syntax is not None:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    known = UID(ds.file_meta.TransferSyntaxUID).is_transfer_syntax
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hostile values (DS "NaN") are the point
        ds.save_as(buf, enforce_file_format=True, **({} if known else {"implicit_vr": False, "little_endian": True}))
    return buf.getvalue()


@functools.cache
def made_dicoms() -> tuple[bytes, ...]:
    """pydicom-made files covering the display pipeline's branches."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

    g16 = _gradient(8, 6, dtype=np.uint16) >> 4
    out = [
        dicom_bytes(dataset(g16, RescaleSlope="2", RescaleIntercept="-1024", WindowCenter="100", WindowWidth="400")),
        dicom_bytes(dataset(g16, "MONOCHROME1", VOILUTFunction="SIGMOID", WindowCenter="50", WindowWidth="80")),
        dicom_bytes(dataset(_gradient(8, 6).astype(np.int16) - 40)),
        dicom_bytes(dataset(np.stack([_gradient(6, 5)] * 3))),
        dicom_bytes(dataset(_gradient(6, 5, 3), "RGB")),
        dicom_bytes(dataset(_gradient(6, 5, 3), "YBR_FULL")),
        dicom_bytes(dataset(_gradient(6, 5).astype(np.float32))),
        dicom_bytes(dataset(g16), ImplicitVRLittleEndian),
        dicom_bytes(dataset(g16), DeflatedExplicitVRLittleEndian),
    ]
    rle = dataset(_gradient(8, 6))
    rle.compress(RLELossless, encoding_plugin="pydicom")
    out.append(dicom_bytes(rle))
    jpeg = dataset(_gradient(16, 16, 3), "YBR_FULL_422")
    jpeg.PixelData = encapsulate([_pil(_gradient(16, 16, 3), "JPEG")])
    jpeg["PixelData"].VR = "OB"
    out.append(dicom_bytes(jpeg, JPEGBaseline8Bit))
    palette = dataset(_gradient(6, 5), "PALETTE COLOR")
    lut = (np.arange(256, dtype=np.uint16) * 257).tobytes()
    for color in ("Red", "Green", "Blue"):
        setattr(palette, f"{color}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(palette, f"{color}PaletteColorLookupTableData", lut)
    out.append(dicom_bytes(palette))
    return tuple(out)


def real_dicoms(names: tuple[str, ...] = SMALL_REAL_DICOMS) -> tuple[bytes, ...]:
    return tuple((DICOM_DATA / n).read_bytes() for n in names if (DICOM_DATA / n).is_file())


def manifests() -> tuple[dict, ...]:
    from tests.factories import manifest_dict

    rgb = manifest_dict(channels=3, size=20, labels=("a", "b", "c"), positive=None, threshold=None, layout="NHWC")
    rgb["preprocess"].update(resize="letterbox", mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4], pad_value=12)
    rgb["accepts"] = {"modalities": ["CR", "DX"], "channels": [1, 3], "min_size": 8}
    sig = manifest_dict(activation="sigmoid")
    sig["preprocess"]["resize"] = "center_crop"
    return manifest_dict(), rgb, sig


@functools.cache
def onnx_models() -> tuple[bytes, ...]:
    """The tiny test CNN with and without a manifest in its metadata."""
    from tests.factories import manifest_dict, tiny_cnn

    with tempfile.TemporaryDirectory() as tmp:
        return (
            tiny_cnn(Path(tmp, "a.onnx"), manifest=manifest_dict(), size=8).read_bytes(),
            tiny_cnn(Path(tmp, "b.onnx"), size=8).read_bytes(),
        )


def as_json(manifest: dict) -> bytes:
    return json.dumps(manifest).encode()
