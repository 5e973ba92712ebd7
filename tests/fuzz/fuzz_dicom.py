"""Target ``dicom``: structure-aware mutations of valid DICOM files through the DICOM decode path.

The fuzzer's bytes choose a seed file (pydicom-made, or small real ones from ../shared/data/dicom),
then up to six edits of the elements the display pipeline reads (sizes, bit depths, photometric
interpretation, frames, rescale, windows, LUTs, transfer syntax, pixel data length), then a few raw
byte overwrites of the re-encoded file. Inputs pydicom cannot encode are skipped (not findings).
"""

from __future__ import annotations

import functools
import io

from edgedx.decode import DecodeOptions, decode_bytes
from tests.fuzz import seeds as seedmod
from tests.fuzz.common import Take, expect_edgedx_error
from tests.fuzz.fuzz_decode import MAX_PIXELS, check_decoded

_OPTIONS = (
    DecodeOptions(max_pixels=MAX_PIXELS),
    DecodeOptions(max_pixels=MAX_PIXELS, all_frames=True),
    DecodeOptions(max_pixels=MAX_PIXELS, window=(40.0, 400.0)),
)
_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5", "1.2.3.4", "",
)  # fmt: skip
_PHOTOMETRICS = (
    "MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT",
    "PALETTE COLOR", "HSV", "", "monochrome2 ",
)  # fmt: skip
_STRINGS = ("", "0", "1", "-1", "1e308", "-1e308", "NaN", "inf", "1\\2", "abc", "40\\400\\1", " 2 ", "1e-320")
_INT_ELEMENTS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "PlanarConfiguration",
)  # fmt: skip
_TEXT_ELEMENTS = (
    "NumberOfFrames", "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "RescaleType", "Modality",
)  # fmt: skip
_LUT = ("LUTDescriptor", "LUTData")


@functools.cache
def _files() -> tuple[bytes, ...]:
    return (*seedmod.made_dicoms(), *seedmod.real_dicoms(), *seedmod.real_dicoms(seedmod.LUT_REAL_DICOMS))


def seeds() -> list[bytes]:
    """Fuzzer inputs (not files): each picks a seed file and a few edits."""
    return [bytes([i, 0]) for i in range(len(_files()))] + [bytes([i, 3, 0, 1, 7, 1]) for i in range(len(_files()))]


def build(data: bytes) -> tuple[bytes, DecodeOptions] | None:
    """The DICOM file and options the fuzzer's bytes describe, or None when pydicom cannot encode it."""
    import pydicom

    take = Take(data)
    files = _files()
    source = files[take.below(len(files))]
    try:
        ds = pydicom.dcmread(io.BytesIO(source), force=True)
        for _ in range(take.below(7)):
            _edit(ds, take)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=False)
    except Exception:  # the edit made a dataset pydicom will not write: not a decoder input
        return None
    out = bytearray(buf.getvalue())
    for _ in range(take.below(4)):
        if out:
            out[take.below(len(out))] = take.byte()
    if take.flag():  # truncate
        del out[take.below(len(out) + 1) :]
    return bytes(out), take.choice(_OPTIONS)


def one_input(data: bytes) -> None:
    built = build(data)
    if built is None:
        return
    blob, options = built
    out = expect_edgedx_error(lambda: decode_bytes(blob, options))
    if out is not None:
        check_decoded(out, options)


def _edit(ds, take: Take) -> None:
    kind = take.below(8)
    if kind == 0:
        setattr(
            ds,
            take.choice(_INT_ELEMENTS),
            int(take.choice((0, 1, 2, 3, 4, 7, 8, 12, 15, 16, 17, 31, 32, 64, 255, 256, 4096, 65535))),
        )
    elif kind == 1:
        setattr(ds, take.choice(_TEXT_ELEMENTS), take.choice(_STRINGS))
    elif kind == 2:
        ds.PhotometricInterpretation = take.choice(_PHOTOMETRICS)
    elif kind == 3:
        ds.file_meta.TransferSyntaxUID = take.choice(_TRANSFER_SYNTAXES)
    elif kind == 4:  # pixel data shorter, longer or empty
        tag = next((t for t in ("PixelData", "FloatPixelData") if t in ds), "PixelData")
        value = bytes(ds.get(tag, b"") or b"")
        cut = take.below(len(value) + 2)
        setattr(ds, tag, value[:cut] if take.flag() else value + bytes(cut))
    elif kind == 5:  # delete an element the pipeline reads
        name = take.choice(_INT_ELEMENTS + _TEXT_ELEMENTS + ("PixelData", "PhotometricInterpretation"))
        if name in ds:
            delattr(ds, name)
    elif kind == 6:  # a VOI LUT sequence with a hostile descriptor
        from pydicom.dataset import Dataset

        item = Dataset()
        item.LUTDescriptor = [
            take.choice((0, 1, 2, 256, 4096, 65535)),
            take.choice((0, 1, 100, 65535)),
            take.choice((0, 1, 8, 12, 16, 17, 255)),
        ]
        item.LUTData = [take.below(65536) for _ in range(take.below(6))]
        ds.VOILUTSequence = [item]
    else:  # a Modality LUT
        from pydicom.dataset import Dataset

        item = Dataset()
        item.LUTDescriptor = [take.choice((0, 1, 3, 4096)), take.choice((0, 1, 65535)), take.choice((8, 12, 16, 0))]
        item.LUTData = [take.below(65536) for _ in range(take.below(5))]
        ds.ModalityLUTSequence = [item]
