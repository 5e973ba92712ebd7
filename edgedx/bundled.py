"""The models shipped inside the package (edgedx/models/*.onnx)."""

from __future__ import annotations

from pathlib import Path

from edgedx.errors import ModelError

MODELS_DIR = Path(__file__).resolve().parent / "models"
#: The default screening model: INT8 on the CPU, FP32 where a GPU backend converts it itself.
DEFAULT_CPU = "chest_xray_cnn_int8.onnx"
DEFAULT_FP32 = "chest_xray_cnn_fp32.onnx"


def bundled_models() -> list[Path]:
    return sorted(MODELS_DIR.glob("*.onnx"))


def default_model(backend: str = "auto") -> Path:
    """The bundled model ``classify`` uses without ``--model``.

    The CPU (ONNX Runtime) gets the INT8 model; engines are built from the FP32 one.

    Raises:
        ModelError: the package ships no default model (a broken install).
    """
    if backend == "tensorrt":
        raise ModelError("the tensorrt backend needs an engine: build one with `edgedx export engine` and pass --model")
    for name in (DEFAULT_CPU, DEFAULT_FP32):
        path = MODELS_DIR / name
        if path.is_file():
            return path
    raise ModelError(f"no bundled default model in {MODELS_DIR}; reinstall edgedx or pass --model")
