"""Every ONNX edgedx makes for TensorRT, parsed and built by NVIDIA's real TensorRT-RTX (no GPU needed).

TensorRT-RTX (``pip install tensorrt-rtx-cu13``, in the ``test`` extra) carries NVIDIA's ONNX parser
and an ahead-of-time builder that runs on a machine without a GPU. The bundled model and a
ResNet-18 go through ``export fp16`` and ``export quantize --target tensorrt``, then
``build_engine(builder="tensorrt-rtx")``; the fakes in test_engine_build.py / test_tensorrt.py keep
testing control flow only. Without a GPU, an RTX engine is answered from its source ONNX
(``--backend auto``) or refused with exit 3.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install 'edgedx[test]')")
pytest.importorskip("onnx", reason="onnx not installed (pip install 'edgedx[test]')")
pytest.importorskip("onnxruntime.quantization", reason="onnxruntime not installed")

import export.engine as eng  # noqa: E402
from edgedx import bundled  # noqa: E402
from edgedx.backends.trt_guard import RuntimeFacts, file_problems, runtime_problems  # noqa: E402
from edgedx.backends.trt_runtime import TRT_OPTIONAL_RUNTIME_NAMES, TRT_RUNTIME_NAMES  # noqa: E402
from edgedx.errors import UsageError  # noqa: E402
from export.onnx_precision import check_precision, inspect_onnx, load_onnx  # noqa: E402
from export.options import Target  # noqa: E402
from tests.conftest import XRAY, need  # noqa: E402
from tests.factories import resolve_dotted  # noqa: E402

#: Seconds one ahead-of-time build may take here (2 shared cores); measured: bundled 0.2-0.5 s.
BUILD_BUDGET_S = 60


def test_every_tensorrt_name_edgedx_calls_exists_in_tensorrt_rtx():
    names = (*TRT_RUNTIME_NAMES, *TRT_OPTIONAL_RUNTIME_NAMES, *eng.BUILDER_NAMES, *eng.RTX_BUILDER_NAMES)
    missing = []
    for name in names:
        try:
            resolve_dotted(trt, name)
        except AttributeError:
            missing.append(name)
    assert missing == [], f"tensorrt_rtx {trt.__version__} lacks {missing}"


def _no_cuda_device() -> bool:
    from edgedx.cuda import installed_bindings, open_driver

    if not installed_bindings():
        return True
    with open_driver("auto") as cuda:
        return cuda.probe()[0] == 0


# -- the exports, made once per module --------------------------------------------------------------


def _calibration(n: int) -> list[Path]:
    root = need(XRAY)
    return sorted((root / "NORMAL").glob("*.jpeg"))[:n] + sorted((root / "PNEUMONIA").glob("*.jpeg"))[:n]


def _exports(folder: Path, fp32: Path, calib: list[Path]) -> dict[str, Path]:
    from export.quantize import QuantizeOptions, quantize, to_fp16

    out = {"fp32": fp32, "fp16": folder / "fp16.onnx", "int8": folder / "int8.onnx", "int8-cpu": folder / "int8_cpu.onnx"}
    to_fp16(fp32, out["fp16"])
    for key, target in (("int8", Target.TENSORRT), ("int8-cpu", Target.CPU)):
        quantize(fp32, out[key], calib, QuantizeOptions(target=target, num_images=len(calib), cache_dir=folder, batch_size=4))
    return out


@pytest.fixture(scope="module")
def bundled_exports(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bundled")
    fp32 = folder / "fp32.onnx"
    shutil.copy(bundled.MODELS_DIR / bundled.DEFAULT_FP32, fp32)
    return _exports(folder, fp32, _calibration(4))


@pytest.fixture(scope="module")
def resnet18_exports(tmp_path_factory) -> dict[str, Path]:
    """A randomly initialised ResNet-18 (11 M parameters, 1-channel 224x224), exported by edgedx."""
    torch = pytest.importorskip("torch")
    from edgedx import manifest as manifest_mod
    from export.models import ResNet
    from export.to_onnx import export_torch

    folder = tmp_path_factory.mktemp("resnet18")
    torch.manual_seed(0)
    module = ResNet(in_channels=1, num_classes=2).eval()
    manifest = manifest_mod.from_dict({
        "schema_version": 1, "labels": ["NORMAL", "PNEUMONIA"],
        "input": {"layout": "NCHW", "height": 224, "width": 224, "channels": 1},
        "preprocess": {"resize": "stretch", "scale": 1 / 255, "mean": [0.48], "std": [0.24]},
        "output": {"activation": "softmax"}, "positive_label": "PNEUMONIA", "threshold": 0.5,
        "provenance": {"source_model": "test: random ResNet-18"},
    })
    calib = _calibration(2)
    export_torch(module, folder / "fp32.onnx", manifest, images=calib[:2])
    return _exports(folder, folder / "fp32.onnx", calib)


@pytest.fixture(params=["bundled", "resnet18"])
def exports(request) -> dict[str, Path]:
    return request.getfixturevalue(f"{request.param}_exports")


# -- the parser and the builder ---------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_tensorrt_bound_export_parses_and_builds(tmp_path, exports, precision):
    started = time.perf_counter()
    report = eng.build_engine(exports[precision], tmp_path / f"{precision}.engine", precision=precision, builder="tensorrt-rtx")
    assert time.perf_counter() - started < BUILD_BUDGET_S
    plan = report.engine.read_bytes()
    assert len(plan) == report.size_bytes > 100_000
    sidecar = json.loads(report.sidecar.read_text())
    section = sidecar["engine"]
    assert section["sha256"] == hashlib.sha256(plan).hexdigest() == report.sha256
    assert section["builder"] == "tensorrt-rtx" and section["tensorrt_version"] == trt.__version__
    assert section["compute_capabilities"] == ["8.6", "8.9", "12.0"] and section["targets_from"] == "TensorRT-RTX default"
    assert section["gpu_name"] is None and section["compute_capability"] is None
    assert section["precision"] == sidecar["precision"] == precision
    assert section["profile"]["min"][0] == 1 and section["profile"]["opt"][0] == 8 and section["profile"]["max"][0] == 16
    assert section["hardware_compatible"] is False and section["version_compatible"] is False
    # The runtime's guard accepts it on any GPU it targets, and names the rebuild elsewhere.
    assert file_problems(sidecar, report.sha256, report.sidecar.name) == []
    for cc in ("8.6", "8.9", "12.0"):
        assert runtime_problems(section, RuntimeFacts(trt.__version__, False, cc, "RTX", "tensorrt-rtx"), False) == []
    (problem,) = runtime_problems(section, RuntimeFacts(trt.__version__, False, "9.0", "NVIDIA H200", "tensorrt-rtx"), False)
    assert "this GPU (NVIDIA H200) is 9.0: rebuild it with --compute-capability 9.0" in problem


def test_fp16_and_int8_engines_hold_smaller_weights_than_fp32(tmp_path, bundled_exports):
    sizes = {p: eng.build_engine(bundled_exports[p], tmp_path / f"{p}.engine", precision=p, builder="tensorrt-rtx").size_bytes
             for p in ("fp32", "fp16", "int8")}
    # Measured with TensorRT-RTX 1.7: 5.19 / 2.67 / 2.83 MB (INT8 keeps float biases and a float first layer).
    assert sizes["fp16"] < 0.6 * sizes["fp32"] and sizes["int8"] < 0.6 * sizes["fp32"], sizes


def test_the_cpu_flavour_is_refused_by_name_and_the_parser_agrees(tmp_path, bundled_exports):
    onnx_path = bundled_exports["int8-cpu"]
    with pytest.raises(UsageError, match="is the CPU flavour of edgedx export quantize.*--target tensorrt"):
        eng.build_engine(onnx_path, tmp_path / "cpu.engine", precision="int8", builder="tensorrt-rtx")
    assert not (tmp_path / "cpu.engine").exists()
    assert _parse_errors(onnx_path), "NVIDIA's parser accepted the CPU flavour: check_precision refuses it for nothing"


def test_int32_bias_dequantize_is_refused_and_the_parser_agrees(tmp_path, bundled_exports):
    """ONNX Runtime's default bias quantization: what edgedx wrote before biases stayed float."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(bundled_exports["int8"]))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    inits = {t.name: t for t in model.graph.initializer}
    bias = numpy_helper.to_array(inits[gemm.input[2]])
    model.graph.initializer.extend([
        numpy_helper.from_array(np.round(bias / 1e-4).astype(np.int32), "bias_q"),
        numpy_helper.from_array(np.array(1e-4, np.float32), "bias_scale"),
    ])
    model.graph.node.insert(0, helper.make_node("DequantizeLinear", ["bias_q", "bias_scale"], ["bias_dq"], name="head.bias_DequantizeLinear"))
    gemm.input[2] = "bias_dq"
    path = tmp_path / "int32_bias.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UsageError, match=r"dequantizes int32 biases \(1 nodes, first head.bias_DequantizeLinear\).*--target tensorrt"):
        check_precision("int8", inspect_onnx(load_onnx(path)), path.name)
    errors = _parse_errors(path)
    assert any("Int32" in e for e in errors), errors
    assert _parse_errors(bundled_exports["int8"]) == []


