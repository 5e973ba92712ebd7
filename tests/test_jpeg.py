"""Strict JPEG decoding (edgedx/jpeg.py; issue 12, items 3, 8 and 9).

Corrupt entropy-coded data is an error, for plain files and DICOM frames; valid files decode to
exactly OpenCV's pixels (the decoder that was replaced), EXIF orientation included; 8-bit JPEG DICOM
decodes without the [dicom] extra, to exactly pydicom's pixels.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedx import jpeg
from edgedx.decode import DecodeOptions, decode_bytes
from edgedx.errors import InputError
from tests.conftest import ROOT
from tests.factories import manifest_dict, tiny_cnn
from tests.fuzz.seeds import dataset, dicom_bytes


def _image(h: int = 96, w: int = 64, color: bool = True, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = cv2.GaussianBlur(rng.integers(0, 256, (h, w), dtype=np.uint8), (0, 0), 2)
    return np.dstack([g, np.roll(g, 5, 1), g[::-1]]) if color else g


def _jpeg(img: np.ndarray, progressive: bool = False, quality: int = 90) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    return cv2.imencode(".jpg", img, params)[1].tobytes()


def corrupted(data: bytes, how: str, seed: int = 0) -> bytes:
    """``data`` with its (last) scan's entropy-coded data damaged, the headers left valid."""
    sos = data.rfind(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    body = len(data) - 2 - start
    rng = np.random.default_rng(seed)
    if how == "zeros":
        return data[:start] + bytes(body) + b"\xff\xd9"
    if how == "random":
        return data[:start] + rng.integers(0, 256, body, dtype=np.uint8).tobytes() + b"\xff\xd9"
    if how == "half_zeros":
        return data[: start + body // 2] + bytes(body - body // 2) + b"\xff\xd9"
    if how == "truncated":
        return data[: start + body // 2]
    if how == "extra_bytes":
        return data[:-2] + bytes(range(1, 65)) + b"\xff\xd9"  # libjpeg absorbs a few bytes, not 64
    raise ValueError(how)


CORRUPTIONS = ("zeros", "random", "half_zeros", "truncated", "extra_bytes")


@pytest.mark.parametrize("how", CORRUPTIONS)
@pytest.mark.parametrize("color, progressive", [(False, False), (True, False), (True, True)])
def test_corrupt_entropy_data_is_an_error_where_opencv_returned_an_image(how, color, progressive):
    data = corrupted(_jpeg(_image(color=color), progressive), how)
    for options in (DecodeOptions(), DecodeOptions(target_size=(8, 8), target_channels=1)):
        with pytest.raises(InputError, match="corrupt or truncated JPEG data"):
            decode_bytes(data, options)


def test_opencv_alone_accepts_most_of_these():
    """Why the strict decoder: OpenCV returns a full-size image for the damaged files."""
    data = _jpeg(_image())
    accepted = [how for how in CORRUPTIONS if cv2.imdecode(np.frombuffer(corrupted(data, how), np.uint8), 1) is not None]
    assert {"zeros", "random", "half_zeros", "extra_bytes"} <= set(accepted)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("color", [False, True])
def test_valid_files_decode_to_exactly_opencvs_pixels(color, progressive):
    img = _image(512, 384, color)
    data = _jpeg(cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if color else img, progressive)
    buf = np.frombuffer(data, np.uint8)
    flags = {1: (cv2.IMREAD_GRAYSCALE, cv2.IMREAD_COLOR), 2: (cv2.IMREAD_REDUCED_GRAYSCALE_2, cv2.IMREAD_REDUCED_COLOR_2),
             4: (cv2.IMREAD_REDUCED_GRAYSCALE_4, cv2.IMREAD_REDUCED_COLOR_4), 8: (cv2.IMREAD_REDUCED_GRAYSCALE_8, cv2.IMREAD_REDUCED_COLOR_8)}  # fmt: skip
    for r, (gray_flag, color_flag) in flags.items():
        np.testing.assert_array_equal(jpeg.decode(data, gray=True, reduce=r), cv2.imdecode(buf, gray_flag))
        if color:
            expected = cv2.cvtColor(cv2.imdecode(buf, color_flag), cv2.COLOR_BGR2RGB)
            np.testing.assert_array_equal(jpeg.decode(data, gray=False, reduce=r), expected)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_opencv(orientation):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(_image(48, 32)).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    data = buf.getvalue()
    assert jpeg.exif_orientation(data) == orientation
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decode_bytes(data)[0].image, expected)


def test_cmyk_jpeg_is_validated_and_decoded_like_opencv():
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_image()).convert("CMYK").save(buf, "JPEG")
    data = buf.getvalue()
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decode_bytes(data)[0].image, expected)
    with pytest.raises(InputError, match="corrupt or truncated JPEG data"):
        decode_bytes(corrupted(data, "zeros"))


def _pydicom_test_file(name: str) -> Path:
    import pydicom

    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    if not path.exists():
        pytest.skip(f"pydicom does not ship {name} here")
    return path


