"""What precision an ONNX model is, read from its weights and Q/DQ nodes, and the check against a request.

An FP16 ONNX (FP16 weights, e.g. from ModelOpt AutoCast) builds ``fp16``, a symmetric int8 Q/DQ
ONNX ``int8``, an FP32 ONNX ``fp32``: :func:`check_precision` refuses a mismatch rather than let a
builder switch quietly build something else. ``onnx`` is imported on first use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedx.errors import BackendUnavailable, ModelError, UsageError

_FLOAT_TYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64"}
_INT8, _UINT8 = 3, 2


@dataclass(frozen=True)
class OnnxPrecision:
    """What an ONNX model's weights and quantization nodes say about its precision."""

    float_elements: dict[str, int] = field(default_factory=dict)
    qdq_nodes: int = 0
    zero_point_problems: tuple[str, ...] = ()

    @property
    def fp16_fraction(self) -> float:
        total = sum(self.float_elements.values())
        return self.float_elements.get("float16", 0) / total if total else 0.0

    @property
    def detected(self) -> str:
        if self.qdq_nodes:
            return "int8"
        return "fp16" if self.float_elements.get("float16", 0) else "fp32"


def inspect_onnx(model: Any) -> OnnxPrecision:
    """Count float weight elements by type and check Q/DQ zero points (``model``: onnx.ModelProto)."""
    from onnx import numpy_helper

    graph = model.graph
    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    tensors[node.output[0]] = attr.t
    counts: dict[str, int] = {}
    for t in tensors.values():
        kind = _FLOAT_TYPES.get(t.data_type)
        if kind:
            counts[kind] = counts.get(kind, 0) + math.prod(t.dims)
    qdq = 0
    problems: list[str] = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        qdq += 1
        zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
        label = node.name or node.op_type
        if zp is None:
            out_type = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
            source = tensors.get(node.input[0])
            if node.op_type == "QuantizeLinear" and out_type != _INT8:
                problems.append(f"{label}: no zero point, so it quantizes to uint8")
            elif node.op_type == "DequantizeLinear" and source is not None and source.data_type == _UINT8:
                problems.append(f"{label}: dequantizes uint8 weights")
            continue
        t = tensors.get(zp)
        if t is None:
            problems.append(f"{label}: zero point {zp!r} is computed, not a constant")
        elif t.data_type != _INT8:
            problems.append(f"{label}: zero point type is not int8")
        else:
            try:
                if numpy_helper.to_array(t).any():
                    problems.append(f"{label}: non-zero zero point (asymmetric)")
            except Exception:  # noqa: BLE001 (external data is not loaded)
                problems.append(f"{label}: zero point stored outside the model file")
    return OnnxPrecision(counts, qdq, tuple(problems))


def check_precision(requested: str, info: OnnxPrecision, name: str) -> None:
    """Refuse to build ``requested`` from an ONNX whose weights say otherwise.

    Raises:
        UsageError: naming what the ONNX is and what to do.
    """
    autocast = "python -m modelopt.onnx.autocast --onnx_path MODEL.onnx --low_precision_type fp16 --keep_io_types"
    pct = f"{100 * info.fp16_fraction:.0f}%"
    if info.float_elements.get("bfloat16"):
        raise UsageError(f"{name} holds BF16 weights; edgedx builds fp32, fp16 and int8 engines only")
    if requested == "int8":
        if not info.qdq_nodes:
            raise UsageError(
                f"{name} has no QuantizeLinear/DequantizeLinear nodes (it is an {info.detected} model): TensorRT builds INT8 "
                f"only from a Q/DQ ONNX; quantize it first (edgedx export quantize), or ask --precision {info.detected}"
            )
        if info.zero_point_problems:
            shown = "; ".join(info.zero_point_problems[:3])
            raise UsageError(f"{name} is not symmetric int8 Q/DQ, which TensorRT needs (int8 zero point 0): {shown}")
        return
    if info.qdq_nodes:
        raise UsageError(f"{name} is a Q/DQ (INT8) model; ask --precision int8")
    if requested == "fp16" and not info.float_elements.get("float16"):
        raise UsageError(f"{name} holds no FP16 weights (it is FP32): convert it first ({autocast}), or ask --precision fp32")
    if requested == "fp32" and info.float_elements.get("float16"):
        raise UsageError(f"{name} holds FP16 weights ({pct} of weights): ask --precision fp16")


def load_onnx(path: Path) -> Any:
    """The ``onnx.ModelProto`` at ``path``, without its external data (weights stored beside it)."""
    try:
        import onnx
    except ImportError:
        raise BackendUnavailable("checking the ONNX's precision needs the onnx package: pip install 'edgedx[export]'") from None
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 (onnx raises DecodeError, OSError...)
        raise ModelError(f"cannot read ONNX {path}: {exc}") from None
