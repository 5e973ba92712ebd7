"""No patient data in logs, error records or the audit trail: file paths at most."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.factories import manifest_dict, tiny_cnn

pydicom = pytest.importorskip("pydicom")

NAME, PID, ACCESSION = "SECRET^PATIENT", "PID-987654321", "ACC-55555"


def make_dicom(path, *, pixels=True, truncate=False, rows=64):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName, ds.PatientID, ds.AccessionNumber = NAME, PID, ACCESSION
    ds.Modality, ds.SOPClassUID, ds.SOPInstanceUID = "CR", meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = rows
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixels:
        y, x = np.mgrid[0:rows, 0:rows]
        ds.PixelData = ((x + y) * 16).astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - rows * rows])
    return path


def test_no_patient_data_anywhere(tmp_path):
    model = tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())
    scans = tmp_path / "scans"
    scans.mkdir()
    make_dicom(scans / "good.dcm")
    make_dicom(scans / "nopixels.dcm", pixels=False)
    make_dicom(scans / "truncated.dcm", truncate=True)
    make_dicom(scans / "huge.dcm", rows=60000, pixels=False)
    audit = tmp_path / "audit.ndjson"
    r = subprocess.run(
        [sys.executable, "-m", "edgedx", "classify", str(scans), "-m", str(model), "--json", "--audit", str(audit)],
        capture_output=True, text=True,
    )
    records = r.stdout.splitlines()
    assert len(records) == 4 and r.returncode == 1
    assert sum('"status": "ok"' in x for x in records) == 1
    for text in (r.stdout, r.stderr, audit.read_text()):
        for secret in (NAME, "SECRET", PID, ACCESSION):
            assert secret not in text
    assert "Traceback" not in r.stderr
