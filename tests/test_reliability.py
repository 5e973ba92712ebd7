"""Issue 12 through the command line: broken models, hostile model folders, limits, signals, names.

Each test checks what a user sees: the exit code, the one-line message, and the records.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedx import postprocess
from edgedx.decode import DecodeOptions, decode_bytes
from edgedx.errors import ModelError
from edgedx.manifest import from_dict
from tests import bad_models
from tests.conftest import ROOT
from tests.factories import frame, manifest_dict, tiny_cnn
from tests.fuzz.seeds import dataset, dicom_bytes


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cnn(tmp_path_factory.mktemp("model") / "tiny.onnx", manifest=manifest_dict())


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 12, (40, 40), dtype=np.uint8)  # normalized mean about -1.9: log(x + 1) is NaN
    bright = rng.integers(150, 255, (40, 40), dtype=np.uint8)
    out = [root / "dark.png", root / "bright.png"]
    cv2.imwrite(str(out[0]), dark)
    cv2.imwrite(str(out[1]), bright)
    return out


def edgedx(*args: str | Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("cwd", ROOT)
    return subprocess.run(
        [sys.executable, "-m", "edgedx", *map(str, args)], capture_output=True, text=True,
        errors="replace", timeout=timeout, check=False, **kwargs,
    )  # fmt: skip


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgedx: error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def strict_records(stdout: str) -> list[dict]:
    """NDJSON records; NaN or Infinity (not JSON) fails the test."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in the output: not JSON")

    return [json.loads(line, parse_constant=refuse) for line in stdout.splitlines()]


# ---------------------------------------------------------------- 2: non-finite model outputs


@pytest.mark.parametrize("factor", [float("nan"), float("inf")])
def test_non_finite_outputs_are_error_records_never_decisions(tmp_path, scans, factor):
    model = bad_models.scaled(tmp_path / "broken.onnx", factor)
    audit = tmp_path / "audit.jsonl"
    proc = edgedx("classify", *scans, "--json", "-m", model, "--no-gate", "--audit", audit)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    records = strict_records(proc.stdout)
    assert [r["status"] for r in records] == ["error", "error"]
    assert all(r["error"] == postprocess.NON_FINITE and r["label"] is None and r["positive"] is None for r in records)
    assert [r["status"] for r in strict_records(audit.read_text())] == ["error", "error"]


def test_one_non_finite_row_fails_only_its_input(tmp_path, scans):
    model = bad_models.nan_for_dark_inputs(tmp_path / "dark_nan.onnx")
    proc = edgedx("classify", *scans, "--json", "-m", model, "--no-gate", "--batch-size", "2")
    records = strict_records(proc.stdout)
    assert [r["status"] for r in records] == ["error", "ok"] and proc.returncode == 1
    assert records[0]["error"] == postprocess.NON_FINITE
    assert all(math.isfinite(v) for v in records[1]["scores"].values())


def test_huge_finite_outputs_give_finite_scores_without_warnings(tmp_path, scans):
    model = bad_models.scaled(tmp_path / "huge.onnx", 1e30, manifest=manifest_dict(activation="softmax"))
    proc = edgedx("classify", *scans, "--json", "-m", model, "--no-gate")
    lines = proc.stderr.splitlines()  # the end-of-run summary only: no overflow warnings
    assert proc.returncode == 0 and len(lines) == 1 and "2 ok" in lines[0], proc.stderr
    assert all(math.isfinite(v) for r in strict_records(proc.stdout) for v in r["scores"].values())


def test_postprocess_refuses_non_finite_for_whole_batch_callers():
    m = from_dict(manifest_dict())
    with pytest.raises(ModelError, match="NaN or infinite"):
        postprocess.probabilities(np.array([[0.0, np.nan]]), m)
    answers = postprocess.answers(np.array([[0.0, np.inf], [1.0, 0.0]]), m)
    assert answers[0] is None and answers[1] is not None and answers[1].label == "NORMAL"


# ---------------------------------------------------------------- 6: bad models


@pytest.mark.parametrize(
    "build, message",
    [
        (bad_models.no_outputs, "has no outputs"),
        (bad_models.int64_input, "is tensor\\(int64\\)"),
        (bad_models.single_column, "one output with softmax"),
        (bad_models.ignores_batch, "for a batch of 2: expected one row of scores per image"),
    ],
)
def test_bad_models_exit_4_with_one_line(tmp_path, scans, build, message):
    import re

    model = build(tmp_path / "bad.onnx")
    proc = edgedx("classify", *scans, "--json", "-m", model, "--no-gate")
    assert proc.returncode == 4
    assert re.search(message, one_error_line(proc.stderr))


