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


def by_name(name: str) -> Path | None:
    """The bundled model called ``name`` (``chest_xray_cnn_fp32`` or ``chest_xray_cnn_fp32.onnx``), or None."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    for candidate in (MODELS_DIR / name, MODELS_DIR / f"{name}.onnx"):
        if candidate.suffix == ".onnx" and candidate.is_file():
            return candidate
    return None


def resolve(model: str | Path) -> Path:
    """``model`` as a path; a bundled model's name when no such file exists here.

    An existing file always wins over a bundled name, so ``./chest_xray_cnn_int8.onnx`` of your own
    is never swapped for the packaged one.
    """
    path = Path(model)
    if path.exists():
        return path
    return by_name(str(model)) or path
