"""edgedx against the ways people run the same model, side by side, in one run.

    python -m benchmarks.run [--model-fp32 P] [--model-int8 P] [--images DIR] [--quick] [--out DIR]

Rows (each on the same model file, the same real images and, for ONNX Runtime, the same threads):

- ``edgedx`` model-only at batch 1 and 8 (``edgedx.bench.bench_model``: ``session.run`` on a
  preprocessed batch; decode/preprocess/postprocess excluded) and end to end over the files
  (``edgedx.bench.bench_files``: decode + preprocess + inference + postprocess; session start-up
  and one warm-up batch excluded).
- ``onnxruntime`` bare: an ``InferenceSession`` with edgedx's options, timed like edgedx model-only.
  edgedx model-only divided by this is edgedx's own overhead.
- ``serial-loop`` end to end: cv2.imread + cv2.resize + numpy normalize, batches of 8, bare ORT run,
  softmax; one thread of Python, no overlap. The plain script edgedx should beat.
- ``openvino`` model-only: ``compile_model(model, "CPU")`` with its default config (it picks the
  inference precision itself: we record what it reports and what its convolutions ran in).
- ``torch`` eager on the training definition (export.models.ScreeningCNN), model-only under
  ``inference_mode`` and end to end with PIL decode + numpy normalize, as the tutorials do.

Foreign thread pools (OpenVINO's TBB, torch's OpenMP) run last so they cannot disturb ORT rows.
Timing on a loaded machine is meaningless: the JSON records the load average at start.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks import _common as C
from benchmarks import _openvino as OV
from benchmarks import _report as R
from edgedx.backends.base import cpu_count
from edgedx.bench import BenchResult, bench_files, bench_model, first_image, summarize_ms

BUNDLED = C.ROOT / "edgedx" / "models"


@dataclass(frozen=True)
class Config:
    files: list[Path]
    threads: int
    duration_s: float
    warmup: int
    batches: tuple[int, ...]
    e2e_batch: int
    e2e_files: list[Path]
    e2e_reps: int = 1


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    files = C.select_files(args.images, args.files or (64 if args.quick else 256))
    cfg = Config(
        files=files,
        threads=args.threads or cpu_count(),
        duration_s=args.duration or (0.5 if args.quick else 3.0),
        warmup=3 if args.quick else 10,
        batches=tuple(int(b) for b in args.batch_sizes.split(",")),
        e2e_batch=args.e2e_batch,
        e2e_files=files if args.e2e_files is None else C.select_files(args.images, args.e2e_files),
        e2e_reps=args.e2e_reps,
    )
    models = {p: m for p, m in (("fp32", args.model_fp32), ("int8", args.model_int8)) if m is not None}
    notes = [f"{p}: {m} not found, rows skipped" for p, m in models.items() if not m.is_file()]
    models = {p: m for p, m in models.items() if m.is_file()}
    if not models:
        print("no model to benchmark: " + "; ".join(notes) + " (pass --model-fp32/--model-int8)", file=sys.stderr)
        return 2
    C.log(
        f"{len(files)} files, {cfg.threads} threads, {cfg.duration_s:g} s per row; models: {', '.join(map(str, models.values()))}"
    )
    out: dict[str, Any] = {"machine": C.machine_info(), "notes": notes, "rows": []}
    out["config"] = {**asdict(cfg), "files": len(files), "e2e_files": len(cfg.e2e_files), "images": str(args.images), "quick": args.quick}
    C.log("measuring matrix-multiply peaks")
    peaks_start = C.matmul_peaks(cfg.threads, repeats=2 if args.quick else 5)
    out["models"] = {p: {"path": str(m), **C.count_flops(m), "norm": C.read_norm(m)} for p, m in models.items()}
    rows: list[dict[str, Any]] = out["rows"]
    pre_s = decode_preprocess_single_core(files, next(iter(models.values())))
    for prec, path in models.items():
        norm = out["models"][prec]["norm"]
        batch1 = plain_batch(files[0], norm, 1)
        for b in cfg.batches:  # edgedx and bare ORT back to back, so drift hits both alike
            rows.append(edgedx_model(path, b, cfg))
            rows.append(ort_model(path, prec, b, cfg, np.repeat(batch1, b, 0)))
        for rep in range(cfg.e2e_reps):  # interleaved, alternating which goes first, so drift hits both alike
            pair = [lambda: edgedx_e2e(path, cfg), lambda: serial_e2e(path, prec, cfg, norm)]
            for run_row in pair[:: 1 if rep % 2 == 0 else -1]:
                rows.append({**run_row(), "rep": rep})
    out["openvino_agreement"] = {}
    for prec, path in models.items():
        rows.extend(OV.rows(path, prec, cfg, plain_batch(files[0], out["models"][prec]["norm"], 1), _row, _model_result, _skipped))
        out["openvino_agreement"][prec] = OV.agreement(path, files, cfg.threads)
    norm = out["models"].get("fp32", next(iter(out["models"].values())))["norm"]
    rows.extend(torch_rows(args.torch_state, cfg, norm))
    C.log("measuring matrix-multiply peaks again (the best of start and end is kept)")
    out["peaks"] = C.best_peaks(peaks_start, C.matmul_peaks(cfg.threads, repeats=2 if args.quick else 5))
    for r in rows:
        R.add_flops(r, out["models"], out["peaks"])
    if any((r.get("pct_of_peak") or 0) > 100 for r in rows):
        out["notes"].append(
            "a row exceeds 100% of the measured peak: the peak was under-measured (other load), "
            "or the runtime computes in lower precision or with fewer operations (Winograd)"
        )
    out["floor"] = R.floor(rows, pre_s, cfg.threads, cfg.e2e_batch)
    out["checks"] = R.checks(rows, out["floor"], cfg.e2e_batch)
    C.write_json(args.out / "latest.json", out)
    print(R.render(out))
    C.log(f"wrote {args.out / 'latest.json'}")
    try:
        from benchmarks import _plot

        _plot.draw(out, args.out / "latest.png")
        C.log(f"wrote {args.out / 'latest.png'}")
    except ImportError as exc:
        C.log(f"no plot: {exc.name} is not installed (pip install matplotlib)")
    return 1 if args.strict and not all(c["pass"] for c in out["checks"]) else 0


# -- edgedx rows ---------------------------------------------------------------------------------


def _classifier(path: Path, batch: int, cfg: Config, workers: int | None = None):
    """As ``edgedx bench`` builds it: model-only rows run no decode workers (``workers=0``)."""
    from edgedx.api import Classifier
    from edgedx.backends import SessionOptions

    return Classifier(path, "onnxruntime", batch_size=batch, workers=workers, session_options=SessionOptions(threads=cfg.threads))


def edgedx_model(path: Path, batch: int, cfg: Config) -> dict[str, Any]:
    """Includes: Session.run (input check, ORT run, float32 output). Excludes: decode, preprocess, postprocess."""
    C.log(f"edgedx model-only b{batch} {path.name}")
    with _classifier(path, batch, cfg, workers=0) as clf:
        image = first_image(cfg.files)
        r = bench_model(
            clf, batch_size=batch, iterations=None, warmup=cfg.warmup, duration_s=cfg.duration_s, image=image
        )
    return _row("edgedx", r)


def edgedx_e2e(path: Path, cfg: Config) -> dict[str, Any]:
    """Includes: read, decode, preprocess (worker threads), inference, postprocess. Excludes: start-up, one warm-up batch."""
    C.log(f"edgedx end-to-end b{cfg.e2e_batch} {path.name} ({len(cfg.e2e_files)} files)")
    with _classifier(path, cfg.e2e_batch, cfg) as clf:
        r = bench_files(clf, cfg.e2e_files)
        r.backend_detail["workers"] = clf.workers
    return _row("edgedx", r)


def decode_preprocess_single_core(files: list[Path], model: Path) -> float:
    """Seconds per image of edgedx decode + preprocess in one thread (files already in the page cache)."""
    from edgedx import decode, manifest, preprocess

    spec = manifest.load(model).preprocess
    out = spec.buffer(1)[0]
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one core: OpenCV's own pool would otherwise spread a resize over all
    try:
        for f in files[:8]:
            preprocess.apply(decode.decode_file(f)[0].image, spec, out)
        t = time.perf_counter()
        for f in files:
            preprocess.apply(decode.decode_file(f)[0].image, spec, out)
        return (time.perf_counter() - t) / len(files)
    finally:
        cv2.setNumThreads(threads)


# -- bare ONNX Runtime and the serial loop ---------------------------------------------------------


def plain_batch(path: Path, norm: dict[str, Any], batch: int) -> np.ndarray:
    """cv2 gray decode + resize + numpy normalize: the plain script's preprocessing (no edgedx)."""
    img = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (norm["width"], norm["height"]))
    x = (img.astype(np.float32) * norm["scale"] - norm["mean"]) / norm["std"]
    return np.repeat(x[None, None], batch, 0)


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), C.ort_options(threads), providers=["CPUExecutionProvider"])


