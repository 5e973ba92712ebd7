"""The models shipped inside the package (edgedx/models/*.onnx)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
        BackendUnavailable: ``tensorrt`` cannot run here.
        UsageError: ``tensorrt`` can run, but there is no bundled engine to default to.
    """
    if backend == "tensorrt":
        from edgedx.backends.base import require_backend
        from edgedx.errors import UsageError

        require_backend(backend)  # no GPU here: say so (exit code 3) before asking for an engine
        raise UsageError("the tensorrt backend needs an engine: build one with `edgedx export engine` and pass --model ENGINE")
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


#: Validation metrics ``edgedx models`` shows, in this order.
VALIDATION_KEYS = ("n", "accuracy", "auc", "sensitivity", "specificity")


def catalog() -> list[dict[str, Any]]:
    """One row per bundled model: its name (for ``--model NAME``), precision, input, labels,
    decision threshold and the validation metrics its manifest records (``provenance.validation``)."""
    from edgedx import manifest

    default = default_model() if bundled_models() else None
    rows = []
    for path in bundled_models():
        m = manifest.load(path)
        p = m.preprocess if m else None
        validation = dict((m.provenance or {}).get("validation") or {}) if m else {}
        rows.append({
            "name": path.stem,
            "file": path.name,
            "path": str(path),
            "precision": m.precision if m else None,
            "input": f"{p.channels}x{p.height}x{p.width} {p.layout.value}" if p else None,
            "labels": list(m.labels) if m else None,
            "positive_label": m.positive_label if m else None,
            "threshold": m.threshold if m else None,
            "validation": {k: validation[k] for k in VALIDATION_KEYS if k in validation},
            "default": path == default,
        })
    return rows
