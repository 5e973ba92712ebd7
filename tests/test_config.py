"""edgedx.toml and EDGEDX_* settings: command line > environment > file > defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgedx import config
from edgedx.cli import main
from edgedx.errors import UsageError
from tests.factories import manifest_dict, tiny_cnn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("EDGEDX_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def model(tmp_path):
    return tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())


def classify_threshold(capsys, image, *args) -> tuple[int, float | None]:
    code = main([*args, "classify", str(image), "--json"] if args and args[0] == "--config" else ["classify", str(image), "--json", *args])
    out = capsys.readouterr().out
    return code, (json.loads(out.splitlines()[0])["threshold"] if out else None)


def test_precedence_cli_over_env_over_file_over_default(capsys, workdir, monkeypatch, model, xray_files):
    image = xray_files[0]
    assert classify_threshold(capsys, image, "-m", str(model)) == (0, 0.5)  # the manifest's
    (workdir / "edgedx.toml").write_text(f'model = "{model}"\nthreshold = 0.3\n')
    assert classify_threshold(capsys, image) == (0, 0.3)
    monkeypatch.setenv("EDGEDX_THRESHOLD", "0.6")
    assert classify_threshold(capsys, image) == (0, 0.6)
    assert classify_threshold(capsys, image, "--threshold", "0.9") == (0, 0.9)


def test_command_table_overrides_top_level_and_per_command_env_wins(workdir, monkeypatch):
    (workdir / "edgedx.toml").write_text('batch-size = 4\nbackend = "onnxruntime"\n[classify]\nbatch_size = 16\nwindow = [40, 400]\n')
    s = config.load()
    assert s.values["classify"]["batch_size"] == 16 and s.values["bench"]["batch_size"] == 4
    assert s.values["classify"]["window"] == "40.0,400.0" and s.values["bench"]["backend"] == "onnxruntime"
    monkeypatch.setenv("EDGEDX_BATCH_SIZE", "2")
    monkeypatch.setenv("EDGEDX_BENCH_BATCH_SIZE", "1")
    s = config.load()
    assert s.values["classify"]["batch_size"] == 2 and s.values["bench"]["batch_size"] == 1
    assert s.sources["bench"]["batch_size"] == "environment" and s.sources["classify"]["backend"].startswith("file ")


def test_explicit_config_and_env_config(capsys, workdir, monkeypatch, model, xray_files):
    other = workdir / "site.toml"
    other.write_text(f'[classify]\nmodel = "{model}"\nthreshold = 0.25\n')
    assert classify_threshold(capsys, xray_files[0], "--config", str(other)) == (0, 0.25)
    monkeypatch.setenv("EDGEDX_CONFIG", str(other))
    assert classify_threshold(capsys, xray_files[0]) == (0, 0.25)


def test_output_and_audit_from_the_file(capsys, workdir, model, xray_files):
    (workdir / "edgedx.toml").write_text(f'[classify]\nmodel = "{model}"\noutput = "res.ndjson"\naudit = "audit.ndjson"\n')
    assert main(["classify", str(xray_files[0]), "--json"]) == 0
    assert capsys.readouterr().out == ""
    assert json.loads((workdir / "res.ndjson").read_text())["status"] == "ok"
    assert json.loads((workdir / "audit.ndjson").read_text().splitlines()[-1])["status"] == "ok"


@pytest.mark.parametrize("text, message", [
    ("thresold = 0.3\n", "unknown setting"),
    ("[clasify]\nmodel = 'x'\n", "unknown table [clasify]"),
    ("batch-size = 'eight'\n", "must be an integer"),
    ("threshold = 1.5\n", "threshold: must be a number in [0, 1], got 1.5"),
    ("[bench]\naudit = 'a.ndjson'\n", "`edgedx bench` has no such option"),
    ("model = \n", "not valid TOML"),
])
def test_bad_files_are_usage_errors_naming_the_file(capsys, workdir, text, message):
    (workdir / "edgedx.toml").write_text(text)
    code = main(["classify", "x.png"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_bad_env_value_names_the_variable(workdir, monkeypatch):
    monkeypatch.setenv("EDGEDX_WORKERS", "many")
    with pytest.raises(UsageError, match="EDGEDX_WORKERS: must be an integer"):
        config.load()
    with pytest.raises(UsageError, match="config file not found"):
        config.load(workdir / "absent.toml")


def test_info_config_shows_values_and_sources(capsys, workdir, monkeypatch):
    (workdir / "edgedx.toml").write_text('model = "chest_xray_cnn_fp32"\n[classify]\nbatch-size = 4\n')
    monkeypatch.setenv("EDGEDX_BACKEND", "onnxruntime")
    assert main(["info", "--config", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    c = data["commands"]["classify"]
    assert data["file"] == str(workdir / "edgedx.toml")
    assert c["model"] == {"value": "chest_xray_cnn_fp32", "source": f"file {workdir / 'edgedx.toml'}"}
    assert c["batch_size"]["value"] == 4 and c["backend"] == {"value": "onnxruntime", "source": "environment"}
    assert c["workers"] == {"value": None, "source": "default"}
    assert data["commands"]["bench"]["batch_size"] == {"value": 1, "source": "default"}
    assert main(["info", "--config"]) == 0
    assert "precedence   command line > environment > file > defaults" in capsys.readouterr().out


def test_broken_config_does_not_break_other_commands(capsys, workdir):
    (workdir / "edgedx.toml").write_text("nonsense = \n")
    assert main(["models", "--json"]) == 0


def test_config_reading_imports_nothing_heavy(workdir):
    code = "import sys, edgedx.config as c; c.load(); print(sorted(m for m in ('numpy', 'cv2', 'onnxruntime', 'rich') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""}, cwd=workdir)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
