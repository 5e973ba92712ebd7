"""One command for a GPU machine: what edgedx's TensorRT path does there, in one JSON report.

    python -m benchmarks.gpu --out DIR [--images DIR] [--builder auto|tensorrt|tensorrt-rtx] [--skip-tests]

Steps, each recorded (with its error, if any) in ``DIR/gpu_report.json``:

1. facts: machine, library versions, the CUDA device (or why there is none: no driver, a driver
   older than the CUDA runtime);
2. ``pytest -m gpu`` (the GPU-marked tests; junit XML in DIR);
3. the bundled model exported FP32 / FP16 / INT8 (``--target tensorrt``, calibrated on real scans)
   and built into engines with whichever TensorRT is installed (build seconds, plan MB; TensorRT-RTX
   builds even without a GPU);
4. numerics on real scans: each engine against ONNX Runtime on the same-precision ONNX and on FP32
   (largest score difference, decisions flipped), through :class:`edgedx.api.Classifier`;
5. ``bench --engine`` timings (h2d / compute / d2h from CUDA events, latency, throughput) at batch 1
   and 8, with CUDA graphs on and off.

Without a CUDA device steps 4-5 are skipped with the reason and the script still exits 0; a GPU
step that fails makes it exit 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common as C

TRT_DISTS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_lean_cu13", "tensorrt-rtx-cu13", "tensorrt_rtx_cu13", "cuda-python", "pycuda")


def device_facts() -> dict[str, Any]:
    """The first CUDA device, or why there is none (never raises)."""
    from edgedx.cuda import installed_bindings, open_driver

    if not installed_bindings():
        return {"device": None, "reason": "no CUDA Python binding installed (pip install cuda-python)"}
    try:
        with open_driver("auto") as cuda:
            count, why = cuda.probe()
            if not count:
                return {"device": None, "reason": why, "binding": cuda.name}
            info = cuda.device_info(0)
            return {"device": info.name, "compute_capability": info.sm, "memory_gb": round(info.total_memory / 2**30, 1),
                    "count": count, "binding": cuda.name}
    except Exception as exc:  # noqa: BLE001 (a report, not a crash)
        return {"device": None, "reason": f"{type(exc).__name__}: {exc}"}


def run_gpu_tests(out: Path) -> dict[str, Any]:
    """``pytest -m gpu`` in a subprocess; counts from its junit XML."""
    import xml.etree.ElementTree as ET

    xml_path = out / "gpu-tests.xml"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={xml_path}"],
                          cwd=C.ROOT, capture_output=True, text=True, timeout=1800)
    (out / "gpu-tests.log").write_text(proc.stdout + proc.stderr)
    counts: dict[str, Any] = {"exit_code": proc.returncode, "seconds": round(time.perf_counter() - started, 1)}
    if xml_path.is_file():
        suite = ET.parse(xml_path).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        counts["skip_reasons"] = sorted({(s.get("message") or "")[:160] for s in suite.iter("skipped")})
    return counts


def make_exports(out: Path, calib: list[Path]) -> dict[str, Path]:
    """The bundled model's FP32 ONNX and its FP16 and TensorRT-flavour INT8 exports."""
    from edgedx import bundled
    from export.options import Target
    from export.quantize import QuantizeOptions, quantize, to_fp16

    paths = {"fp32": out / "model_fp32.onnx", "fp16": out / "model_fp16.onnx", "int8": out / "model_int8_trt.onnx"}
    shutil.copy(bundled.MODELS_DIR / bundled.DEFAULT_FP32, paths["fp32"])
    to_fp16(paths["fp32"], paths["fp16"])
    quantize(paths["fp32"], paths["int8"], calib, QuantizeOptions(target=Target.TENSORRT, num_images=len(calib), cache_dir=out))
    return paths


def build_engines(out: Path, onnx: dict[str, Path], builder: str) -> dict[str, Any]:
    from export.engine import build_engine

    results: dict[str, Any] = {}
    for precision, path in onnx.items():
        try:
            kwargs: dict[str, Any] = {"timing_cache": out / "timing.cache"} if builder == "tensorrt" or (builder == "auto" and _has("tensorrt")) else {}
            report = build_engine(path, out / f"model_{precision}.engine", precision=precision, builder=builder, **kwargs)
            results[precision] = {"engine": str(report.engine), "builder": report.builder, "version": report.tensorrt_version,
                                  "targets": list(report.compute_capabilities), "seconds": round(report.seconds, 3),
                                  "mb": round(report.size_bytes / 1e6, 2), "timing_cache": report.timing_cache_state.value if report.timing_cache_state else None}
        except Exception as exc:  # noqa: BLE001
            results[precision] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