def _parse_errors(onnx_path: Path) -> list[str]:
    from edgedx.backends.trt_runtime import make_logger

    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(onnx_path)):
        return []
    return [str(parser.get_error(i)) for i in range(parser.num_errors)]


def test_compute_capabilities_are_recorded_and_options_rtx_cannot_honour_are_refused(tmp_path, bundled_exports):
    report = eng.build_engine(bundled_exports["fp16"], tmp_path / "a.engine", precision="fp16", builder="tensorrt-rtx",
                              compute_capabilities=("8.9", "12.0"), batch=(1, 4, 4))
    section = json.loads(report.sidecar.read_text())["engine"]
    assert section["compute_capabilities"] == ["8.9", "12.0"] and section["targets_from"] == "--compute-capability"
    assert section["profile"]["max"][0] == 4
    assert "TensorRT-RTX 1." in report.summary() and "compute capability 8.9, 12.0" in report.summary()
    for kwargs, message in (({"version_compatible": True}, "--version-compatible"), ({"hardware_compatible": True}, "--hardware-compatible"),
                            ({"dla_core": 0, "batch": (1, 1, 1)}, "--dla-core")):
        with pytest.raises(UsageError, match=f"TensorRT-RTX cannot honour {message}"):
            eng.build_engine(bundled_exports["fp16"], tmp_path / "b.engine", precision="fp16", builder="tensorrt-rtx", **kwargs)
    assert not (tmp_path / "b.engine").exists()


