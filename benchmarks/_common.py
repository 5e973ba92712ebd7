"""Shared by the benchmark scripts: file selection, the timing loop, machine facts, FLOP counting
and the machine's measured matrix-multiply peak.

Nothing here does a row's timed work: each row's loop lives in its own script, so that what a row
includes is visible where it is timed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
DEFAULT_IMAGES = DATA / "chest_xray_kermany_224" / "train"
DEFAULT_DICOM = DATA / "dicom" / "RG1_UNCR.dcm"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
MANIFEST_KEY = "edgedx.manifest"  # the ONNX metadata entry; read directly so baselines need no edgedx


def log(msg: str) -> None:
    """Progress goes to stderr; stdout carries only the result table."""
    print(msg, file=sys.stderr, flush=True)


def select_files(images: Path, count: int) -> list[Path]:
    """``count`` files spread evenly over the sorted folder (so NORMAL and PNEUMONIA both appear); 0: all.

    Deterministic: the same folder and count always give the same files in the same order.
    """
    exts = {".jpeg", ".jpg", ".png"}
    found = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in exts and p.is_file())
    if not found:
        raise SystemExit(f"no images under {images}: pass --images DIR")
    if count <= 0 or count >= len(found):
        return found
    step = len(found) / count
    return [found[int(i * step)] for i in range(count)]


def time_loop(fn: Callable[[], object], *, duration_s: float, warmup: int, min_iters: int = 5) -> list[float]:
    """Seconds per call of ``fn``, after ``warmup`` untimed calls; runs for ``duration_s`` (at least ``min_iters`` calls)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    deadline = time.perf_counter() + duration_s
    while len(samples) < min_iters or time.perf_counter() < deadline:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return samples


