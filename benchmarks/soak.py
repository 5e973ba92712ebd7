"""Memory and errors over a long run: N files through one Classifier.classify_many in one process.

    python -m benchmarks.soak --files 10000 [--model P] [--images DIR] [--out DIR]

The real X-rays are cycled (each path used many times) and fed lazily, as a folder walk would, so
the input list itself does not grow. Resident memory is sampled every ``--sample-every`` results.
A leak shows as a positive slope after warm-up; a valid input that errors is a failure (exit 1).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common as C


def rss_mb() -> float:
    """Resident set size of this process in MiB (psutil, else /proc/self/status)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("cannot read resident memory: install psutil")


def open_files() -> int | None:
    try:
        return len(list(Path("/proc/self/fd").iterdir()))
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    from edgedx.errors import EdgedxError

    args = _parse(argv)
    try:
        return soak(args)
    except EdgedxError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2


def soak(args: argparse.Namespace) -> int:
    from edgedx.api import Classifier
    from edgedx.backends.base import cpu_count

    sources = C.select_files(args.images, 10**9)  # every file, sorted
    feed = itertools.islice(itertools.cycle(sources), args.files)
    samples: list[dict[str, Any]] = [{"files": 0, "rss_mb": rss_mb(), "seconds": 0.0, "fds": open_files()}]
    errors: list[str] = []
    C.log(f"soak: {args.files} files (cycling {len(sources)}), sampling every {args.sample_every}")
    t0 = time.perf_counter()
    with Classifier(args.model, "onnxruntime", batch_size=args.batch_size, workers=args.workers) as clf:
        samples.append(
            {
                "files": 0,
                "rss_mb": rss_mb(),
                "seconds": time.perf_counter() - t0,
                "fds": open_files(),
                "event": "model loaded",
            }
        )
        t_run = time.perf_counter()
        done = 0
        for done, result in enumerate(clf.classify_many(feed), 1):
            if result.status != "ok":
                errors.append(f"{result.path}: {result.error}")
            if done % args.sample_every == 0:
                samples.append(
                    {"files": done, "rss_mb": rss_mb(), "seconds": time.perf_counter() - t0, "fds": open_files()}
                )
                if done % (args.sample_every * 8) == 0:
                    C.log(f"  {done} files, RSS {samples[-1]['rss_mb']:.1f} MiB")
        elapsed = time.perf_counter() - t_run
        if samples[-1]["files"] != done:  # the end, measured while the Classifier is still open
            samples.append(
                {"files": done, "rss_mb": rss_mb(), "seconds": time.perf_counter() - t0, "fds": open_files()}
            )
        info = {
            "model": str(clf.model_path),
            "backend": clf.backend,
            "batch_size": clf.batch_size,
            "workers": clf.workers if args.workers is None else args.workers,
            "cores": cpu_count(),
        }
    out = {
        "machine": C.machine_info(),
        "config": {**info, "files": args.files, "distinct_files": len(sources)},
        "summary": summarize(samples, args.warmup_files, done, elapsed, errors),
        "samples": samples,
        "errors": errors[:20],
    }
    C.write_json(args.out / "soak.json", out)
    print(render(out))
    C.log(f"wrote {args.out / 'soak.json'}")
    return 1 if errors or done != args.files else 0


def summarize(
    samples: list[dict[str, Any]], warmup_files: int, done: int, elapsed: float, errors: list[str]
) -> dict[str, Any]:
    """Start, after warm-up, max and end RSS; the least-squares slope after warm-up, in MiB per 1000 files."""
    after = [s for s in samples if s["files"] >= warmup_files and s["files"] > 0]
    warm = after[0] if after else samples[-1]
    slope = None
    if len(after) >= 3:
        x = np.array([s["files"] for s in after], float)
        y = np.array([s["rss_mb"] for s in after], float)
        slope = float(np.polyfit(x, y, 1)[0] * 1000)
    fds = [s["fds"] for s in samples if s.get("fds") is not None]
    return {
        "files_done": done,
        "errors": len(errors),
        "images_per_s": done / elapsed if elapsed else None,
        "rss_start_mb": samples[0]["rss_mb"],
        "rss_model_loaded_mb": samples[1]["rss_mb"],
        "rss_after_warmup_mb": warm["rss_mb"],
        "warmup_files": warm["files"],
        "rss_max_mb": max(s["rss_mb"] for s in samples),
        "rss_end_mb": samples[-1]["rss_mb"],
        "growth_after_warmup_mb": samples[-1]["rss_mb"] - warm["rss_mb"],
        "slope_mb_per_1000_files": slope,
        "open_fds_start_end": [fds[0], fds[-1]] if fds else None,
    }


def render(out: dict[str, Any]) -> str:
    s = out["summary"]
    rows = [[k, v] for k, v in s.items()]
    step = max(1, len(out["samples"]) // 12)
    trace = [[x["files"], x["rss_mb"], x["seconds"], x.get("fds")] for x in out["samples"][::step]]
    return (
        f"## soak: {s['files_done']} files through one Classifier ({out['config']['backend']}, batch "
        f"{out['config']['batch_size']}, {out['config']['workers']} workers)\n\n"
        + C.md_table(["measure", "value"], rows)
        + "\n\n"
        + C.md_table(["files", "RSS MiB", "seconds", "open fds"], trace)
        + "".join(f"\nerror: {e}" for e in out["errors"])
    )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=10000, help="results to produce (paths are cycled)")
    p.add_argument("--model", type=Path, default=None, help="ONNX model (default: the bundled one)")
    p.add_argument("--images", type=Path, default=C.DEFAULT_IMAGES)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: the usable cores)")
    p.add_argument("--sample-every", type=int, default=250, help="files between RSS samples")
    p.add_argument(
        "--warmup-files", type=int, default=None, help="files before the slope is fitted (default: 10%%, at least 500)"
    )
    p.add_argument("--out", type=Path, default=C.DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.files < 1 or args.sample_every < 1:
        p.error("--files and --sample-every must be >= 1")
    if args.warmup_files is None:
        args.warmup_files = min(max(500, args.files // 10), args.files // 2)
    return args


if __name__ == "__main__":
    sys.exit(main())
