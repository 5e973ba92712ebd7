"""``edgedx bench --compare``: one table, one run, the same inputs, failing soft per artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgedx import bundled, compare
from edgedx.backends import base
from edgedx.cli import main
from tests.factories import manifest_dict, tiny_cnn

FAST = ["--iterations", "3", "--warmup", "1"]


@pytest.fixture
def labelled(tmp_path, xray_files) -> Path:
    root = tmp_path / "labelled"
    for f in xray_files:
        dest = root / f.parent.name / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.read_bytes())
    return root


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_parse_artifact_specs(tmp_path, monkeypatch):
    name = bundled.bundled_models()[0].stem
    assert compare.parse_artifact(name) == compare.Artifact(name, bundled.MODELS_DIR / f"{name}.onnx", "auto")
    assert compare.parse_artifact(f"{name}@openvino") == compare.Artifact(f"{name}@openvino", bundled.MODELS_DIR / f"{name}.onnx", "openvino")
    assert compare.parse_artifact("dir/m.onnx@onnxruntime").path == Path("dir/m.onnx")
    monkeypatch.chdir(tmp_path)
    Path("odd@name.onnx").write_bytes(b"x")  # a file whose name has an @ is that file
    assert compare.parse_artifact("odd@name.onnx") == compare.Artifact("odd@name.onnx", Path("odd@name.onnx"), "auto")


def test_bundled_fp32_and_int8_one_table_with_accuracy(capsys, labelled):
    code, out, err = run(capsys, "bench", "--compare", "chest_xray_cnn_fp32", "chest_xray_cnn_int8", "--images", labelled, *FAST)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("cpu ") and lines[1].startswith("gpu ") and lines[2].startswith("runtime ")
    assert "inputs   6 images" in out and "NORMAL 3, PNEUMONIA 3" in out
    head = next(i for i, line in enumerate(lines) if line.startswith("artifact"))
    for col in ("acc", "auc", "sens", "spec", "p50 ms", "p99 ms", "img/s", "e2e img/s", "pre ms", "post ms", "MB", "status"):
        assert col in lines[head]
    rows = lines[head + 2: head + 4]
    assert rows[0].startswith("chest_xray_cnn_fp32 ") and rows[1].startswith("chest_xray_cnn_int8 ")
    assert all(" ok " in r for r in rows)


def test_json_rows_fail_soft_and_same_inputs(capsys, labelled, tmp_path):
    other = tiny_cnn(tmp_path / "other.onnx", manifest=manifest_dict(labels=("CAT", "DOG"), positive="DOG"))
    specs = ["chest_xray_cnn_int8", "chest_xray_cnn_int8@nosuchbackend", str(tmp_path / "absent.onnx"), str(other)]
    code, out, _ = run(capsys, "bench", "--compare", *specs, "--images", labelled, "--json", *FAST)
    report = json.loads(out)
    rows = report["rows"]
    assert code == 0 and [r["artifact"] for r in rows] == specs
    ok, unknown, absent, unlabelled = rows
    assert ok["status"] == "ok" and ok["n"] == 6 and 0.0 <= ok["accuracy"] <= 1.0 and ok["auc"] is not None
    assert ok["p50_ms"] <= ok["p99_ms"] and ok["images_per_s"] > 0 and ok["e2e_images_per_s"] > 0
    assert ok["preprocess_ms"] > 0 and ok["postprocess_ms"] > 0 and ok["size_mb"] > 0.1
    assert unknown["status"] == "error" and "unknown backend 'nosuchbackend'" in unknown["error"]
    assert absent["status"] == "error" and "cannot read" in absent["error"]
    # folders that are not this model's labels: timed end to end, no accuracy
    assert unlabelled["status"] == "ok" and unlabelled["accuracy"] is None and unlabelled["e2e_images_per_s"] > 0
    assert report["inputs"]["images"] == 6 and report["inputs"]["timing_image"].endswith(".jpeg")
    assert set(report["machine"]) >= {"cpu", "gpu", "cuda", "versions"}


def test_a_backend_added_to_the_map_works_by_name(capsys, monkeypatch, labelled):
    """How --compare model.onnx@openvino works once the backend is registered: nothing else to change."""
    monkeypatch.setitem(base.BACKENDS, "onnxruntime_copy", base.BACKENDS["onnxruntime"])
    code, out, _ = run(capsys, "bench", "--compare", "chest_xray_cnn_int8@onnxruntime_copy", "--images", labelled, "--json", *FAST)
    row = json.loads(out)["rows"][0]
    assert code == 0 and row["status"] == "ok" and row["backend_requested"] == "onnxruntime_copy" and row["accuracy"] is not None


def test_markdown_and_no_images(capsys):
    code, out, _ = run(capsys, "bench", "--compare", "chest_xray_cnn_fp32", "nope.onnx", "--markdown", *FAST)
    assert code == 0
    assert out.startswith("- cpu: ") and "| artifact | backend |" in out and "|---|" in out
    assert "no images (model-only timing on a synthetic image)" in out
    assert "- [2] nope.onnx: cannot read" in out


def test_compare_flag_misuse_is_exit_2(capsys, tmp_path):
    assert run(capsys, "bench", "chest_xray_cnn_fp32")[0] == 2
    code, _, err = run(capsys, "bench", "--compare", "chest_xray_cnn_fp32", "-m", "chest_xray_cnn_int8")
    assert code == 2 and "--model does not apply" in err
    assert run(capsys, "bench", "--compare", "chest_xray_cnn_fp32", "--images", tmp_path / "none")[0] == 2
