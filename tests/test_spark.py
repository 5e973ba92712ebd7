"""The README's Spark recipe (mapInPandas + classify_bytes_many) on a local Spark.

Opt-in (EDGEDX_TEST_SPARK=1) and skipped without pyspark and Java: pyspark is a 400 MB download and
a local Spark took 50 s to start on the 2-core CI machine, so it is not in the test extra.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from tests.conftest import XRAY, need

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

if os.environ.get("EDGEDX_TEST_SPARK") != "1":
    pytest.skip("Spark recipe test is opt-in: EDGEDX_TEST_SPARK=1 (needs pyspark and Java)", allow_module_level=True)
pytest.importorskip("pyspark")
if shutil.which("java") is None:
    pytest.skip("no Java for Spark", allow_module_level=True)


def classify_partition(batches):
    """The README's function, word for word."""
    import pandas as pd

    from edgedx import Classifier
    from edgedx.report import record

    with Classifier() as clf:
        for pdf in batches:
            results = clf.classify_bytes_many(pdf["content"], names=pdf["path"])
            rows = [(r.path, r.status, r.label, r.score, r.error_kind, json.dumps(record(r))) for r in results]
            yield pd.DataFrame(rows, columns=["path", "status", "label", "score", "error_kind", "record"])


def test_spark_recipe_gives_the_classify_records(tmp_path):
    from pyspark.sql import SparkSession

    from edgedx.api import Classifier
    from edgedx.report import record

    for p in sorted(need(XRAY).glob("NORMAL/*.jpeg"))[:6]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "bad.png").write_bytes(b"not an image")
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers need this Python, with edgedx
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    try:
        scans = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(tmp_path))
        schema = "path string, status string, label string, score double, error_kind string, record string"
        rows = scans.select("path", "content").mapInPandas(classify_partition, schema=schema).collect()
    finally:
        spark.stop()
    got = sorted((json.loads(r.record) for r in rows), key=lambda r: r["path"])
    with Classifier() as clf:
        names = [r["path"] for r in got]
        files = [tmp_path / n.rsplit("/", 1)[-1] for n in names]
        expected = [record(r) for r in clf.classify_bytes_many([f.read_bytes() for f in files], names=names)]
    assert got == expected and len(got) == 7
    assert [r["status"] for r in got].count("error") == 1
