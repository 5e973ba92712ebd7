"""The CLI as people use it: versions, verbosity, help examples, bundled names, formats, exit codes."""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedx import bundled
from edgedx.cli import main
from tests.factories import manifest_dict, tiny_cnn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model(tmp_path):
    return tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# -- 2. versions, verbosity, completion, examples ------------------------------------------------


def test_version_names_edgedx_and_runtime_libraries_without_importing_them():
    code = ("import sys; from edgedx.cli import main; rc = main(['--version']); "
            "print('LOADED', sorted(m for m in ('onnxruntime', 'tensorrt', 'cuda', 'openvino', 'cv2') if m in sys.modules)); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    import edgedx

    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0] == f"edgedx {edgedx.__version__}"
    assert "onnxruntime " in lines[1] and "python " in lines[1]
    assert lines[-1] == "LOADED []"


def test_info_versions_lists_libraries_cuda_and_backends(capsys):
    code, out, _ = run(capsys, "info", "--versions", "--json")
    data = json.loads(out)
    import onnxruntime

    assert code == 0
    assert data["versions"]["onnxruntime"] == onnxruntime.__version__
    assert set(data["cuda"]) == {"driver", "runtime"}
    assert "CPUExecutionProvider" in data["onnxruntime_providers"]
    assert data["backends"]["onnxruntime"] == "available" and "tensorrt" in data["backends"]
    code, out, _ = run(capsys, "info", "--versions")
    assert code == 0 and "cuda driver" in out and "ort providers" in out


def test_verbosity_flags_set_the_log_level(capsys, model, xray_files):
    log = logging.getLogger("edgedx")
    for args, level in ((["-v"], logging.INFO), (["-vv"], logging.DEBUG), ([], logging.WARNING),
                        (["--log-level", "error"], logging.ERROR), (["-vv", "--log-level", "warning"], logging.WARNING)):
        code, _, _ = run(capsys, *args, "classify", xray_files[0], "-m", model, "--json")
        assert code == 0 and log.level == level, args


def test_log_level_error_hides_warnings(capsys, tmp_path, xray_files):
    bare = tiny_cnn(tmp_path / "bare.onnx")  # no manifest: edgedx warns what it assumed
    _, _, err = run(capsys, "classify", xray_files[0], "-m", bare, "--json")
    assert "has no edgedx manifest" in err
    _, _, err = run(capsys, "--log-level", "error", "classify", xray_files[0], "-m", bare, "--json")
    assert "has no edgedx manifest" not in err


