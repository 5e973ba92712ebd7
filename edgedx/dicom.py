"""DICOM bytes -> display-ready frames, the way a viewer shows them.

Grayscale: Modality LUT (or rescale slope/intercept), then VOI (the caller's window, else the
file's VOI LUT or first window, else the frame's min..max) onto float32 0..255, then MONOCHROME1
inverted so that bone is bright as in MONOCHROME2. Color (RGB, YBR_FULL*, YBR_ICT/RCT, PALETTE
COLOR): uint8 RGB.

8-bit JPEG Baseline/Extended frames are decoded by :func:`edgedx.jpeg.decode` (strict, in the base
install); other compressed syntaxes by pydicom's decoders (the ``[dicom]`` extra). A valid Modality
LUT of any bit depth is applied here (pydicom's raises TypeError for 12-bit LUTs).

pydicom is imported here only, on first use. Messages and logs name structure (transfer syntax,
sizes, photometric interpretation), never tag values or pixels: pydicom's own warnings, which may
quote values, are silenced process-wide, and its exception texts are dropped when they quote a
dataset value.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgedx import jpeg
from edgedx.codestream import check_pixels
from edgedx.decoded import Decoded, DecodeOptions, SourceInfo
from edgedx.errors import InputError
from edgedx.text import printable

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_RGB_PHOTOMETRICS = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})  # RGB once pydicom decodes
_IDENTIFYING_VRS = frozenset({"AE", "AS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UT"})
_DEFLATED = "1.2.840.10008.1.2.1.99"
#: Bytes of a deflated dataset, beyond 8 per pixel allowed by ``max_pixels``, that inflating may produce.
DEFLATE_SLACK = 16 << 20
#: Frame header markers: JPEG SOF0-15 (not DHT, JPG, DAC) and JPEG-LS SOF55.
_FRAME_SOF = jpeg.SOF_MARKERS | {0xF7}
#: JPEG Baseline (Process 1) and Extended (Process 2 & 4): their 8-bit frames are decoded by
#: :func:`edgedx.jpeg.decode` (strict libjpeg-turbo, in the base install); 12-bit ones by pydicom's
#: decoders (the ``[dicom]`` extra), like JPEG 2000, JPEG-LS and JPEG Lossless.
_JPEG_8BIT_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})
#: Pixel values beyond this magnitude overflow float32 arithmetic (the display pipeline's type).
_FLOAT32_SAFE = 1e37


def decode(data: bytes, options: DecodeOptions) -> list[Decoded]:
    """Decode a DICOM file's content: the first frame, or every frame with ``options.all_frames``.

    Raises:
        InputError: unreadable, no pixel data, too many pixels, unsupported transfer syntax or
            photometric interpretation, decoder not installed, or corrupt pixel data.
    """
    _quiet_pydicom()
    try:
        with np.errstate(all="ignore"):  # overflow is checked for, not printed to stderr
            return _decode(data, options)
    except InputError:
        raise
    except MemoryError:
        raise InputError("not enough memory to decode this DICOM file") from None
    except Exception as exc:  # a last guard: the type only, the text might quote a value
        raise InputError(f"cannot decode DICOM ({type(exc).__name__})") from None


def _quiet_pydicom() -> None:
    """Silence pydicom's warnings and warning logs, process-wide: they may quote tag values.

    Process-wide because decoding runs in worker threads, where ``warnings.catch_warnings`` is unsafe;
    on every call because a caller's ``catch_warnings`` may have restored the filters since (an
    existing identical filter is replaced, not duplicated).
    """
    import pydicom  # noqa: F401  (first: importing it resets its logger's level)

    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


def _decode(data: bytes, options: DecodeOptions) -> list[Decoded]:
    import pydicom

    try:
        _check_deflated(data, 8 * options.max_pixels + DEFLATE_SLACK)
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"truncated or malformed DICOM file ({type(exc).__name__})") from None
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise InputError("DICOM file has no pixel data: truncated, or not an image (a report, DICOMDIR, ...)")
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    frames = int(ds.get("NumberOfFrames") or 1)
    wanted = range(frames) if options.all_frames else range(1)
    check_pixels(columns, rows, options.max_pixels, "DICOM image", frames=len(wanted))
    tsyntax = _transfer_syntax(ds)
    # Code strings from the file, escaped: they reach messages and gate reasons (one line each).
    photometric = printable(str(ds.get("PhotometricInterpretation") or "").strip().upper(), 64)
    if tsyntax.is_encapsulated and "PixelData" in ds:
        _check_embedded_frames(ds, len(wanted), frames, columns, rows)
    out = []
    for index in wanted:
        image = _display(_pixels(ds, index, tsyntax), ds, photometric, options.window)
        if not np.isfinite(image).all():  # float data or a LUT/window made NaN or infinity
            raise InputError(
                "DICOM image has NaN or infinite values after rescale and windowing (float pixel data, "
                "or a rescale slope/intercept or window out of range)"
            )
        info = SourceInfo(
            format="dicom",
            width=columns,
            height=rows,
            channels=1 if image.ndim == 2 else 3,
            bit_depth=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0),
            frame=index if frames > 1 else None,
            frames=frames,
            photometric=photometric,
            modality=printable(str(ds.get("Modality") or ""), 64) or None,
            transfer_syntax=tsyntax.name,
            body_part=printable(str(ds.get("BodyPartExamined") or "").strip().upper(), 64) or None,
            view_position=printable(str(ds.get("ViewPosition") or "").strip().upper(), 64) or None,
        )
        out.append(Decoded(image, info))
    return out


def _check_deflated(data: bytes, limit: int) -> None:
    """Refuse a Deflated Explicit VR dataset that inflates to more than ``limit`` bytes.

    pydicom inflates the whole dataset in memory before reading it, so without this a small file
    (deflate reaches 1000:1) is a memory bomb. The file meta is read as pydicom reads it.
    """
    if _DEFLATED.encode() not in data:  # the file meta is never deflated: its UID is plain text
        return
    from pydicom.filereader import _read_command_set_elements, _read_file_meta_info, read_preamble

    fp = io.BytesIO(data)
    read_preamble(fp, True)
    meta = _read_file_meta_info(fp)
    if str(meta.get("TransferSyntaxUID") or "") != _DEFLATED:
        return
    _read_command_set_elements(fp)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflater.decompress(data[fp.tell() :], limit)
    except zlib.error:
        raise InputError("cannot decode DICOM: corrupt deflated dataset") from None
    if inflater.unconsumed_tail:
        raise InputError(
            f"deflated DICOM dataset inflates to more than {limit:,} bytes, more than its pixel limit allows "
            "(a decompression bomb, or raise DecodeOptions.max_pixels)"
        )


def _check_embedded_frames(ds: Dataset, count: int, frames: int, columns: int, rows: int) -> None:
    """Refuse a compressed frame (of the first ``count``) whose own header declares more samples than
    Rows x Columns x SamplesPerPixel, or a JPEG frame with too many scans (:func:`check_jpeg_scans`).

    pydicom decodes a frame fully before comparing its size with Rows and Columns: a tiny JPEG or
    JPEG 2000 codestream declaring a huge image would be allocated first (a decompression bomb
    behind small Rows/Columns). Headers and encapsulations this cannot read are left to the decoder.
    """
    from pydicom.encaps import generate_frames

    samples = max(int(ds.get("SamplesPerPixel") or 1), 1)
    offsets = None
    if ds.get("ExtendedOffsetTable") is not None and ds.get("ExtendedOffsetTableLengths") is not None:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        found = generate_frames(ds.PixelData, number_of_frames=frames, extended_offsets=offsets)
        for index, frame in zip(range(count), found, strict=False):  # fewer frames: the decoder says so
            if frame[:2] == b"\xff\xd8":
                jpeg.check_scans(frame, f"DICOM frame {index}: the compressed image")
            size = _codestream_size(frame)
            if size is not None and size[0] * size[1] * size[2] > columns * rows * samples:
                width, height, components = size
                raise InputError(
                    f"DICOM frame {index}: the compressed image declares {width}x{height}x{components} samples, "
                    f"more than Rows x Columns ({columns}x{rows}x{samples}): corrupt or hostile pixel data"
                )
    except InputError:
        raise
    except Exception:  # malformed encapsulation: the decoder reports it
        return


def _codestream_size(frame: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG/JPEG-LS frame header or a JPEG 2000 SIZ segment."""
    try:
        if frame[:2] == b"\xff\xd8":
            pos = jpeg.sof_offset(frame, _FRAME_SOF)
            height, width, components = struct.unpack_from(">HHB", frame, pos + 5)
            return width, height, components
        pos = frame.find(b"\xff\x4f\xff\x51", 0, 4096)  # J2K SOC + SIZ, bare or inside a JP2 box
        if pos >= 0:
            xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", frame, pos + 8)
            (csiz,) = struct.unpack_from(">H", frame, pos + 40)
            return max(xsiz - xosiz, 0), max(ysiz - yosiz, 0), csiz
    except (struct.error, IndexError, InputError):
        pass
    return None


