"""Classifier.classify_bytes: records from bytes the caller fetched, the same as from the file."""

from __future__ import annotations

import pytest

from edgedx.api import Classifier

pytestmark = pytest.mark.timeout(120)


def test_bytes_give_the_file_records(xray_files, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    files = [*xray_files, bad]
    with Classifier() as clf:
        from_files = [r.to_dict() for r in clf.classify_many(files)]
        one = clf.classify_bytes(files[0].read_bytes(), name=str(files[0]))
        many = [r.to_dict() for r in clf.classify_bytes_many((f.read_bytes() for f in files), names=map(str, files))]
        anonymous = clf.classify_bytes(files[1].read_bytes())
    assert many == from_files and one.to_dict() == from_files[0]
    assert from_files[-1]["status"] == "error" and from_files[-1]["error_kind"] == "input"
    assert anonymous.path is None and anonymous.score == from_files[1]["score"]
