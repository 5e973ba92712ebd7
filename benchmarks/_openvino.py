"""OpenVINO rows of benchmarks.run: bare OpenVINO against edgedx's OpenVINO backend on the same
file, back to back at each batch size, and how OpenVINO's answers differ from ONNX Runtime's.

- ``openvino <prec> model bN``: ``InferRequest.infer`` on the model reshaped to a static batch N,
  compiled for the CPU with **f32** inference precision (OpenVINO's default would pick bf16 on CPUs
  that have it) and the same threads as every other row. Excludes read/reshape/compile.
- ``edgedx-openvino <prec> model bN``: ``edgedx.bench.bench_model`` through
  ``Classifier(backend="openvino")``: ``Session.run`` (input checks, infer, float32 output).
- agreement: the same real files through ``Classifier`` on ONNX Runtime and on OpenVINO; decision
  flips and the largest score difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common as C


def rows(path: Path, prec: str, cfg: Any, x1: np.ndarray, row: Any, model_result: Any, skipped: Any) -> list[dict[str, Any]]:
    """Bare OpenVINO f32 and edgedx's OpenVINO backend, back to back at each batch size."""
    try:
        import openvino as ov
    except ImportError:
        return [skipped("openvino", prec, b, "openvino not installed (pip install 'edgedx[openvino]')") for b in cfg.batches]
    from edgedx.api import Classifier
    from edgedx.backends import SessionOptions
    from edgedx.bench import bench_model, first_image

    core, out = ov.Core(), []
    image = first_image(cfg.files)
    for b in cfg.batches:
        C.log(f"openvino model-only b{b} {path.name}")
        model = core.read_model(str(path))
        model.reshape({model.inputs[0]: ov.PartialShape([b, *x1.shape[1:]])})
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": cfg.threads, "PERFORMANCE_HINT": "LATENCY"}
        compiled = core.compile_model(model, "CPU", config)
        req, x = compiled.create_infer_request(), np.repeat(x1, b, 0)
        samples = C.time_loop(lambda r=req, x=x: r.infer({0: x}), duration_s=cfg.duration_s, warmup=cfg.warmup)
        detail = {"openvino": ov.__version__, "threads": cfg.threads, **properties(compiled)}
        out.append(row("openvino", model_result(path, "openvino", prec, b, samples, detail)))
        C.log(f"edgedx openvino model-only b{b} {path.name}")
        options = SessionOptions(threads=cfg.threads)
        with Classifier(path, "openvino", batch_size=b, workers=0, session_options=options) as clf:
            r = bench_model(clf, batch_size=b, iterations=None, warmup=cfg.warmup, duration_s=cfg.duration_s, image=image)
        out.append(row("edgedx-openvino", r))
    return out


def agreement(path: Path, files: list[Path], threads: int) -> dict[str, Any]:
    """Decisions and scores of OpenVINO (f32) against ONNX Runtime on the same files through edgedx."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return {"skipped": "openvino not installed"}
    from edgedx.api import Classifier
    from edgedx.backends import SessionOptions

    C.log(f"openvino vs onnxruntime decisions on {len(files)} files, {path.name}")
    options = SessionOptions(threads=threads)
    with Classifier(path, "onnxruntime", session_options=options) as a, Classifier(path, "openvino", session_options=options) as b:
        ref, got = list(a.classify_many(files)), list(b.classify_many(files))
    pairs = [(r, g) for r, g in zip(ref, got) if r.scores and g.scores]
    diffs = [abs(r.scores[k] - g.scores[k]) for r, g in pairs for k in r.scores]
    return {
        "files": len(files),
        "compared": len(pairs),
        "decision_flips": sum(r.label != g.label for r, g in pairs),
        "max_score_diff": max(diffs) if diffs else None,
        "precision": got[0].precision if got else None,
    }


def properties(compiled: Any) -> dict[str, Any]:
    """What OpenVINO says it runs: precision hint, threads, streams, and the convolutions' precision."""
    out: dict[str, Any] = {}
    for key in ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS"):
        try:
            value = compiled.get_property(key)
            out[key] = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
        except Exception:  # noqa: BLE001 - a property this version does not report
            out[key] = None
    conv: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in ("Convolution", "FullyConnected"):
            key = info["runtimePrecision"].astype(str)
            conv[key] = conv.get(key, 0) + 1
    out["conv_fc_runtime_precision"] = conv
    return out