def numerics(engine: Path, same_onnx: Path, fp32_onnx: Path, files: list[Path]) -> dict[str, Any]:
    """Engine vs ONNX Runtime on real scans: largest score difference and decisions flipped."""
    from edgedx.api import Classifier

    def scores(model: Path, backend: str) -> tuple[np.ndarray, np.ndarray]:
        with Classifier(model, backend, batch_size=8, use_gate=False) as clf:
            results = list(clf.classify_many(files))
        ok = [r for r in results if r.status == "ok"]
        if len(ok) != len(files):
            raise RuntimeError(f"{backend} answered {len(ok)} of {len(files)} scans")
        return np.array([r.score for r in ok]), np.array([bool(r.positive) for r in ok])

    got, got_pos = scores(engine, "tensorrt")
    out: dict[str, Any] = {"scans": len(files)}
    for name, ref_path in (("vs_same_precision_onnx", same_onnx), ("vs_fp32_onnx", fp32_onnx)):
        ref, ref_pos = scores(ref_path, "onnxruntime")
        out[name] = {"max_score_diff": round(float(np.abs(got - ref).max()), 5), "decision_flips": int((got_pos != ref_pos).sum())}
    return out


def timings(engine: Path) -> list[dict[str, Any]]:
    from edgedx import bench
    from edgedx.api import Classifier
    from edgedx.backends import SessionOptions

    rows = []
    for batch in (1, 8):
        for graph in (True, False):
            with Classifier(engine, "tensorrt", batch_size=batch, workers=0, session_options=SessionOptions(cuda_graph=graph)) as clf:
                r = bench.bench_model(clf, batch_size=batch, iterations=300, warmup=20)
            rows.append({"batch": batch, "cuda_graph": graph, "graph_state": r.backend_detail.get("cuda_graph"),
                         "latency_ms": r.latency_ms, "throughput_ips": round(r.throughput_ips, 1),
                         "stages_ms": {k: round(v, 4) for k, v in r.stages_ms.items()}})
    return rows


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _step(report: dict[str, Any], name: str, fn: Any, *args: Any) -> Any:
    C.log(f"[gpu] {name} ...")
    started = time.perf_counter()
    try:
        value = fn(*args)
        report["steps"][name] = {"ok": True, "seconds": round(time.perf_counter() - started, 1)}
        return value
    except Exception as exc:  # noqa: BLE001 (recorded; the report goes on)
        report["steps"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=4)}
        C.log(f"[gpu] {name} failed: {exc}")
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for the report, the exports and the engines.")
    parser.add_argument("--images", type=Path, default=C.DEFAULT_IMAGES, help="Real scans in class folders (default: shared chest X-rays).")
    parser.add_argument("--scans", type=int, default=64, help="Scans for the numerics check.")
    parser.add_argument("--calib", type=int, default=64, help="Calibration scans for the INT8 export.")
    parser.add_argument("--builder", default="auto", choices=("auto", "tensorrt", "tensorrt-rtx"))
    parser.add_argument("--skip-tests", action="store_true", help="Do not run pytest -m gpu.")
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    report: dict[str, Any] = {"machine": C.machine_info(), "steps": {}}
    report["machine"]["versions"].update({d: _version(d) for d in TRT_DISTS})
    facts = report["cuda"] = device_facts()
    gpu = facts.get("device") is not None
    C.log(f"[gpu] CUDA device: {facts.get('device') or 'none (' + str(facts.get('reason')) + ')'}")
    if not args.skip_tests:
        report["gpu_tests"] = _step(report, "gpu_tests", run_gpu_tests, out)
    onnx = _step(report, "exports", make_exports, out, C.select_files(args.images, args.calib))
    if onnx:
        report["engines"] = _step(report, "build", build_engines, out, onnx, args.builder)
    engines = {p: Path(e["engine"]) for p, e in (report.get("engines") or {}).items() if "engine" in e}
    if not gpu:
        report["skipped"] = f"numerics and timings need a CUDA device: {facts.get('reason')}"
    else:
        scans = C.select_files(args.images, args.scans)
        report["numerics"] = {p: _step(report, f"numerics_{p}", numerics, e, onnx[p], onnx["fp32"], scans) for p, e in engines.items()}
        report["timings"] = {p: _step(report, f"timings_{p}", timings, e) for p, e in engines.items()}
    C.write_json(out / "gpu_report.json", report)
    failed = sorted(name for name, s in report["steps"].items() if not s["ok"])
    tests = report.get("gpu_tests") or {}
    print(f"device      {facts.get('device') or 'none: ' + str(facts.get('reason'))}")
    for p, e in (report.get("engines") or {}).items():
        print(f"engine      {p}: " + (f"{e['builder']} {e['version']} {e['mb']} MB in {e['seconds']} s for {', '.join(e['targets'])}" if "engine" in e else e["error"]))
    if tests:
        print(f"gpu tests   {tests.get('tests', '?')} run, {tests.get('failures', '?')} failed, {tests.get('errors', '?')} errors, {tests.get('skipped', '?')} skipped")
    print(f"report      {out / 'gpu_report.json'}" + (f"; failed steps: {', '.join(failed)}" if failed else ""))
    return 1 if gpu and (failed or tests.get("failures") or tests.get("errors")) else 0


if __name__ == "__main__":
    raise SystemExit(main())