def _jpeg_frame(name: str) -> bytes:
    import pydicom
    from pydicom.encaps import get_frame

    ds = pydicom.dcmread(_pydicom_test_file(name))
    return get_frame(ds.PixelData, 0, number_of_frames=int(ds.get("NumberOfFrames") or 1))


def test_twelve_bit_jpeg_says_it_is_not_supported():
    data = _jpeg_frame("JPEG-lossy.dcm")  # a valid 12-bit JPEG (Extended, Process 4)
    assert jpeg.frame_header(data).precision == 12
    with pytest.raises(InputError, match="12-bit JPEG is not supported"):
        decode_bytes(data)


def test_lossless_jpeg_says_it_is_not_supported():
    data = bytearray(_jpeg(_image(color=False)))
    data[jpeg.sof_offset(data) + 1] = 0xC3  # SOF3: a lossless frame header
    with pytest.raises(InputError, match="lossless JPEG is not supported"):
        decode_bytes(bytes(data))


JPEG_DICOMS = (
    "SC_rgb_jpeg.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_lossy_gdcm.dcm", "SC_rgb_jpeg_app14_dcmd.dcm",
    "SC_jpeg_no_color_transform.dcm", "SC_jpeg_no_color_transform_2.dcm", "SC_rgb_small_odd_jpeg.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",
)  # fmt: skip


@pytest.mark.parametrize("name", JPEG_DICOMS)
def test_jpeg_dicom_frames_decode_like_pydicom(name):
    pytest.importorskip("PIL", reason="the reference decode is pydicom's Pillow plugin")
    import pydicom

    from edgedx import dicom

    path = _pydicom_test_file(name)
    ds = pydicom.dcmread(path)
    reference = dicom._display(ds.pixel_array, ds, str(ds.PhotometricInterpretation).upper(), None)
    np.testing.assert_array_equal(decode_bytes(path.read_bytes())[0].image, reference)


_BLOCK_EXTRAS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("PIL", "pylibjpeg", "openjpeg", "libjpeg", "jpeg_ls", "gdcm"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
"""


def test_base_install_decodes_jpeg_baseline_dicom(tmp_path):
    """Without Pillow, pylibjpeg or GDCM (the [dicom] extra), as the base install has it."""
    names = [n for n in JPEG_DICOMS if (_pydicom_test_file(n)).exists()]
    script = _BLOCK_EXTRAS + f"""
import json, numpy as np, pydicom, os
from edgedx.decode import decode_bytes
from edgedx.errors import InputError
folder = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
out = {{}}
for name in {names!r}:
    image = decode_bytes(open(os.path.join(folder, name), "rb").read())[0].image
    np.save(os.path.join({str(tmp_path)!r}, name + ".npy"), image)
try:
    decode_bytes(open(os.path.join(folder, "JPEG2000.dcm"), "rb").read())
except InputError as exc:
    out["j2k"] = str(exc)
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'edgedx[dicom]'" in json.loads(proc.stdout)["j2k"]  # the extra still does JPEG 2000
    if pytest.importorskip("PIL", reason="compare with pydicom's Pillow decode"):
        import pydicom

        from edgedx import dicom

        for name in names:
            ds = pydicom.dcmread(_pydicom_test_file(name))
            reference = dicom._display(ds.pixel_array, ds, str(ds.PhotometricInterpretation).upper(), None)
            np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), reference)


def _jpeg_dicom(frame_bytes: bytes, gray: np.ndarray) -> bytes:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = dataset(gray)
    ds.PixelData = encapsulate([frame_bytes])
    ds["PixelData"].VR = "OB"
    return dicom_bytes(ds, JPEGBaseline8Bit)


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_jpeg_frame_in_dicom_is_an_error(how):
    gray = _image(64, 48, color=False)
    good = _jpeg(gray)
    np.testing.assert_array_equal(decode_bytes(_jpeg_dicom(good, gray))[0].image.shape, gray.shape)
    with pytest.raises(InputError, match="DICOM frame 0: corrupt or truncated JPEG data"):
        decode_bytes(_jpeg_dicom(corrupted(good, how), gray))


def test_corrupt_jpegs_through_the_cli(tmp_path):
    model = tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())
    gray = _image(64, 48, color=False)
    good = _jpeg(gray)
    files = {"good.jpg": good, "zeros.jpg": corrupted(good, "zeros"), "random.jpg": corrupted(good, "random"),
             "frame.dcm": _jpeg_dicom(corrupted(good, "zeros"), gray)}  # fmt: skip
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    proc = subprocess.run(
        [sys.executable, "-m", "edgedx", "classify", *(str(tmp_path / n) for n in files), "--json", "-m", str(model)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    records = {os.path.basename(r["path"]): r for r in map(json.loads, proc.stdout.splitlines())}
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert records["good.jpg"]["status"] == "ok"
    for name in ("zeros.jpg", "random.jpg", "frame.dcm"):
        assert records[name]["status"] == "error" and "corrupt or truncated JPEG data" in records[name]["error"]
    assert "Corrupt JPEG" not in proc.stderr  # libjpeg's own warning no longer reaches the terminal