# ---------------------------------------------------------------- 5: hostile model folder


@pytest.mark.parametrize("sidecar", ["fifo", "dev_zero", "huge", "dangling", "directory"])
def test_hostile_sidecar_is_exit_4_quickly(tmp_path, scans, model, sidecar):
    folder = tmp_path / "models"
    folder.mkdir()
    copy = folder / "m.onnx"
    copy.write_bytes(model.read_bytes())
    side = folder / "m.onnx.json"
    if sidecar == "fifo":
        os.mkfifo(side)
    elif sidecar == "dev_zero":
        side.symlink_to("/dev/zero")
    elif sidecar == "huge":
        side.write_text(json.dumps(manifest_dict()) + " " * (2 << 20))
    elif sidecar == "dangling":
        side.symlink_to("nowhere.json")
    else:
        side.mkdir()
    started = time.monotonic()
    proc = edgedx("classify", *scans, "--json", "-m", copy, timeout=60)
    assert proc.returncode == 4 and "m.onnx.json" in one_error_line(proc.stderr)
    assert time.monotonic() - started < 30


def test_external_data_that_is_a_fifo_is_refused(tmp_path):
    import onnx

    from edgedx.onnxfile import check_external_data

    model = tiny_cnn(tmp_path / "ext.onnx")
    proto = onnx.load(str(model))
    onnx.save_model(proto, str(model), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    (tmp_path / "w.bin").unlink()
    os.mkfifo(tmp_path / "w.bin")
    with pytest.raises(ModelError, match="not a regular file \\(a FIFO\\)"):
        check_external_data(model)


# ---------------------------------------------------------------- 7: file size


def test_file_size_is_checked_before_reading(tmp_path, model, scans):
    big = tmp_path / "big.jpeg"
    with open(big, "wb") as f:  # sparse: 300 MiB that cost no disk, and must not cost memory either
        f.write(b"\xff\xd8\xff")
        f.truncate(300 << 20)
    proc = edgedx("classify", big, scans[1], "--json", "-m", model)
    records = strict_records(proc.stdout)
    assert proc.returncode == 1 and [r["status"] for r in records] == ["error", "ok"]
    assert "file too large: 314,572,800 bytes, more than the limit of 268,435,456" in records[0]["error"]
    proc = edgedx("classify", scans[1], "--json", "-m", model, "--max-file-size", "1K")
    assert "more than the limit of 1,024" in strict_records(proc.stdout)[0]["error"]
    assert edgedx("classify", scans[1], "--json", "-m", model, "--max-file-size", "2G").returncode == 0


def test_file_size_limit_applies_to_bytes_too():
    png = cv2.imencode(".png", frame(8, 8))[1].tobytes()
    with pytest.raises(Exception, match="file too large"):
        decode_bytes(png, DecodeOptions(max_file_size=10))


# ---------------------------------------------------------------- 8: counts, signals, names


@pytest.mark.parametrize(
    "option, message",
    [
        (["--threads", "100000"], "threads must be an integer between 1 and "),
        (["--workers", "100000"], "workers must be an integer between 0 and 64"),
        (["--batch-size", "1000000"], "batch size must be an integer between 1 and 1,024"),
        (["--max-file-size", "lots"], "a size must be a number of bytes"),
    ],
)
def test_count_options_are_bounded(model, scans, option, message):
    proc = edgedx("classify", scans[1], "--json", "-m", model, *option)
    assert proc.returncode == 2 and message in one_error_line(proc.stderr)


@pytest.mark.parametrize("option", [["--top-k", "5000"], ["--threads", "0"]])
def test_count_options_checked_by_the_parser(model, scans, option):
    proc = edgedx("classify", scans[1], "--json", "-m", model, *option)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "Invalid value" in proc.stderr


def test_bench_counts_are_bounded(model):
    proc = edgedx("bench", "-m", model, "--iterations", "1000000000")
    assert proc.returncode == 2 and "Invalid value for '--iterations'" in proc.stderr


@pytest.mark.parametrize("value", ["nan", "-nan", "inf"])
def test_bench_duration_nan_is_refused_not_endless(model, value):
    """Found by the cli fuzz target: click's FloatRange lets NaN through and the benchmark never ended."""
    proc = edgedx("bench", "-m", model, "--duration", value, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--duration must be a number between 0.1 and 86400" in proc.stderr or "Invalid value for '--duration'" in proc.stderr


def _caught_signals(pid: int) -> int:
    """The process's caught-signal mask (Linux /proc), 0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("delay", [0, 0.05, 0.2, 0.5])
def test_an_early_signal_exits_130_without_a_traceback(model, scans, signum, delay):
    """From the moment edgedx's own code has installed its handlers (Python's start-up before that,
    about 0.05 s on an idle machine, cannot be helped), ``delay`` seconds later: during the CLI's
    imports, the model load, or the run."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to see when the handlers are installed")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgedx", "classify", *map(str, scans * 50), "--json", "-m", str(model)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    while not _caught_signals(proc.pid) & (1 << (signal.SIGTERM - 1)) and time.monotonic() - started < 30:
        time.sleep(0.0005)
    assert time.monotonic() - started < 30
    time.sleep(delay)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0 or len(out.splitlines()) == 2 * 50:  # finished (or exiting) before the signal
        pytest.skip("the run was faster than the signal")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert all(line.startswith("edgedx:") for line in err.splitlines() if line.strip()), err
    strict_records(out)  # whole records only


