"""edgedx.ray on an in-process Ray cluster: the same records as edgedx classify, crashes included.

Ray starts here with ``ray.init(num_cpus=2)`` (never ``ray start``/``ray stop``, which reach every
Ray process on the machine) and every test has a timeout: a resource deadlock in Ray hangs silently.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import DICOM, ROOT, XRAY, need

ray = pytest.importorskip("ray")
pytest.importorskip("pyarrow")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the crashing actor below
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> list[Path]:
    """Two dozen real X-rays, DICOM files (some rejected by the gate), a corrupt and a missing file."""
    root = need(XRAY)
    tmp = tmp_path_factory.mktemp("inputs")
    bad = tmp / "corrupt.jpeg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    files = sorted((root / "NORMAL").glob("*.jpeg"))[:12] + sorted((root / "PNEUMONIA").glob("*.jpeg"))[:12]
    return [*files[:10], bad, tmp / "missing.png", *files[10:], *sorted(need(DICOM).glob("*.dcm"))[:4]]


def plain(paths, **settings) -> list[dict]:
    from edgedx.api import Classifier

    with Classifier(**settings) as clf:
        return [r.to_dict() for r in clf.classify_many(paths)]


def on_ray(sources, workers=2, **kwargs) -> list[dict]:
    from edgedx.api import Classifier
    from edgedx.ray import RayOptions, classify

    with Classifier() as clf:
        model = str(clf.model_path)
    return [r.to_dict() for r in classify(sources, {"model": model, "workers": 1}, RayOptions(workers=workers, batch_size=4), **kwargs)]


def test_same_records_as_classify_including_errors(cluster, scans):
    expected = plain(scans)
    got = on_ray(scans)
    assert [r["status"] for r in got].count("error") == 2
    assert "rejected" in {r["status"] for r in got}
    assert got == expected


def test_bytes_dataset_gives_the_classify_bytes_records(cluster, scans):
    from edgedx.api import Classifier

    readable = [p for p in scans if p.exists()][:8]
    rows = [{"bytes": p.read_bytes(), "path": f"archive/{p.name}"} for p in readable]
    with Classifier() as clf:
        expected = [r.to_dict() for r in clf.classify_bytes_many([r["bytes"] for r in rows], names=[r["path"] for r in rows])]
    assert on_ray(ray.data.from_items(rows), workers=1) == expected
    assert [r["path"] for r in expected] == [r["path"] for r in rows]


def test_uris_go_through_a_read_stage(cluster, scans, tmp_path):
    """A URI (here Ray's local:// scheme) is read by read tasks; records name the path Ray reports."""
    from edgedx.api import Classifier

    folder = tmp_path / "bucket"
    folder.mkdir()
    for p in [s for s in scans if s.exists()][8:14]:
        (folder / p.name).write_bytes(p.read_bytes())
    got = on_ray([f"local://{folder}"])
    files = sorted(folder.iterdir())
    with Classifier() as clf:
        expected = [r.to_dict() for r in clf.classify_bytes_many([f.read_bytes() for f in files], names=map(str, files))]
    assert sorted(got, key=lambda r: r["path"]) == expected and len(got) == 6


from edgedx.ray import Predictor  # noqa: E402  (after importorskip)


class CrashOnce(Predictor):
    """Kills its worker process the first time it is given ``victim`` (``marker`` records that it did)."""

    victim = ""
    marker = ""

    def __call__(self, batch):
        if self.victim in {str(p) for p in batch.get("path", [])}:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os._exit(1)
        return super().__call__(batch)


def test_a_crashed_worker_loses_and_duplicates_nothing(cluster, scans, tmp_path):
    marker = tmp_path / "crashed"
    crasher = type("CrashOnce", (CrashOnce,), {"victim": str(scans[14]), "marker": str(marker)})
    got = on_ray(scans, predictor=crasher)
    assert marker.exists(), "the worker never crashed: the test tested nothing"
    assert got == plain(scans)


def test_cli_ray_with_files_from_resume_and_parquet(cluster, scans, tmp_path, capsys):
    import pyarrow.parquet as pq

    from edgedx.cli import main

    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\0".join(str(p).encode() for p in scans))
    whole = tmp_path / "whole.ndjson"
    assert main(["classify", "--files-from", str(listing), "-0", "--json", "-o", str(whole), "-q"]) == 1
    lines = whole.read_text().splitlines()
    out = tmp_path / "resumed.ndjson"
    out.write_text("\n".join(lines[:9]) + "\n" + lines[9][:20])  # a run killed mid-line
    code = main(["classify", "--ray", "--ray-workers", "2", "--files-from", str(listing), "-0", "--resume", str(out), "-q"])
    assert code == 1 and out.read_text().splitlines() == lines
    table = tmp_path / "r.parquet"
    assert main(["classify", "--ray", "--files-from", str(listing), "-0", "--format", "parquet", "-o", str(table), "-q"]) == 1
    rows = pq.read_table(table).to_pylist()
    assert rows == [json.loads(x) for x in lines]
    assert capsys.readouterr().out == ""


def test_ray_refuses_shard(cluster, scans, capsys):
    from edgedx.cli import main

    from edgedx.ray.__main__ import main as ray_main

    assert main(["classify", "--ray", "--shard", "0/2", str(scans[0])]) == 2
    assert "--shard" in capsys.readouterr().err
    assert ray_main(["--audit", "a.jsonl", str(scans[0])]) == 2  # python -m edgedx.ray is classify --ray
    assert "--audit" in capsys.readouterr().err
