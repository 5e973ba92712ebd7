"""Archive scale: plain ``edgedx classify`` against the Ray path with 1 and 2 workers, in one run.

    python -m benchmarks.scale [--files 2000] [--workers 1 2] [--quick]

All rows classify the same real X-rays with the bundled model and must give the same records (the
script checks, and fails if not). Rows:

* ``classify``: one :class:`edgedx.api.Classifier` with its defaults (decode threads and ONNX
  Runtime threads over the usable cores), as ``edgedx classify --files-from`` runs it.
* ``ray, N workers``: :func:`edgedx.ray.classify` on an in-process Ray cluster of the usable cores,
  N actors of one CPU each (one decode thread and one inference thread per actor).

Timed per row: from the first input handed over to the last record received; model loading (and,
for Ray, the actors' start-up) is inside it, so ``img/s`` is what a user waits for; ``first record s`` shows how much of it is start-up
(Ray hands records over a block at a time, so a rate "after the first record" would mislead).
Ray's own start-up (``ray.init``) is reported apart, once.
Prints a markdown table and writes ``results/scale.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as C
from edgedx.backends.base import cpu_count


def _timed(results) -> tuple[list[dict[str, Any]], float, float]:
    """(records, seconds to the last record, seconds to the first) from a result iterator."""
    t0 = time.perf_counter()
    first = None
    records = []
    for r in results:
        if first is None:
            first = time.perf_counter() - t0
        records.append(r.to_dict())
    return records, time.perf_counter() - t0, first or 0.0


def _row(name: str, cpus: str, records: list, total: float, first: float) -> dict[str, Any]:
    n = len(records)
    return {
        "row": name,
        "cpus": cpus,
        "records": n,
        "seconds": round(total, 2),
        "first_record_s": round(first, 2),
        "img_per_s": round(n / total, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--images", type=Path, default=C.DEFAULT_IMAGES)
    ap.add_argument("--quick", action="store_true", help="200 files: checks the script, not the machine")
    ap.add_argument("--out", type=Path, default=C.DEFAULT_OUT)
    args = ap.parse_args()
    files = C.select_files(args.images, 200 if args.quick else args.files)
    cores = cpu_count()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    machine = C.machine_info()

    from edgedx.api import Classifier

    rows = []
    C.log(f"classify: {len(files)} files")
    t0 = time.perf_counter()
    with Classifier() as clf:
        model = str(clf.model_path)
        records, total, first = _timed(clf.classify_many(files))
    reference = records
    rows.append(_row("edgedx classify", f"{cores} (threads)", records, time.perf_counter() - t0, first))

    import ray

    from edgedx.ray import RayOptions, actor_settings, classify
    from edgedx.backends import SessionOptions

    t = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    startup = time.perf_counter() - t
    C.log(f"ray.init: {startup:.2f} s")
    try:
        for n in args.workers:
            options = RayOptions(workers=n, num_cpus=1.0, batch_size=32)
            settings = {"model": model, **actor_settings(options, SessionOptions(), None)}
            C.log(f"ray, {n} worker(s)")
            records, total, first = _timed(classify(files, settings, options))
            if records != reference:
                raise SystemExit(f"ray with {n} workers gave different records from edgedx classify")
            rows.append(_row(f"ray, {n} worker{'s' * (n > 1)}", f"{n} x 1", records, total, first))
    finally:
        ray.shutdown()
    header = ["row", "CPUs", "records", "s", "first record s", "img/s"]
    table = C.md_table(header, [[r["row"], r["cpus"], r["records"], r["seconds"], r["first_record_s"], r["img_per_s"]] for r in rows])
    print(table)
    print(f"\nLoad average at start: {machine.get('load_average_at_start')}. Ray start-up (ray.init, in-process cluster of {cores} CPUs): {startup:.2f} s, not in the rows.")
    args.out.mkdir(parents=True, exist_ok=True)
    C.write_json(args.out / "scale.json", {"machine": machine, "files": len(files), "ray_init_s": round(startup, 2), "rows": rows})


if __name__ == "__main__":
    main()