def test_names_with_newlines_and_escapes_stay_on_one_line(tmp_path, model, scans):
    hostile = "new\nline\x1b[2J[red]x.png"
    (tmp_path / hostile).write_bytes(scans[1].read_bytes())
    missing = "gone\n\x1b[31m.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = edgedx("classify", hostile, missing, "-m", model, cwd=tmp_path, env=env)  # the table, short names
    assert proc.returncode == 1 and "\x1b" not in proc.stdout and "\x1b" not in proc.stderr
    assert "new\\nline\\x1b[2J[red]x.png" in proc.stdout and "gone\\n\\x1b[31m.png" in proc.stdout
    proc = edgedx("classify", tmp_path / "x.png", "-m", tmp_path / "m\n\x1b[2J.onnx")
    assert proc.returncode == 4 and "m\\n\\x1b[2J.onnx" in one_error_line(proc.stderr)


def test_twelve_bit_modality_lut(tmp_path):
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = (np.arange(64 * 48).reshape(64, 48) % 4096).astype(np.uint16)
    for vr in ("US", "OW"):
        ds = dataset(stored)
        ds.BitsStored, ds.HighBit = 12, 11
        for key in ("RescaleSlope", "RescaleIntercept"):
            if key in ds:
                del ds[key]
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 12]
        lut = np.arange(4095, -1, -1, dtype="<u2")  # an inverting LUT
        item.add(DataElement(0x00283006, vr, lut.tobytes() if vr == "OW" else [int(v) for v in lut]))
        ds.ModalityLUTSequence = Sequence([item])
        image = decode_bytes(dicom_bytes(ds))[0].image
        out = (4095 - stored).astype(np.float64)  # the LUT output, then min-max onto 0..255 (no window)
        expected = (out - out.min()) * (255 / (out.max() - out.min()))
        np.testing.assert_allclose(image, expected, atol=1e-3)


def test_console_script_entry_installs_handlers_before_the_cli():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv = ['edgedx', '--help']; from edgedx.__main__ import run; sys.exit(run())"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and "classify" in proc.stdout


def test_thread_bound_follows_the_cores(monkeypatch):
    from edgedx import limits

    monkeypatch.setattr(limits, "cpu_count", lambda: 2)
    assert limits.thread_bounds() == (1, 8)
    monkeypatch.setattr(limits, "cpu_count", lambda: 12)
    assert limits.thread_bounds() == (1, 48)


@pytest.mark.parametrize("disguise", ["plain", "import_error"])
def test_interrupt_in_disguise_is_130_with_one_line(monkeypatch, capsys, model, scans, disguise):
    """typer turns Ctrl-C into a silent exit 130; a C extension interrupted while it initializes
    raises ImportError from the KeyboardInterrupt (seen with onnxruntime under SIGINT)."""
    from edgedx import cli, inputs

    def interrupted(*args, **kwargs):
        if disguise == "plain":
            raise KeyboardInterrupt
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc

    monkeypatch.setattr(inputs, "gather", interrupted)
    assert cli.main(["classify", str(scans[1]), "-m", str(model)]) == 130
    err = capsys.readouterr().err
    assert "edgedx: interrupted" in err and "Traceback" not in err
