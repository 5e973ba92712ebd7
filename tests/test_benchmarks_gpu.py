"""benchmarks.gpu on a machine without a GPU: it says so, builds what it can, and exits 0."""

from __future__ import annotations

import json

import pytest

from tests.conftest import XRAY, need


def test_device_facts_say_why_there_is_no_gpu_or_describe_it():
    from benchmarks.gpu import device_facts

    facts = device_facts()
    if facts["device"] is None:
        assert isinstance(facts["reason"], str) and facts["reason"]
    else:
        assert facts["compute_capability"].count(".") == 1 and facts["count"] >= 1


@pytest.mark.slow
def test_the_report_without_a_gpu_is_clean(tmp_path, monkeypatch):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install 'edgedx[test]')")
    pytest.importorskip("onnxruntime.quantization")
    import benchmarks.gpu as gpu

    if gpu.device_facts()["device"] is not None:
        pytest.skip("this machine has a CUDA device: run python -m benchmarks.gpu --out DIR")
    images = need(XRAY)
    code = gpu.main(["--out", str(tmp_path), "--images", str(images), "--calib", "4", "--scans", "4", "--skip-tests", "--builder", "tensorrt-rtx"])
    assert code == 0
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert report["cuda"]["device"] is None and "need a CUDA device" in report["skipped"]
    assert {p: e["builder"] for p, e in report["engines"].items()} == {"fp32": "tensorrt-rtx", "fp16": "tensorrt-rtx", "int8": "tensorrt-rtx"}
    assert all(e["mb"] > 1 for e in report["engines"].values())
    assert all(step["ok"] for step in report["steps"].values()) and "numerics" not in report
