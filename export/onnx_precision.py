"""What precision an ONNX model is, read from its weights and Q/DQ nodes, and the check against a request.

An FP16 ONNX (FP16 weights, e.g. from ModelOpt AutoCast) builds ``fp16``, an FP32 ONNX ``fp32``,
and an INT8 Q/DQ ONNX ``int8`` only in the form TensorRT's ONNX parser accepts (onnx-tensorrt's
operator table for QuantizeLinear/DequantizeLinear): int8 quantization with zero points 0
(symmetric), dequantizing only 8-bit tensors, so biases stay float. ``edgedx export quantize
--target tensorrt`` writes that form; its CPU flavour (uint8 activations, int32 biases: ONNX
Runtime's fast U8S8 kernels) is refused by name. :func:`check_precision` refuses a mismatch rather
than let a builder switch quietly build something else. ``onnx`` is imported on first use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedx.errors import BackendUnavailable, ModelError, UsageError

_FLOAT_TYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64"}
_INT8, _UINT8, _INT32 = 3, 2, 6


@dataclass(frozen=True)
class OnnxPrecision:
    """What an ONNX model's weights and quantization nodes say about its precision."""

    float_elements: dict[str, int] = field(default_factory=dict)
    qdq_nodes: int = 0
    zero_point_problems: tuple[str, ...] = ()
    #: DequantizeLinear nodes whose input is int32 (ONNX Runtime's quantized biases).
    int32_dequantize: tuple[str, ...] = ()
    #: Q/DQ nodes that quantize to or from uint8 (ONNX Runtime's CPU U8S8 activations).
    uint8_nodes: tuple[str, ...] = ()

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
    int32_dq: list[str] = []
    uint8: list[str] = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        qdq += 1
        zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
        label = node.name or node.op_type
        source = tensors.get(node.input[0])
        zp_tensor = tensors.get(zp) if zp else None
        if node.op_type == "DequantizeLinear" and (
            (source is not None and source.data_type == _INT32) or (zp_tensor is not None and zp_tensor.data_type == _INT32)
        ):
            int32_dq.append(label)
            continue
        if zp_tensor is not None and zp_tensor.data_type == _UINT8:
            uint8.append(label)
            continue
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
    return OnnxPrecision(counts, qdq, tuple(problems), tuple(int32_dq), tuple(uint8))


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
        requantize = "requantize the FP32 model with: edgedx export quantize MODEL.onnx --target tensorrt"
        if info.uint8_nodes:
            raise UsageError(
                f"{name} is the CPU flavour of edgedx export quantize (uint8 activations, U8S8, for ONNX Runtime; "
                f"{len(info.uint8_nodes)} uint8 Q/DQ nodes, first {info.uint8_nodes[0]}), which TensorRT does not build: {requantize}"
            )
        if info.int32_dequantize:
            raise UsageError(
                f"{name} dequantizes int32 biases ({len(info.int32_dequantize)} nodes, first {info.int32_dequantize[0]}); TensorRT's ONNX "
                f"parser dequantizes only 8-bit tensors (int8, uint8, fp8, int4): {requantize} (biases stay float)"
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