def test_a_timing_cache_is_refused_because_tensorrt_rtx_keeps_none(tmp_path, bundled_exports):
    """TensorRT-RTX's timing-cache calls are no-ops (deprecated in 1.2): a cache would be reported, never used."""
    with pytest.raises(UsageError, match="TensorRT-RTX cannot honour --timing-cache"):
        eng.build_engine(bundled_exports["fp32"], tmp_path / "a.engine", precision="fp32", builder="tensorrt-rtx", timing_cache=tmp_path / "t.cache")
    assert not (tmp_path / "t.cache").exists() and not (tmp_path / "a.engine").exists()


# -- the engine on a machine without a GPU ---------------------------------------------------------


@pytest.fixture
def rtx_engine(tmp_path, bundled_exports) -> Path:
    if not _no_cuda_device():
        pytest.skip("this machine has a CUDA device: the no-GPU answers are tested where there is none")
    folder = tmp_path / "models"
    folder.mkdir()
    onnx_path = folder / "model_fp16.onnx"
    shutil.copy(bundled_exports["fp16"], onnx_path)
    return eng.build_engine(onnx_path, precision="fp16", builder="tensorrt-rtx").engine


def test_without_a_gpu_auto_answers_every_scan_from_the_source_onnx_and_says_why(rtx_engine, xray_files):
    from typer.testing import CliRunner

    from edgedx.cli import app

    result = CliRunner().invoke(app, ["classify", *map(str, xray_files), "--model", str(rtx_engine), "--json", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(records) == len(xray_files)
    assert {r["status"] for r in records} <= {"ok", "rejected"}
    assert {r["backend"] for r in records} == {"onnxruntime"}
    for r in records:
        assert "tensorrt refused model_fp16.engine (no CUDA device" in r["backend_note"]
        assert "ran source ONNX model_fp16.onnx on onnxruntime" in r["backend_note"]


def test_without_a_gpu_an_explicit_tensorrt_backend_exits_3(rtx_engine, xray_files):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-m", "edgedx", "classify", str(xray_files[0]), "--model", str(rtx_engine), "--backend", "tensorrt"],
                          capture_output=True, text=True, env=env, cwd=root, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == ""
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("edgedx: error:")]
    assert "no CUDA device" in line and "Traceback" not in proc.stderr


def test_the_tensorrt_int8_export_passes_the_accuracy_gate_on_real_scans(tmp_path, bundled_exports):
    """The INT8 that TensorRT now accepts is still inside the gate against FP32 (on ONNX Runtime)."""
    from edgedx.evaluate import Gate
    from export.quantize import check_gate

    root = need(XRAY)
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / label).mkdir()
        for f in sorted((root / label).glob("*.jpeg"))[100:400:15]:  # 20 a class, none used for calibration
            (tmp_path / label / f.name).symlink_to(f)
    report = check_gate(bundled_exports["fp32"], bundled_exports["int8"], tmp_path, None, Gate())
    assert report["gate"]["passed"] and report["n"] == 40
    assert report["flips"]["count"] <= 1 and report["score_drift"]["max_abs"] < 0.1