def read_norm(model_path: Path) -> dict[str, Any]:
    """Input size and mean/std from the model's embedded manifest, read with onnx alone.

    Baseline rows use this, as a tutorial would read a model card; they never call edgedx.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    m = json.loads(meta[MANIFEST_KEY]) if MANIFEST_KEY in meta else {}
    inp, pre = m.get("input", {}), m.get("preprocess", {})
    return {
        "height": int(inp.get("height", 224)),
        "width": int(inp.get("width", 224)),
        "scale": float(pre.get("scale", 1 / 255)),
        "mean": float(pre.get("mean", [0.5])[0]),
        "std": float(pre.get("std", [0.25])[0]),
        "from_manifest": bool(m),
    }


def machine_info() -> dict[str, Any]:
    """CPU model, cores, SIMD flags (x86-64 ``flags`` or aarch64 ``Features``), library versions,
    date and load (the noise warning)."""
    from edgedx import machine

    cpu = machine.cpu_info()
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu["model"],
        "arch": cpu["arch"],
        "logical_cpus": cpu["logical_cpus"],
        "usable_cores": cpu["usable_cores"],
        "flags": cpu["features"],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
    }
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
    except ImportError:
        info["physical_cores"] = None
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def versions() -> dict[str, str | None]:
    """Library versions, as edgedx reports them (``edgedx info --versions``)."""
    from edgedx import machine

    out = machine.versions()
    if out["opencv"] is None:  # a source build has no distribution metadata
        try:
            import cv2

            out["opencv"] = cv2.__version__
        except ImportError:
            pass
    return out


# -- FLOPs ------------------------------------------------------------------------------------

_CONVS = {"Conv", "ConvInteger", "QLinearConv"}
_MATMULS = {"MatMul", "MatMulInteger", "QLinearMatMul"}


def count_flops(model_path: Path) -> dict[str, Any]:
    """FLOPs (2 x multiply-accumulates) of one image through the model, from ONNX shape inference.

    Counts Conv/Gemm/MatMul and their integer/QLinear forms (a QDQ model's Convs are plain Conv on
    DequantizeLinear outputs); elementwise ops, pooling and BatchNorm are left out (a few percent at
    most for a CNN). The batch dimension is fixed to 1 before inference.
    """
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(model_path), load_external_data=False)
    init_names = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dim0 = inp.type.tensor_type.shape.dim[0]
        dim0.ClearField("dim_param")
        dim0.dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {i.name: list(i.dims) for i in model.graph.initializer}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    macs, per_op, unknown = 0, {}, []
    for node in model.graph.node:
        op = node.op_type
        if op not in _CONVS | _MATMULS | {"Gemm"}:
            continue
        out = shapes.get(node.output[0])
        w_name = node.input[3] if op == "QLinearConv" or op == "QLinearMatMul" else node.input[1]
        a_name = node.input[0]
        w, a = shapes.get(w_name), shapes.get(a_name)
        if not out or -1 in out or (op in _CONVS and (not w or -1 in w)):
            unknown.append(node.name or op)
            continue
        if op in _CONVS:  # out (N, Cout, H, W); weight (Cout, Cin/groups, kh, kw)
            n = int(np.prod(out)) * int(np.prod(w[1:]))
        elif op == "Gemm":  # out (M, N); K from A (transposed or not)
            trans_a = next((a_.i for a_ in node.attribute if a_.name == "transA"), 0)
            k = a[0] if trans_a else a[-1]
            n = int(np.prod(out)) * k
        else:
            n = int(np.prod(out)) * a[-1]
        macs += n
        per_op[op] = per_op.get(op, 0) + 2 * n
    return {"flops_per_image": 2 * macs, "by_op": per_op, "uncounted_nodes": unknown}


# -- measured peaks -----------------------------------------------------------------------------


def matmul_peaks(threads: int, *, n: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """Best-of-``repeats`` GFLOP/s (GOP/s for int8) of an n x n x n matrix multiply on this machine.

    ``numpy_fp32`` uses numpy's BLAS at its own thread count; ``ort_fp32`` and ``ort_int8``
    (MatMulInteger, uint8 x int8, the kernel a U8S8 model's convolutions reduce to) use ONNX
    Runtime with ``threads`` threads, as the model rows do.
    """
    rng = np.random.default_rng(0)
    ops = 2.0 * n**3
    a = rng.standard_normal((n, n), np.float32)
    b = rng.standard_normal((n, n), np.float32)
    out: dict[str, Any] = {"n": n, "repeats": repeats, "threads": threads}
    np.matmul(a, b)
    out["numpy_fp32_gflops"] = ops / _best(lambda: np.matmul(a, b), repeats) / 1e9
    try:
        fp32 = _ort_matmul("MatMul", n, threads)
        out["ort_fp32_gflops"] = ops / _best(lambda: fp32.run(None, {"A": a, "B": b}), repeats) / 1e9
        ia = rng.integers(0, 256, (n, n), np.uint8)
        ib = rng.integers(-128, 128, (n, n), np.int8)
        int8 = _ort_matmul("MatMulInteger", n, threads)
        out["ort_int8_gops"] = ops / _best(lambda: int8.run(None, {"A": ia, "B": ib}), repeats) / 1e9
    except Exception as exc:  # noqa: BLE001 - a peak we cannot measure is reported missing, not fatal
        out["ort_error"] = f"{type(exc).__name__}: {exc}"
    out["fp32_reference_gflops"] = max(out["numpy_fp32_gflops"], out.get("ort_fp32_gflops", 0.0))
    return out


def best_peaks(*measurements: dict[str, Any]) -> dict[str, Any]:
    """The best of several peak measurements, key by key: a peak is only ever under-measured (by other load)."""
    out = dict(measurements[0])
    for m in measurements[1:]:
        for key, value in m.items():
            if key.endswith(("_gflops", "_gops")) and isinstance(value, float):
                out[key] = max(out.get(key) or 0.0, value)
    out["measurements"] = len(measurements)
    return out


def _best(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _ort_matmul(op: str, n: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    a_type, b_type, o_type = (
        (TensorProto.FLOAT,) * 3 if op == "MatMul" else (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)
    )
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])],
        "peak",
        [helper.make_tensor_value_info("A", a_type, [n, n]), helper.make_tensor_value_info("B", b_type, [n, n])],
        [helper.make_tensor_value_info("Y", o_type, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), ort_options(threads), providers=["CPUExecutionProvider"])


def ort_options(threads: int):
    """The session options edgedx's ONNX Runtime backend uses, for the bare-ORT rows."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table with aligned columns."""
    cells = [header] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