def ort_model(path: Path, prec: str, batch: int, cfg: Config, x: np.ndarray) -> dict[str, Any]:
    """Includes: InferenceSession.run alone, same options and threads as edgedx. Excludes: everything else."""
    C.log(f"onnxruntime model-only b{batch} {path.name}")
    sess = _ort_session(path, cfg.threads)
    feed, names = {sess.get_inputs()[0].name: x}, [sess.get_outputs()[0].name]
    samples = C.time_loop(lambda: sess.run(names, feed), duration_s=cfg.duration_s, warmup=cfg.warmup)
    return _row("onnxruntime", _model_result(path, "onnxruntime", prec, batch, samples, {"threads": cfg.threads}))


def serial_e2e(path: Path, prec: str, cfg: Config, norm: dict[str, Any]) -> dict[str, Any]:
    """Includes: cv2.imread (gray), cv2.resize, numpy normalize, np.stack, ORT run, softmax, one thread of
    Python. Excludes: session start-up and one warm-up batch (as edgedx end-to-end)."""
    C.log(f"serial loop end-to-end b{cfg.e2e_batch} {path.name} ({len(cfg.e2e_files)} files)")
    sess = _ort_session(path, cfg.threads)
    name, outs = sess.get_inputs()[0].name, [sess.get_outputs()[0].name]
    size, scale, mean, std = (norm["width"], norm["height"]), norm["scale"], norm["mean"], norm["std"]

    def run_batch(chunk: list[Path]) -> np.ndarray:
        xs = []
        for f in chunk:
            img = cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), size)
            xs.append((img.astype(np.float32) * scale - mean) / std)
        logits = sess.run(outs, {name: np.stack(xs)[:, None]})[0]
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return _row("serial-loop", _e2e(path, "onnxruntime", prec, cfg, run_batch, {"threads": cfg.threads}))


