"""Decode/preprocess workers: threads against processes, the choice behind ``classify_many``.

    python -m benchmarks.workers [--files 512] [--model P]

Times the same work (edgedx decode + preprocess of real X-rays into the model's input) three ways:
in the calling thread, in a thread pool and in a process pool (which must pickle every
preprocessed image back), first alone and then feeding ONNX Runtime batches of 8 in the main
process, as ``classify_many`` does. Prints a table and writes ``results/workers.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks import _common as C
from edgedx import bundled, decode, manifest, preprocess
from edgedx.backends import SessionOptions, open_session
from edgedx.backends.base import cpu_count

_SPEC = None


def _init(model: str) -> None:
    global _SPEC
    _SPEC = manifest.load(model).preprocess


def _load(path: str) -> np.ndarray:
    """Includes: read, sniff, decode at the model's size, preprocess. Same in every mode."""
    options = decode.DecodeOptions(target_size=(_SPEC.width, _SPEC.height), target_channels=_SPEC.channels)
    return preprocess.apply(decode.decode_file(path, options)[0].image, _SPEC)


def _run(files: list[str], pool: Executor | None, session, batch: int = 8) -> float:
    """Images per second: load all files (in ``pool`` when given), and run batches when ``session``."""
    t = time.perf_counter()
    window = 2 * cpu_count() + batch
    it = iter(files)
    pending: list = []
    buf: list[np.ndarray] = []

    def consume(x: np.ndarray) -> None:
        buf.append(x)
        if session is not None and len(buf) == batch:
            session.run(np.stack(buf))
            buf.clear()
        elif session is None:
            buf.clear()

    for f in it:
        if pool is None:
            consume(_load(f))
            continue
        pending.append(pool.submit(_load, f))
        if len(pending) >= window:
            consume(pending.pop(0).result())
    for p in pending:
        consume(p.result())
    if session is not None and buf:
        session.run(np.stack(buf))
    return len(files) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=512)
    ap.add_argument("--model", type=Path, default=bundled.default_model())
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    files = [str(f) for f in C.select_files(C.DEFAULT_IMAGES, args.files)]
    _init(str(args.model))
    workers = cpu_count()
    rows = []
    pools = {
        "inline": lambda: None,
        "threads": lambda: ThreadPoolExecutor(workers),
        "processes": lambda: ProcessPoolExecutor(workers, initializer=_init, initargs=(str(args.model),)),
    }
    for with_model in (False, True):
        for name, make in pools.items():
            pool = make()
            spin = name == "inline"
            with open_session(args.model, "onnxruntime", SessionOptions(spin_wait=spin)) as session:
                s = session if with_model else None
                _run(files[:32], pool, s)  # warm-up: pool start, page cache
                best = max(_run(files, pool, s) for _ in range(3))
            if pool is not None:
                pool.shutdown()
            rows.append({"mode": "decode+preprocess+inference b8" if with_model else "decode+preprocess", "workers": name,
                         "images_per_s": round(best, 1)})
            C.log(f"{rows[-1]}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "workers.json").write_text(json.dumps({"machine": C.machine_info(), "files": len(files), "rows": rows}, indent=2))
    print("| work | workers | images/s |\n|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['workers']} | {r['images_per_s']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
