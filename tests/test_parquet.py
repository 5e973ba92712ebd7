"""--format parquet: one file, the NDJSON record's columns and values, never half-written."""

from __future__ import annotations

import json

import pytest

from edgedx.cli import main

pq = pytest.importorskip("pyarrow.parquet")
pytestmark = pytest.mark.timeout(120)


def test_same_columns_and_values_as_ndjson(tmp_path, capsys, xray_files):
    inputs = [*xray_files[:3], tmp_path / "missing.png"]
    for extra in ([], ["--top-k", "2"]):
        nd, table = tmp_path / "r.ndjson", tmp_path / "r.parquet"
        assert main(["classify", *map(str, inputs), "--json", "-o", str(nd), *extra]) == 1
        assert main(["classify", *map(str, inputs), "--format", "parquet", "-o", str(table), *extra]) == 1
        records = [json.loads(x) for x in nd.read_text().splitlines()]
        got = pq.read_table(table)
        assert got.column_names == list(records[0])
        assert got.to_pylist() == records
        assert got.schema.field("scores").type.num_fields == 2 and str(got.schema.field("frame").type) == "int64"
    assert not list(tmp_path.glob(".*partial"))
    capsys.readouterr()


def test_parquet_needs_a_file_and_resume_needs_ndjson(tmp_path, capsys, xray_files):
    assert main(["classify", str(xray_files[0]), "--format", "parquet"]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["classify", str(xray_files[0]), "--format", "parquet", "--resume", str(tmp_path / "r.parquet")]) == 2
    assert "NDJSON" in capsys.readouterr().err


def test_an_empty_run_still_writes_a_readable_file(tmp_path, capsys, xray_files):
    from edgedx.api import Classifier
    from edgedx.parquet import ParquetWriter

    with Classifier() as clf:
        labels = clf.manifest.labels
    out = tmp_path / "none.parquet"
    ParquetWriter(out, labels).close()
    assert pq.read_table(out).num_rows == 0 and "scores" in pq.read_table(out).column_names