def test_completion_is_offered(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "--install-completion" in out and "--show-completion" in out


def test_completion_completes_commands_and_options():
    import os

    def complete(words: str, cword: int) -> list[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "_EDGEDX_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        r = subprocess.run([sys.executable, "-m", "edgedx"], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert complete("edgedx cla", 1) == ["classify"]
    assert complete("edgedx classify --for", 2) == ["--format"]


@pytest.mark.parametrize("command", [["classify"], ["info"], ["bench"], ["models"], ["eval"], ["export", "quantize"], ["export", "engine"]])
def test_help_has_examples(capsys, command):
    code, out, _ = run(capsys, *command, "--help")
    examples = [line.strip() for line in out.split("Examples:")[-1].splitlines() if line.strip().startswith("edgedx ")]
    assert code == 0 and "Examples:" in out and len(examples) >= 2, out[-600:]
    assert all(" ".join(command) in e for e in examples[:1])


# -- 3. bundled models by name ---------------------------------------------------------------------


def test_models_table_has_header_precision_threshold_and_validation(capsys):
    code, out, _ = run(capsys, "models")
    lines = out.splitlines()
    assert code == 0
    for col in ("name", "precision", "input", "labels", "threshold", "val accuracy", "val auc", "val sensitivity"):
        assert col in lines[0]
    rows = {line.split()[-10] if line.startswith("*") else line.split()[0]: line for line in lines[2:]}
    for entry in bundled.catalog():
        line = next(v for v in lines[2:] if entry["name"] in v)
        assert entry["precision"] in line and f"{entry['threshold']:.3f}" in line
        if entry["validation"].get("auc") is not None:
            assert f"{entry['validation']['auc']:.3f}" in line
    assert rows and sum(line.startswith("*") for line in lines[2:]) == 1


def test_model_by_name_in_classify_info_bench(capsys, xray_files):
    name = bundled.bundled_models()[0].stem
    code, out, _ = run(capsys, "classify", xray_files[0], "--model", name, "--json")
    assert code == 0 and json.loads(out)["model"].endswith(f"{name}.onnx")
    code, out, _ = run(capsys, "info", name, "--json")
    assert code == 0 and json.loads(out)["model"] == str(bundled.MODELS_DIR / f"{name}.onnx")
    code, out, _ = run(capsys, "bench", "-m", name, "--iterations", "2", "--warmup", "0", "--json")
    assert code == 0 and json.loads(out)["model"].endswith(f"{name}.onnx")


def test_model_by_name_in_eval(capsys, xray_files, tmp_path):
    for f in xray_files:
        dest = tmp_path / f.parent.name / f.name
        dest.parent.mkdir(exist_ok=True)
        dest.write_bytes(f.read_bytes())
    code, out, _ = run(capsys, "eval", "chest_xray_cnn_int8", tmp_path, "--json")
    assert code == 0 and json.loads(out)["n"] == len(xray_files)


def test_a_local_file_wins_over_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = bundled.bundled_models()[0].stem
    assert bundled.resolve(name) == bundled.MODELS_DIR / f"{name}.onnx"
    Path(name).write_bytes(b"mine")
    assert bundled.resolve(name) == Path(name)
    assert bundled.resolve("no_such_model") == Path("no_such_model")
    assert bundled.by_name("../models/x") is None


def test_unknown_model_name_is_exit_4(capsys):
    code, _, err = run(capsys, "classify", "x.png", "--model", "no_such_model")
    assert code == 4 and "model not found: no_such_model" in err


# -- 4. CSV columns, reason codes, the decision in the table ----------------------------------------


@pytest.fixture
def mixed_inputs(tmp_path, xray_files):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.zeros((64, 64), np.uint8))
    return [xray_files[0], blank, tmp_path / "missing.png"]


def test_csv_has_a_column_for_every_scalar_json_key(capsys, model, mixed_inputs):
    _, out_json, _ = run(capsys, "classify", *mixed_inputs, "-m", model, "--json")
    _, out_csv, _ = run(capsys, "classify", *mixed_inputs, "-m", model, "--format", "csv")
    records = [json.loads(x) for x in out_json.splitlines()]
    rows = list(csv.DictReader(io.StringIO(out_csv)))
    containers = {k for r in records for k, v in r.items() if isinstance(v, (dict, list))}
    scalar = {k for r in records for k in r} - containers
    assert scalar <= set(rows[0]), scalar - set(rows[0])
    assert {"positive", "threshold", "reason_code", "reason", "backend_note"} <= set(rows[0])
    for rec, row in zip(records, rows):
        for key in scalar:
            want = "" if rec[key] is None else ("true" if rec[key] is True else "false" if rec[key] is False else str(rec[key]))
            if key == "score" and rec[key] is not None:
                assert abs(float(row[key]) - rec[key]) < 1e-6
            else:
                assert row[key] == want, key


def test_reason_code_and_reason_are_separate_in_every_format(capsys, model, mixed_inputs):
    _, out, _ = run(capsys, "classify", *mixed_inputs, "-m", model, "--json")
    rejected = [json.loads(x) for x in out.splitlines()][1]
    assert rejected["status"] == "rejected" and rejected["reason_code"] == "constant_image"
    assert rejected["reason"] and not rejected["reason"].startswith("constant_image")
    _, out, _ = run(capsys, "classify", *mixed_inputs, "-m", model, "--format", "csv")
    row = list(csv.DictReader(io.StringIO(out)))[1]
    assert row["reason_code"] == "constant_image" and row["reason"] == rejected["reason"]
    _, out, _ = run(capsys, "classify", *mixed_inputs, "-m", model)
    assert "constant_image:" in out


def test_table_shows_the_decision_and_threshold(capsys, model, xray_files):
    code, out, _ = run(capsys, "classify", xray_files[0], "-m", model, "--threshold", "0.99")
    assert code == 0
    assert "decision: PNEUMONIA when p(PNEUMONIA) >= threshold 0.990, else NORMAL" in out
    assert "p(PNEUMONIA) " in out and "< 0.990" in out  # this scan's probability against the threshold


# -- 5. exit codes, each as documented ---------------------------------------------------------------


def test_exit_0_every_input_answered(capsys, model, xray_files):
    assert run(capsys, "classify", *xray_files[:2], "-m", model, "--json")[0] == 0


def test_exit_1_an_input_failed(capsys, model, xray_files, tmp_path):
    code, out, _ = run(capsys, "classify", xray_files[0], tmp_path / "missing.png", "-m", model, "--json")
    assert code == 1 and len(out.splitlines()) == 2


@pytest.mark.parametrize("args", [["classify", "x.png", "--batch-size", "0"], ["classify"], ["bench", "a.onnx"], ["bench", "--compare"],
                                  ["nosuchcommand"], ["classify", "x.png", "--window", "1"]])
def test_exit_2_usage(capsys, args):
    code, _, err = run(capsys, *args)
    assert code == 2 and "Traceback" not in err and err.strip()


def _no_gpu(monkeypatch):
    from edgedx.cuda import driver

    monkeypatch.setattr(driver, "probe_device", lambda binding="auto": "no CUDA device (test)")


def test_exit_3_tensorrt_without_a_gpu(capsys, monkeypatch, model, tmp_path):
    _no_gpu(monkeypatch)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    for extra in ([], ["-m", model], ["-m", engine]):
        code, _, err = run(capsys, "classify", "x.png", "--backend", "tensorrt", *extra)
        assert code == 3 and "no CUDA device" in err and "Traceback" not in err, extra


def test_exit_3_backend_not_installed(capsys, monkeypatch, model):
    from edgedx.backends import base

    monkeypatch.setattr(base, "missing_requirements", lambda name: ["tensorrt or tensorrt_lean"])
    code, _, err = run(capsys, "classify", "x.png", "-m", model, "--backend", "tensorrt")
    assert code == 3 and "missing tensorrt" in err


def test_onnx_given_to_tensorrt_is_not_called_an_engine(capsys, monkeypatch, model):
    from edgedx.cuda import driver

    monkeypatch.setattr(driver, "probe_device", lambda binding="auto": None)  # as if a GPU were here
    code, _, err = run(capsys, "classify", "x.png", "-m", model, "--backend", "tensorrt")
    assert code == 2 and "m.onnx is not one" in err and "edgedx export engine m.onnx" in err
    assert "sidecar" not in err and "next to the engine" not in err


def test_exit_4_bad_model(capsys, tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not a model")
    assert run(capsys, "classify", "x.png", "-m", fake)[0] == 4


def test_exit_130_interrupted_keeps_finished_records(capsys, monkeypatch, model, xray_files):
    from edgedx import api

    real = api.Classifier.classify_many

    def interrupted(self, sources, **kw):
        for i, r in enumerate(real(self, sources, **kw)):
            if i == 1:
                raise KeyboardInterrupt
            yield r

    monkeypatch.setattr(api.Classifier, "classify_many", interrupted)
    code, out, err = run(capsys, "classify", *xray_files[:3], "-m", model, "--json")
    assert code == 130 and len(out.splitlines()) == 1 and "interrupted after 1 answers for 3 inputs" in err


# -- 8. license ---------------------------------------------------------------------------------------


def test_license_file_matches_pyproject():
    import re

    text = (ROOT / "LICENSE").read_text()
    declared = re.search(r'license\s*=\s*\{\s*text\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert declared == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
