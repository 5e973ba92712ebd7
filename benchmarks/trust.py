"""What abstention and heatmaps cost: the bundled model with and without its extra graph outputs.

    python -m benchmarks.trust [--files 256] [--reps 3] [--backends onnxruntime,openvino]

Side by side in one run, interleaved (every repetition times each row once, in turn), on the same
real X-rays:

- **model only, batch 1**, per backend and bundled precision: the graph's logits alone; logits and
  the pooled ``features`` (the out-of-distribution score's input); logits, features and the
  class-activation map ``cam``. The extra outputs are computed by the graph either way (they hang
  off layers the logits need), so what differs is fetching them and, for the CAM, one 1x1
  convolution over the last 7x7 feature map.
- **per-image Python work**: the OOD feature score (:class:`edgedx.ood.Scorer`), the image-layout
  score (:func:`edgedx.ood.layout` and its scorer) and one heatmap PNG (overlay and write).
- **end to end** (``Classifier.classify_many`` over the files, ONNX Runtime, the default INT8): the
  gate off, the gate on (colour from pixels, layout and feature OOD scores), the gate on with
  heatmaps written.

Prints a table and writes ``results/trust.json``. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common as C
from edgedx import Classifier, bundled, decode, heatmap, ood, preprocess
from edgedx.backends import SessionOptions, open_session
from edgedx.manifest import load as load_manifest

MODELS = {"int8": bundled.MODELS_DIR / bundled.DEFAULT_CPU, "fp32": bundled.MODELS_DIR / bundled.DEFAULT_FP32}


def _model_rows(backend: str, precision: str, path: Path, batches: list[np.ndarray], threads: int) -> list[tuple[str, Any, Any]]:
    """(row name, zero-argument timed function, its session) per output set; the caller closes the sessions."""
    m = load_manifest(path)
    sets = {"logits": (), "logits+features": (m.features_output,), "logits+features+cam": (m.features_output, m.cam_output)}
    rows = []
    for name, extra in sets.items():
        session = open_session(path, backend, SessionOptions(threads=threads or None))
        if extra and not session.supports_extra_outputs:
            session.close()
            continue
        session.request_outputs(tuple(extra))
        it = iter(range(1 << 62))

        def run(session=session, it=it) -> None:
            session.run(batches[next(it) % len(batches)])

        rows.append((f"{backend} {precision} {name}", run, session))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=C.DEFAULT_IMAGES)
    ap.add_argument("--files", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions of every row")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per model-only timing")
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--threads", type=int, default=0, help="inference threads (0: the backend's default)")
    ap.add_argument("--out", type=Path, default=C.DEFAULT_OUT)
    args = ap.parse_args(argv)

    files = [str(f) for f in C.select_files(args.images, args.files)]
    spec = load_manifest(MODELS["int8"]).preprocess
    images = [decode.decode_file(f)[0].image for f in files]
    samples = [preprocess.resize(im, spec) for im in images]
    batches = [preprocess.apply(im, spec)[None] for im in images[:64]]

    rows: list[tuple[str, Any, Any]] = []
    for backend in args.backends.split(","):
        for precision, path in MODELS.items():
            try:
                rows += _model_rows(backend, precision, path, batches, args.threads)
            except Exception as exc:  # a backend missing here: say so and go on with the others
                C.log(f"skipping {backend} {precision}: {type(exc).__name__}: {exc}")

    m = load_manifest(MODELS["int8"])
    feats_scorer = ood.Scorer(m.ood)
    layout_scorer = ood.layout_scorer(m.ood)
    with open_session(MODELS["int8"], "onnxruntime", SessionOptions()) as s:
        raw, extras = s.run_with(preprocess.apply_batch(images[:64], spec), (m.features_output, m.cam_output))
    feats, cams = extras[m.features_output], extras[m.cam_output]
    tmp = Path(tempfile.mkdtemp(prefix="edgedx-trust-bench-"))
    it = iter(range(1 << 62))
    py_rows = {
        "feature OOD score (per image)": lambda: feats_scorer.score(feats[next(it) % len(feats)]),
        "layout OOD score (per image)": lambda: layout_scorer.score(ood.layout(samples[next(it) % len(samples)], layout_scorer.size))
        if layout_scorer else None,
        "heatmap PNG: overlay + write (per image)": lambda: heatmap.write(
            tmp, f"h{next(it) % 8}.png", heatmap.overlay(samples[0], heatmap.decision_map(cams[0], m.positive_index, 1))),
    }

    def e2e(gate: bool, maps: bool) -> float:
        with Classifier(MODELS["int8"], "onnxruntime", use_gate=gate, heatmap=str(tmp / "maps") if maps else None) as clf:
            t = time.perf_counter()
            n = sum(1 for _ in clf.classify_many(files))
            return n / (time.perf_counter() - t)

    e2e_rows = {"classify, gate off": (False, False), "classify, gate on (colour, layout, features)": (True, False),
                "classify, gate on + --heatmap": (True, True)}

    info = C.machine_info()
    C.log(f"{len(files)} files, {len(rows)} model rows, {args.reps} interleaved repetitions; load {info.get('load_average_at_start')}")
    model_ms: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    py_us: dict[str, list[float]] = {name: [] for name in py_rows}
    e2e_ips: dict[str, list[float]] = {name: [] for name in e2e_rows}
    for rep in range(args.reps):
        for name, fn, _ in rows:
            model_ms[name].append(1e3 * statistics.median(C.time_loop(fn, duration_s=args.duration, warmup=20)))
        for name, fn in py_rows.items():
            py_us[name].append(1e6 * statistics.median(C.time_loop(fn, duration_s=0.5, warmup=5)))
        for name, (gate, maps) in e2e_rows.items():
            e2e_ips[name].append(e2e(gate, maps))
        C.log(f"repetition {rep + 1}/{args.reps} done")
    for _, _, session in rows:
        session.close()

    out = {
        "machine": info,
        "files": len(files),
        "reps": args.reps,
        "model_only_batch1_p50_ms": {k: [round(v, 4) for v in vs] for k, vs in model_ms.items()},
        "python_per_image_us": {k: [round(v, 1) for v in vs] for k, vs in py_us.items()},
        "end_to_end_images_per_s": {k: [round(v, 1) for v in vs] for k, vs in e2e_ips.items()},
    }
    C.write_json(args.out / "trust.json", out)
    print("| row | per repetition | median |\n|---|---|---|")
    for section, unit in (("model_only_batch1_p50_ms", "ms"), ("python_per_image_us", "µs"), ("end_to_end_images_per_s", "img/s")):
        for name, vs in out[section].items():
            print(f"| {name} ({unit}) | {' / '.join(str(v) for v in vs)} | {statistics.median(vs):.4g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
