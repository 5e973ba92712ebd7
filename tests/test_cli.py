from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgedx.cli import main
from tests.factories import manifest_dict, tiny_cnn


@pytest.fixture
def model(tmp_path):
    return tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_is_one_object_per_input_in_order(capsys, model, xray_files, tmp_path):
    missing = tmp_path / "nope.png"
    code, out, err = run(capsys, "classify", *xray_files[:2], missing, "--model", model, "--json")
    lines = [json.loads(x) for x in out.splitlines()]
    assert code == 1
    assert [x["path"] for x in lines] == [str(xray_files[0]), str(xray_files[1]), str(missing)]
    for key in ("path", "label", "score", "scores", "error", "model", "backend"):
        assert all(key in x for x in lines)
    assert lines[2]["error"] and lines[2]["label"] is None and lines[0]["error"] is None
    assert "3 answers for 3 inputs: 2 ok, 0 rejected, 1 failed" in err and "Traceback" not in err


def test_all_good_exits_zero_and_csv(capsys, model, xray_files):
    code, out, _ = run(capsys, "classify", *xray_files[:2], "-m", model, "--format", "csv")
    rows = out.strip().splitlines()
    assert code == 0 and rows[0].startswith("path,frame,status,label,score") and len(rows) == 3


def test_output_file_and_top_k(capsys, model, xray_files, tmp_path):
    dest = tmp_path / "out.ndjson"
    code, out, _ = run(capsys, "classify", xray_files[0], "-m", model, "--json", "--top-k", "1", "--output", dest)
    assert code == 0 and out == ""
    rec = json.loads(dest.read_text())
    assert rec["top_k"][0]["label"] == rec["label"]


def test_table_is_the_default(capsys, model, xray_files):
    code, out, _ = run(capsys, "classify", xray_files[0], "-m", model)
    assert code == 0 and xray_files[0].name[:20] in out and "threshold" in out


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["classify", "x.png", "--model", "/nonexistent/model.onnx"], 4, "model not found"),
        (["classify", "x.png", "--backend", "bogus"], 2, "bogus"),
        (["classify", "x.png", "--window", "1"], 2, "CENTER,WIDTH"),
        (["classify"], 2, "Missing argument"),
    ],
)
def test_usage_and_model_errors_are_one_line_with_exit_code(capsys, args, code, message):
    got, _, err = run(capsys, *args)
    assert got == code and message in err and "Traceback" not in err


def test_not_an_onnx_model_is_exit_4(capsys, tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"\xff\xd8\xff\xe0 this is a jpeg")
    code, _, err = run(capsys, "classify", "x.png", "-m", fake)
    assert code == 4 and "not an ONNX model" in err


def test_info_json(capsys, model):
    code, out, _ = run(capsys, "info", model, "--json")
    data = json.loads(out)
    assert code == 0 and data["manifest"]["labels"] == ["NORMAL", "PNEUMONIA"]
    assert len(data["sha256"]) == 64 and data["backends_here"]["onnxruntime"] == "available"


def test_bench_json_keys(capsys, model):
    code, out, _ = run(capsys, "bench", "-m", model, "--iterations", "5", "--warmup", "1", "--batch-size", "2", "--json")
    data = json.loads(out)
    assert code == 0
    for key in ("model", "backend", "precision", "batch_size", "iterations", "latency_ms", "throughput_ips", "stages_ms"):
        assert key in data
    assert data["iterations"] == 5 and data["batch_size"] == 2
    assert set(data["latency_ms"]) == {"min", "mean", "median", "p90", "p95", "p99", "max"}
    assert data["latency_ms"]["min"] <= data["latency_ms"]["median"] <= data["latency_ms"]["max"]


def test_bench_end_to_end_on_images(capsys, model, xray_files):
    folder = xray_files[0].parent
    code, out, _ = run(capsys, "bench", "-m", model, "--images", folder, "--batch-size", "4", "--json")
    data = json.loads(out)
    assert code == 0 and data["mode"] == "end-to-end" and data["images"] > 4 and data["throughput_ips"] > 0


def test_models_lists_the_default(capsys):
    code, out, _ = run(capsys, "models", "--json")
    rows = json.loads(out)
    assert code == 0 and any(r["default"] for r in rows)


def test_console_script_runs_as_module(model, xray_files):
    r = subprocess.run([sys.executable, "-m", "edgedx", "classify", str(xray_files[0]), "-m", str(model), "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "ok"


def test_pixel_limit_is_configurable(capsys, model, xray_files):
    code, out, _ = run(capsys, "classify", xray_files[0], "-m", model, "--json", "--max-pixels", "1000")
    rec = json.loads(out)
    assert code == 1 and rec["status"] == "error" and "pixel" in rec["error"].lower()
    code, out, _ = run(capsys, "classify", xray_files[0], "-m", model, "--json", "--max-pixels", "60000")
    assert code == 0 and json.loads(out)["status"] == "ok"


def test_export_commands_are_registered_once(capsys):
    from edgedx import cli

    for _ in range(3):
        assert run(capsys, "models", "--json")[0] == 0
    names = [g.name for g in cli.app.registered_groups]
    assert names.count("export") == 1
    assert [c.name for c in cli.app.registered_commands].count("eval") == 1


def test_a_users_export_py_does_not_hide_the_export_stage(tmp_path):
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    marker = tmp_path / "imported"
    (tmp_path / "export.py").write_text(f"open({str(marker)!r}, 'w').write('user export.py ran')\n")
    env = {**os.environ, "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, "-m", "edgedx", "export", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "onnx" in r.stdout and "quantize" in r.stdout  # the real stage's subcommands
    assert not marker.exists()
    assert sys.path[0] != str(tmp_path)  # (the test itself did not import it either)
