"""The runtime stays lean: the CLI and the API load no training framework or GPU stack at import."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "tensorflow", "keras", "tensorrt", "tensorrt_lean", "tensorrt_rtx", "cuda", "pycuda", "onnxruntime", "openvino",
         "pydicom", "onnx", "tritonclient", "grpc", "gevent", "ray", "pyarrow", "matplotlib", "simplejpeg", "cv2")


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_cli_import_loads_nothing_heavy():
    mods = loaded_after("import edgedx.cli; edgedx.cli.mount_export()")
    assert not mods & set(HEAVY), mods & set(HEAVY)


def test_api_import_loads_no_gpu_or_training_stack():
    mods = loaded_after("import edgedx.api, edgedx.decode, edgedx.preprocess")
    assert not mods & {"torch", "tensorflow", "keras", "tensorrt", "tensorrt_lean", "tensorrt_rtx", "cuda", "pycuda", "pydicom", "openvino"}


def test_help_runs_without_loading_backends():
    r = subprocess.run([sys.executable, "-m", "edgedx", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "classify" in r.stdout


def test_archive_scale_modules_load_no_ray_or_pyarrow():
    """Ray and pyarrow load only when --ray or --format parquet runs, not with the modules that name them."""
    mods = loaded_after("import edgedx, edgedx.cli, edgedx.inputs, edgedx.resume, edgedx.parquet, edgedx.dicom_ids; edgedx.cli.mount_export()")
    assert not mods & {"ray", "pyarrow", "pydicom"}, mods & {"ray", "pyarrow", "pydicom"}
    mods = loaded_after("import edgedx.api")
    assert not mods & {"ray", "pyarrow"}


def test_calibration_and_interval_metrics_are_numpy_only():
    mods = loaded_after("import edgedx.calibration, edgedx.postprocess, edgedx.metrics, edgedx.evaluate")
    heavy = set(HEAVY) - {"cv2"}  # evaluate decodes images
    assert not mods & heavy, mods & heavy


def test_strict_jpeg_decoder_loads_on_first_jpeg_only():
    mods = loaded_after("import edgedx.decode, edgedx.jpeg, edgedx.outputs, edgedx.limits")
    assert "simplejpeg" not in mods
    mods = loaded_after("import edgedx.decode as d, cv2; d.decode_bytes(cv2.imencode('.jpg', __import__('numpy').zeros((8, 8), 'uint8'))[1].tobytes())")
    assert "simplejpeg" in mods