# -- on an RTX GPU (pytest -m gpu) -------------------------------------------------------------------


@pytest.fixture
def rtx_gpu():
    """This machine's GPU when TensorRT-RTX can target it; skips first, before any export is made."""
    from export.engine_builders import RTX_TARGETS
    from tests.conftest import cuda_device

    device = cuda_device()
    if device.sm not in RTX_TARGETS:
        pytest.skip(f"TensorRT-RTX cannot target {device.name} (compute capability {device.sm}; it targets {', '.join(RTX_TARGETS)})")
    return device


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_gpu_rtx_engine_answers_every_scan_like_onnxruntime(rtx_gpu, tmp_path, bundled_exports, xray_files, precision):
    from edgedx.api import Classifier

    device = rtx_gpu
    report = eng.build_engine(bundled_exports[precision], tmp_path / "m.engine", precision=precision, builder="tensorrt-rtx",
                              compute_capabilities=(device.sm,), batch=eng.parse_batch("4"))
    files = xray_files[:6]  # batches of 4: a tail of 2
    with Classifier(report.engine, "tensorrt", batch_size=4, use_gate=False) as trt_clf:
        got = list(trt_clf.classify_many(files))
        info = trt_clf.session.describe()
    with Classifier(bundled_exports[precision], "onnxruntime", batch_size=4, use_gate=False) as ort_clf:
        want = list(ort_clf.classify_many(files))
    assert [r.status for r in got] == ["ok"] * len(files)
    assert info["runtime"] == "tensorrt_rtx" and info["builder"] == "tensorrt-rtx"
    diff = max(abs(a.score - b.score) for a, b in zip(got, want))
    assert diff < (0.02 if precision == "fp16" else 0.1), diff
    print(precision, info, "max score diff", diff)


def test_export_engine_command_with_the_rtx_builder(tmp_path, bundled_exports):
    import typer
    from typer.testing import CliRunner

    from export.engine_cli import engine_command

    app = typer.Typer()
    app.command("engine")(engine_command)
    app.command("other")(lambda: None)  # two commands: "engine" is a subcommand as under `edgedx export`

    onnx_path = tmp_path / "m.onnx"
    shutil.copy(bundled_exports["fp16"], onnx_path)
    result = CliRunner().invoke(app, ["engine", str(onnx_path), "--precision", "fp16", "--builder", "tensorrt-rtx",
                                      "--compute-capability", "12.0,8.6", "--batch", "4", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["builder"] == "tensorrt-rtx" and report["compute_capabilities"] == ["8.6", "12.0"]
    assert report["profile"]["min"][0] == 1 and report["profile"]["max"][0] == 4
    assert hashlib.sha256((tmp_path / "m.engine").read_bytes()).hexdigest() == report["sha256"]
    bad = CliRunner().invoke(app, ["engine", str(onnx_path), "--precision", "fp16", "--builder", "tensorrt-rtx",
                                   "--compute-capability", "9.0"])
    assert isinstance(bad.exception, UsageError) and bad.exception.exit_code == 2
    assert "'9.0' is not one TensorRT-RTX can target" in str(bad.exception)