def _e2e(
    path: Path, backend: str, prec: str, cfg: Config, run_batch: Callable[[list[Path]], Any], detail: dict
) -> BenchResult:
    """Time ``run_batch`` over the files in batches, like edgedx.bench.bench_files: per-batch latency, total throughput."""
    b, files = cfg.e2e_batch, cfg.e2e_files
    run_batch(files[:b])
    per_batch = []
    t_start = time.perf_counter()
    for i in range(0, len(files), b):
        t = time.perf_counter()
        run_batch(files[i : i + b])
        per_batch.append(time.perf_counter() - t)
    total = time.perf_counter() - t_start
    return BenchResult(
        str(path),
        backend,
        prec,
        b,
        len(per_batch),
        summarize_ms(per_batch),
        len(files) / total,
        {},
        mode="end-to-end",
        backend_detail=detail,
        images=len(files),
    )


def _model_result(path: Path, backend: str, prec: str, batch: int, samples: list[float], detail: dict) -> BenchResult:
    return BenchResult(
        str(path),
        backend,
        prec,
        batch,
        len(samples),
        summarize_ms(samples),
        batch * len(samples) / sum(samples),
        {},
        mode="model",
        backend_detail=detail,
    )


# -- OpenVINO and PyTorch --------------------------------------------------------------------------