def _transfer_syntax(ds: Dataset) -> UID:
    """The dataset's transfer syntax (guessed from its encoding without file meta); refuses what cannot decode."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if not tsyntax:
        implicit, little = ds.original_encoding
        tsyntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.file_meta.TransferSyntaxUID = tsyntax
    tsyntax = UID(str(tsyntax))
    label = printable(tsyntax.name if tsyntax.name == str(tsyntax) else f"{tsyntax.name} ({tsyntax})", 120)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise InputError(f"unsupported DICOM transfer syntax {label}: no pixel data decoder exists for it") from None
    if tsyntax in _JPEG_8BIT_SYNTAXES:  # decoded here when 8-bit (see _pixels); else checked there
        return tsyntax
    if not decoder.is_available:
        raise InputError(
            f"no decoder installed for DICOM transfer syntax {label}; pydicom can use any of: "
            f"{'; '.join(decoder.missing_dependencies)} (pip install 'edgedx[dicom]')"
        )
    return tsyntax


def _pixels(ds: Dataset, index: int, tsyntax: UID) -> np.ndarray:
    """One decoded frame, YBR_FULL* already converted to RGB."""
    from pydicom.pixels import pixel_array

    if tsyntax in _JPEG_8BIT_SYNTAXES and "PixelData" in ds:
        frame = _jpeg_frame(ds, index)
        header = _frame_header(frame, index)
        if header.precision == 8 and not header.lossless:
            return _decode_jpeg_frame(ds, frame, header, index)
        _need_decoder(tsyntax, f"{header.precision}-bit JPEG frames")
    try:
        return pixel_array(ds, index=index)
    except MemoryError:
        raise
    except Exception as exc:
        raise InputError(f"cannot decode DICOM pixel data ({tsyntax.name}): {_safe_reason(exc, ds)}") from None


def _jpeg_frame(ds: Dataset, index: int) -> bytes:
    from pydicom.encaps import get_frame

    offsets = None
    if ds.get("ExtendedOffsetTable") is not None and ds.get("ExtendedOffsetTableLengths") is not None:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        return get_frame(ds.PixelData, index, number_of_frames=int(ds.get("NumberOfFrames") or 1), extended_offsets=offsets)
    except Exception as exc:  # a malformed encapsulation: pydicom's message names no tag value
        raise InputError(f"cannot read DICOM frame {index} from the encapsulated pixel data ({type(exc).__name__})") from None


def _frame_header(frame: bytes, index: int) -> jpeg.FrameHeader:
    try:
        return jpeg.frame_header(frame)
    except (IndexError, struct.error):
        raise InputError(f"DICOM frame {index}: truncated or malformed JPEG header") from None
    except InputError as exc:
        raise InputError(f"DICOM frame {index}: {exc}") from None


def _decode_jpeg_frame(ds: Dataset, frame: bytes, header: jpeg.FrameHeader, index: int) -> np.ndarray:
    """An 8-bit JPEG frame, strictly decoded: HxW (one sample) or HxWx3 RGB, sized as Rows x Columns."""
    samples = int(ds.get("SamplesPerPixel") or 1)
    if header.components != samples:
        raise InputError(
            f"DICOM frame {index}: the JPEG has {header.components} components, SamplesPerPixel says {samples}"
        )
    if samples == 3 and str(ds.get("PhotometricInterpretation") or "").strip().upper() == "RGB":
        frame = jpeg.without_color_transform(frame)  # RGB components as stored (PS3.5 8.2.1)
    arr = jpeg.decode(frame, gray=samples == 1, apply_orientation=False, what=f"DICOM frame {index}")
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if arr.shape[:2] != (rows, columns):
        raise InputError(f"DICOM frame {index}: the JPEG is {arr.shape[1]}x{arr.shape[0]}, Rows x Columns say {columns}x{rows}")
    bits = int(ds.get("BitsStored") or 8)
    if samples == 1 and int(ds.get("PixelRepresentation") or 0) == 1 and 1 <= bits <= 8:
        signed = arr.astype(np.int16)
        signed[signed >= 1 << (bits - 1)] -= 1 << bits  # two's complement in BitsStored bits
        return signed
    return arr


def _need_decoder(tsyntax: UID, what: str) -> None:
    from pydicom.pixels import get_decoder

    decoder = get_decoder(tsyntax)
    if not decoder.is_available:
        raise InputError(
            f"no decoder installed for {what} ({tsyntax.name}); pydicom can use any of: "
            f"{'; '.join(decoder.missing_dependencies)} (pip install 'edgedx[dicom]')"
        )


def _display(arr: np.ndarray, ds: Dataset, photometric: str, window: tuple[float, float] | None) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    if photometric in ("MONOCHROME1", "MONOCHROME2") and arr.ndim == 2:
        out = _grayscale(arr, ds, window)
        if photometric == "MONOCHROME1":
            np.subtract(np.float32(255.0), out, out=out)
        return out
    if photometric == "PALETTE COLOR" and arr.ndim == 2:
        rgb = apply_color_lut(arr, ds)
        return rgb if rgb.dtype == np.uint8 else (rgb >> 8).astype(np.uint8)
    if photometric in _RGB_PHOTOMETRICS and arr.ndim == 3 and arr.shape[2] == 3:
        if arr.dtype == np.uint8:
            return np.ascontiguousarray(arr)
        top = 2 ** int(ds.get("BitsStored") or 16) - 1
        return np.clip(np.rint(arr.astype(np.float32) * (255.0 / top)), 0, 255).astype(np.uint8)
    raise InputError(f"unsupported DICOM photometric interpretation {photometric} with pixel shape {arr.shape}")


def _grayscale(arr: np.ndarray, ds: Dataset, window: tuple[float, float] | None) -> np.ndarray:
    """Modality LUT then VOI, onto float32 0..255."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = _modality_lut(arr, ds) if ds.get("ModalityLUTSequence") else apply_modality_lut(arr, ds)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise InputError(
            "DICOM pixel values are NaN or infinite after the modality LUT (float pixel data, or a "
            "rescale slope/intercept out of range)"
        )
    if window is not None:
        return _window(values, window[0], window[1], "LINEAR")
    if ds.get("VOILUTSequence"):
        if not np.issubdtype(values.dtype, np.integer):  # a LUT indexes integers
            values = np.rint(values).astype(np.int64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = apply_voi_lut(values, ds, index=0).astype(np.float32)
        return np.clip(out * np.float32(255.0 / (2**bits - 1)), 0, 255, out=out)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        if not (np.isfinite(center) and np.isfinite(width)):
            raise InputError(
                "DICOM window center/width is not a finite number: give a window (center, width) explicitly"
            )
        if not width > 0:
            raise InputError(f"DICOM window width {width} is not > 0: give a window (center, width) explicitly")
        return _window(values, center, width, str(ds.get("VOILUTFunction") or "LINEAR").upper())
    lo, hi = float(values.min()), float(values.max())
    gain = 255.0 / (hi - lo) if hi > lo else 0.0
    if max(abs(lo), abs(hi)) > _FLOAT32_SAFE:  # the range itself would overflow float32: scale in float64
        return ((values.astype(np.float64) - lo) * gain).astype(np.float32)
    out = values.astype(np.float32)
    out -= np.float32(lo)
    out *= np.float32(gain)
    return out


def _modality_lut(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """The Modality LUT (PS3.3 C.11.1) of the first item: stored values -> output values (uint16).

    Here rather than pydicom's ``apply_modality_lut``, which builds a numpy type from the LUT's bit
    depth (``uint12``: a TypeError for every valid 12-bit LUT). Values below the first mapped value
    take the first entry, above the last the last entry.
    """
    item = ds.ModalityLUTSequence[0]
    try:
        entries, first, bits = (int(v) for v in _values(item.LUTDescriptor)[:3])
        element = item["LUTData"]
    except (KeyError, AttributeError, TypeError, ValueError):
        raise InputError("DICOM Modality LUT has no valid LUT Descriptor (entries, first value, bits) or LUT Data") from None
    entries = entries or 1 << 16
    if not 8 <= bits <= 16:
        raise InputError(f"DICOM Modality LUT declares {bits} bits per entry; 8 to 16 are valid")
    if int(ds.get("PixelRepresentation") or 0) == 1 and first >= 1 << 15:
        first -= 1 << 16  # the first mapped value is signed for signed pixel data (read as US)
    value = element.value
    if isinstance(value, (bytes, bytearray)):
        little = ds.original_encoding[1] is not False
        lut = np.frombuffer(bytes(value[: len(value) // 2 * 2]), "<u2" if little else ">u2")
    else:
        lut = np.asarray([int(v) for v in _values(value)], np.int64)
    if lut.size < entries or lut.size == 0 or lut.min() < 0 or lut.max() >= 1 << 16:
        raise InputError(
            f"DICOM Modality LUT Data has {lut.size:,} entries of 0..65535, the descriptor says {entries:,}"
        )
    index = np.clip(arr.astype(np.int64) - first, 0, entries - 1)
    return lut[:entries].astype(np.uint16)[index]


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing (LINEAR, LINEAR_EXACT, SIGMOID) onto float32 0..255."""
    x = values.astype(np.float32)
    if function == "SIGMOID":
        with np.errstate(over="ignore"):
            return (255.0 / (1.0 + np.exp(np.float32(-4.0 / width) * (x - np.float32(center))))).astype(np.float32)
    if function == "LINEAR_EXACT":
        x -= np.float32(center - width / 2)
        x *= np.float32(1.0 / width)
    elif width > 1:
        x -= np.float32(center - 0.5 - (width - 1) / 2)
        x *= np.float32(1.0 / (width - 1))
    else:  # width 1: a threshold
        x = (x > np.float32(center - 0.5)).astype(np.float32)
    np.clip(x, 0.0, 1.0, out=x)
    x *= np.float32(255.0)
    return x


def _values(value: object) -> list[object]:
    """An element's values as a list (pydicom gives a single value or a MultiValue)."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]


def _first(value: object) -> float:
    """The first of a multi-valued element (several windows: the first is the default view)."""
    return float(_values(value)[0])


def _safe_reason(exc: Exception, ds: Dataset) -> str:
    """The exception's text on one line, unless it quotes a value that may identify the patient."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if not text:
        return type(exc).__name__
    for element in ds.iterall():
        if element.VR in _IDENTIFYING_VRS and element.value is not None:
            for value in _values(element.value):
                if len(str(value)) >= 3 and str(value) in text:
                    return type(exc).__name__
    return f"{type(exc).__name__}: {printable(text, 300)}"
