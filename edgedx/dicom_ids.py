"""DICOM identifiers for records (``--dicom-uids``): Study, Series and SOP Instance UIDs.

They let results join back to the archive they came from. They are identifiers, not patient data,
but they still never reach a log: only records carry them, and only when asked. A value that is
not a well-formed UID (digits and dots, at most 64 characters) is reported as None, so a hostile
file cannot smuggle text into the records through these fields.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from types import MappingProxyType
from collections.abc import Mapping

from edgedx import decode

#: Record field -> DICOM keyword.
FIELDS: Mapping[str, str] = MappingProxyType({
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
})
#: The value for a file that is not DICOM (or has none of the identifiers).
NONE: Mapping[str, None] = MappingProxyType(dict.fromkeys(FIELDS))

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def identifiers(data: bytes) -> dict[str, str | None]:
    """The three UIDs of a DICOM file's content; all None for other formats or unreadable headers.

    Reads the header only (stops before the pixel data); never raises.
    """
    out: dict[str, str | None] = dict(NONE)
    if decode.sniff(data[: decode.HEAD_SIZE]) != "dicom":
        return out
    import pydicom  # first: importing it resets its logger's level

    # As edgedx.dicom does: pydicom's warnings may quote tag values, and logs carry no tag values.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True, specific_tags=list(FIELDS.values()))
        for field, keyword in FIELDS.items():
            value = str(ds.get(keyword) or "").strip().rstrip("\0")
            out[field] = value if len(value) <= 64 and _UID.fullmatch(value) else None
    except Exception:  # a broken header: the decoder reports it; the identifiers stay None
        return dict(NONE)
    return out