def torch_rows(state: Path | None, cfg: Config, norm: dict[str, Any]) -> list[dict[str, Any]]:
    """PyTorch eager, FP32, on the training definition. Model-only includes: model(x) under inference_mode.
    End to end includes: PIL open/convert/resize (BILINEAR), numpy normalize, stack, model, softmax."""
    try:
        import torch
        from PIL import Image

        from export.models import ScreeningCNN
    except ImportError as exc:
        return [_skipped("torch", "fp32", b, f"{exc.name} not installed") for b in (*cfg.batches, cfg.e2e_batch)]
    torch.set_num_threads(cfg.threads)
    model, note = ScreeningCNN(1, 2).eval(), "random init (timing does not depend on weights)"
    if state is not None and state.is_file():
        try:
            model.load_state_dict(torch.load(state, weights_only=True, map_location="cpu"))
            note = f"weights from {state}"
        except (RuntimeError, KeyError) as exc:
            note = f"random init: {state} does not fit ScreeningCNN(1, 2) ({str(exc).splitlines()[0]})"
    detail = {"torch": torch.__version__, "threads": torch.get_num_threads(), "weights": note}
    rows = []
    x1 = torch.from_numpy(plain_batch(cfg.files[0], norm, 1))
    with torch.inference_mode():
        for b in cfg.batches:
            C.log(f"torch model-only b{b}")
            x = x1.repeat(b, 1, 1, 1)
            samples = C.time_loop(lambda x=x: model(x), duration_s=cfg.duration_s, warmup=cfg.warmup)
            rows.append(
                _row(
                    "torch",
                    _model_result(Path("export.models.ScreeningCNN"), "torch-eager", "fp32", b, samples, detail),
                )
            )
        size, scale, mean, std = (norm["width"], norm["height"]), norm["scale"], norm["mean"], norm["std"]

        def run_batch(chunk: list[Path]) -> Any:
            xs = []
            for f in chunk:
                img = Image.open(f).convert("L").resize(size, Image.BILINEAR)
                xs.append((np.asarray(img, np.float32) * scale - mean) / std)
            return torch.softmax(model(torch.from_numpy(np.stack(xs)[:, None])), 1)

        C.log(f"torch end-to-end b{cfg.e2e_batch}")
        r = _e2e(Path("export.models.ScreeningCNN"), "torch-eager", "fp32", cfg, run_batch, detail)
        rows.append(_row("torch", r))
    return rows


# -- row records -----------------------------------------------------------------------------------


def _row(runtime: str, r: BenchResult) -> dict[str, Any]:
    d = r.to_dict()
    d["runtime"] = runtime
    d["row"] = f"{runtime} {r.precision} {'model' if r.mode == 'model' else 'e2e'} b{r.batch_size}"
    return d


def _skipped(runtime: str, prec: str, batch: int, why: str) -> dict[str, Any]:
    C.log(f"skipped {runtime} {prec} b{batch}: {why}")
    return {
        "row": f"{runtime} {prec} b{batch}",
        "runtime": runtime,
        "precision": prec,
        "batch_size": batch,
        "skipped": why,
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--model-fp32", type=Path, default=BUNDLED / "chest_xray_cnn_fp32.onnx")
    p.add_argument("--model-int8", type=Path, default=BUNDLED / "chest_xray_cnn_int8.onnx")
    p.add_argument(
        "--images",
        type=Path,
        default=C.DEFAULT_IMAGES,
        help="folder of real images (default: the chest X-ray train set)",
    )
    p.add_argument("--files", type=int, default=None, help="files for end-to-end rows (default 256, --quick 64)")
    p.add_argument("--duration", type=float, default=None, help="seconds per model-only row (default 3, --quick 0.5)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: usable cores)")
    p.add_argument("--batch-sizes", default="1,8", help="model-only batch sizes")
    p.add_argument("--e2e-batch", type=int, default=8)
    p.add_argument("--e2e-files", type=int, default=None, help="files for end-to-end rows (default: --files; 0: every file)")
    p.add_argument("--e2e-reps", type=int, default=1, help="interleaved edgedx / serial-loop end-to-end pairs per model")
    p.add_argument("--torch-state", type=Path, default=C.ROOT / "runs" / "default" / "model.pt")
    p.add_argument("--quick", action="store_true", help="short rows, fewer files: checks the script, not the machine")
    p.add_argument("--strict", action="store_true", help="exit 1 when a goal check fails")
    p.add_argument("--out", type=Path, default=C.DEFAULT_OUT)
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
