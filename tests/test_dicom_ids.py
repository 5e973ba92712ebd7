"""--dicom-uids: identifiers in records (to join back to the archive), never in logs."""

from __future__ import annotations

import json

import pytest

from edgedx import dicom_ids
from edgedx.cli import main
from tests.conftest import DICOM, need

pytestmark = pytest.mark.timeout(120)


def test_uids_in_records_only_when_asked(tmp_path, capsys, xray_files):
    ct = need(DICOM / "CT_small.dcm")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(ct.read_bytes()[:2000])  # header intact, pixels cut: an error record with UIDs
    audit = tmp_path / "audit.jsonl"
    missing = tmp_path / "missing.dcm"
    code = main(["classify", str(ct), str(broken), str(xray_files[0]), str(missing), "--json", "--dicom-uids", "--audit", str(audit)])
    out, err = capsys.readouterr()
    records = [json.loads(x) for x in out.splitlines()]
    assert code == 1 and [r["status"] for r in records] == ["rejected", "error", "ok", "error"]
    assert all(records[3][k] is None for k in dicom_ids.FIELDS)
    uid = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    assert records[0]["sop_instance_uid"] == uid and records[1]["sop_instance_uid"] == uid
    assert records[0]["study_instance_uid"] == "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    assert all(records[2][k] is None for k in dicom_ids.FIELDS)
    assert "5962" not in err and "5962" not in audit.read_text()
    main(["classify", str(ct), "--json"])
    assert "sop_instance_uid" not in json.loads(capsys.readouterr().out)


def test_values_that_are_not_uids_are_dropped():
    pydicom = pytest.importorskip("pydicom")
    import io

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "DOE^JOHN"  # not a UID: must not reach the records
    buf = io.BytesIO()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.save_as(buf, enforce_file_format=True)
    got = dicom_ids.identifiers(buf.getvalue())
    assert got == {"study_instance_uid": "1.2.3", "series_instance_uid": None, "sop_instance_uid": None}
    assert dicom_ids.identifiers(b"\x89PNG\r\n\x1a\n") == dict(dicom_ids.NONE)
