"""export.quantize: INT8 for the CPU (U8S8) and TensorRT (symmetric S8S8), the calibration cache,
the accuracy gate on a deliberately broken quantization, and FP16."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from onnx import numpy_helper  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from edgedx import decode, manifest as manifest_mod  # noqa: E402
from edgedx.api import Classifier, file_sha256  # noqa: E402
from edgedx.errors import UsageError  # noqa: E402
from edgedx.evaluate import Gate, GateFailed  # noqa: E402
from export import cli  # noqa: E402
from export.quantize import Method, QuantizeOptions, Target, quantize, to_fp16  # noqa: E402
from tests.factories import manifest_dict, tiny_cnn  # noqa: E402
from tests.test_evaluate import brightness_cnn, brightness_images, brightness_npz  # noqa: E402


def initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def qdq_nodes(path: Path, op: str) -> list:
    return [n for n in onnx.load(str(path)).graph.node if n.op_type == op]


def write_pngs(folder: Path, images: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        paths.append(folder / f"{i:03d}.png")
        cv2.imwrite(str(paths[-1]), img)
    return paths


@pytest.fixture
def fp32(tmp_path: Path) -> Path:
    return tiny_cnn(tmp_path / "fp32.onnx", manifest=manifest_dict())


# -- formats ---------------------------------------------------------------------------------------


def test_cpu_target_is_u8s8_per_channel(tmp_path: Path, fp32: Path, xray_files: list[Path]):
    out = tmp_path / "int8.onnx"
    summary = quantize(fp32, out, xray_files, QuantizeOptions(target=Target.CPU, method=Method.MINMAX, num_images=6, float_input_layer=False))
    inits = initializers(out)
    act_zp = [inits[n.input[2]] for n in qdq_nodes(out, "QuantizeLinear")]
    assert act_zp and all(z.dtype == np.uint8 for z in act_zp)  # U8 activations
    weight_dq = [n for n in qdq_nodes(out, "DequantizeLinear") if n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    conv_w = next(n for n in weight_dq if inits[n.input[0]].ndim == 4)
    assert inits[conv_w.input[1]].shape == (8,)  # per-channel scales, one per output channel
    assert all(not inits[n.input[2]].any() for n in weight_dq)  # symmetric S8 weights

    m = manifest_mod.load(out)
    q = m.provenance["quantization"]
    assert m.precision == "int8" and m.labels == ("NORMAL", "PNEUMONIA") and m.threshold == 0.5
    assert q["target"] == "cpu" and q["method"] == "minmax" and q["images"] == 6 and q["excluded"] == []
    assert q["source_sha256"] == file_sha256(fp32) and summary["sha256"] == file_sha256(out)
    # Scores: with the image-reading layer float (the default). ONNX Runtime's U8S8 kernels saturate
    # on x86 CPUs without VNNI, worst on a quantized first conv (see QuantizeOptions.float_input_layer).
    default = tmp_path / "int8_default.onnx"
    quantize(fp32, default, xray_files, QuantizeOptions(target=Target.CPU, method=Method.MINMAX, num_images=6))
    images = [decode.decode_file(f)[0].image for f in xray_files]
    with Classifier(fp32, "onnxruntime") as a, Classifier(default, "onnxruntime") as b:
        assert np.abs(a.predict_proba(images) - b.predict_proba(images)).max() < 0.05


def test_tensorrt_target_is_symmetric_s8s8(tmp_path: Path, fp32: Path, xray_files: list[Path]):
    out = tmp_path / "trt.onnx"
    quantize(fp32, out, xray_files, QuantizeOptions(target=Target.TENSORRT, method=Method.PERCENTILE, num_images=6, float_input_layer=False))
    inits = initializers(out)
    # TensorRT's parser dequantizes only 8-bit tensors: biases stay float (no int32 DequantizeLinear).
    assert not [n.name for n in qdq_nodes(out, "DequantizeLinear") if n.input[0] in inits and inits[n.input[0]].dtype == np.int32]
    conv = next(n for n in onnx.load(str(out)).graph.node if n.op_type == "Conv")
    assert inits[conv.input[2]].dtype == np.float32
    zero_points = [inits[n.input[2]] for op in ("QuantizeLinear", "DequantizeLinear") for n in qdq_nodes(out, op)
                   if len(n.input) > 2 and inits[n.input[2]].dtype != np.int32]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert not any(a.dtype == np.uint8 for a in inits.values())
    assert manifest_mod.load(out).provenance["quantization"]["target"] == "tensorrt"


@pytest.mark.parametrize("target", list(Target))
def test_the_layer_that_reads_the_image_stays_float_by_default(tmp_path: Path, fp32: Path, xray_files: list[Path], target: Target):
    out = tmp_path / "int8.onnx"
    summary = quantize(fp32, out, xray_files, QuantizeOptions(target=target, method=Method.MINMAX, num_images=4))
    conv = next(n for n in onnx.load(str(out)).graph.node if n.op_type == "Conv")
    assert initializers(out)[conv.input[1]].dtype == np.float32  # weights not quantized
    assert summary["excluded"] == [conv.name] == manifest_mod.load(out).provenance["quantization"]["excluded"]
    assert qdq_nodes(out, "QuantizeLinear")  # the rest is quantized


def test_reduce_range_keeps_weights_in_7_bits(tmp_path: Path, fp32: Path, xray_files: list[Path]):
    out = tmp_path / "int8.onnx"
    quantize(fp32, out, xray_files, QuantizeOptions(method=Method.MINMAX, num_images=4, reduce_range=True, float_input_layer=False))
    inits = initializers(out)
    weights = [inits[n.input[0]] for n in qdq_nodes(out, "DequantizeLinear") if n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    assert weights and all(int(np.abs(w).max()) <= 64 for w in weights)  # symmetric 7-bit: [-64, 64]
    assert max(int(np.abs(w).max()) for w in weights) > 32  # the range is used, not collapsed
    assert "7-bit" in manifest_mod.load(out).provenance["quantization"]["weights"]


def test_exclude_by_op_type_keeps_the_node_in_float(tmp_path: Path, fp32: Path, xray_files: list[Path]):
    out = tmp_path / "int8.onnx"
    summary = quantize(fp32, out, xray_files, QuantizeOptions(method=Method.MINMAX, num_images=4, exclude=("Gemm",), float_input_layer=False))
    assert len(summary["excluded"]) == 1
    gemm = next(n for n in onnx.load(str(out)).graph.node if n.op_type == "Gemm")
    assert initializers(out)[gemm.input[1]].dtype == np.float32  # weights not quantized
    assert manifest_mod.load(out).provenance["quantization"]["excluded"] == summary["excluded"]
    with pytest.raises(UsageError, match="no such node"):
        quantize(fp32, tmp_path / "x.onnx", xray_files, QuantizeOptions(exclude=("NoSuchNode",)))


# -- calibration cache ---------------------------------------------------------------------------------


def test_second_quantization_reuses_cached_ranges(tmp_path: Path, fp32: Path, xray_files: list[Path], monkeypatch):
    options = QuantizeOptions(method=Method.ENTROPY, num_images=6)
    first = quantize(fp32, tmp_path / "a.onnx", xray_files, options)
    assert first["calibration"]["cache"] == "written" and first["calibration"]["images_read"] == 6
    assert Path(first["calibration"]["cache_path"]).parent == tmp_path

    decodes = []
    real_decode = decode.decode_file
    monkeypatch.setattr(decode, "decode_file", lambda *a, **k: decodes.append(a) or real_decode(*a, **k))
    second = quantize(fp32, tmp_path / "b.onnx", xray_files, options)
    assert second["calibration"]["cache"] == "hit" and second["calibration"]["images_read"] == 0
    assert decodes == []  # no data pass at all
    a, b = initializers(tmp_path / "a.onnx"), initializers(tmp_path / "b.onnx")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    other_images = quantize(fp32, tmp_path / "c.onnx", xray_files[:4], options)
    other_method = quantize(fp32, tmp_path / "d.onnx", xray_files, QuantizeOptions(method=Method.MINMAX, num_images=6))
    assert other_images["calibration"]["cache"] == other_method["calibration"]["cache"] == "written"
    assert len(decodes) == 4 + 6


# -- the accuracy gate -------------------------------------------------------------------------------


@pytest.fixture
def bright(tmp_path: Path) -> tuple[Path, list[Path], Path]:
    """A model that really separates its classes, calibration images like its data, labelled data."""
    model = brightness_cnn(tmp_path / "bright.onnx")
    calib = write_pngs(tmp_path / "calib", brightness_images(24, seed=7)[0])
    return model, calib, brightness_npz(tmp_path / "eval.npz", n=200)


@pytest.mark.parametrize("method", list(Method))
def test_gate_passes_a_good_quantization(tmp_path: Path, bright, method: Method):
    model, calib, data = bright
    options = QuantizeOptions(method=method, num_images=20)  # batches of 8, 8 and 4
    summary = quantize(model, tmp_path / "int8.onnx", calib, options, eval_data=data)
    assert summary["calibration"]["images_read"] == 20
    report = summary["verify"]
    assert report["gate"]["passed"] and report["n"] == 200
    assert report["reference"]["auc"] > 0.9 and abs(report["delta"]["auc"]) <= 0.005


def test_gate_catches_an_absurd_calibration(tmp_path: Path, bright):
    model, _, data = bright
    black = write_pngs(tmp_path / "black", np.zeros((4, 32, 32), np.uint8))  # ranges from black images clip everything bright
    out = tmp_path / "int8.onnx"
    with pytest.raises(GateFailed) as err:
        quantize(model, out, black, QuantizeOptions(method=Method.MINMAX, num_images=4), eval_data=data)
    report = err.value.report
    assert not report["gate"]["passed"] and report["flips"]["count"] > 10
    assert "accuracy dropped" in str(err.value)
    assert not out.exists() and Path(report["rejected_output"]).is_file()


def test_gate_catches_corrupted_weight_scales_via_cli(tmp_path: Path, bright):
    model, calib, data = bright
    good = tmp_path / "int8.onnx"
    quantize(model, good, calib, QuantizeOptions(method=Method.MINMAX, num_images=24))
    proto = onnx.load(str(good))
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:  # the quantized weights' scales with a sign error
        weight = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if weight is not None and weight.data_type == onnx.TensorProto.INT8 and len(weight.dims) in (2, 4):
            scale = inits[node.input[1]]
            scale.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(scale), scale.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))

    runner = CliRunner()
    ok = runner.invoke(cli.app, ["verify", str(model), str(good), str(data), "--backend", "onnxruntime", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["gate"]["passed"] is True
    bad = runner.invoke(cli.app, ["verify", str(model), str(broken), str(data), "--backend", "onnxruntime"])
    assert bad.exit_code == 1
    assert "gate       FAILED" in bad.stdout and "edgedx: gate failed: candidate: " in bad.stderr


def test_cli_quantize_json(tmp_path: Path, bright):
    model, calib, data = bright
    args = ["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--calib", str(calib[0].parent), "--num-images", "12",
            "--method", "minmax", "--target", "cpu", "--eval", str(data), "--json"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # calibration progress stays off stdout
    assert summary["calibration"]["images"] == 12 and summary["verify"]["gate"]["passed"] is True
    assert Gate().max_auc_drop == summary["verify"]["gate"]["max_auc_drop"]


# -- FP16 -------------------------------------------------------------------------------------------


def test_fp16_runs_in_onnxruntime_and_matches_fp32(tmp_path: Path, fp32: Path, xray_files: list[Path]):
    out = tmp_path / "fp16.onnx"
    result = to_fp16(fp32, out, images=xray_files)
    assert result["comparison"]["max_abs_error"] <= 1e-2 and result["comparison"]["top1_agreement"] == 1.0
    model = onnx.load(str(out))
    assert {t.data_type for t in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 IO kept
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    m = manifest_mod.load(out)
    assert m.precision == "fp16" and len(m.provenance["fp16"]["source_sha256"]) == 64
    with pytest.raises(UsageError, match="fp16"):
        quantize(out, tmp_path / "x.onnx", xray_files)
