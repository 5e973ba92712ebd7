"""Served on Triton against local ``edgedx classify``: the same scans, the same model, one run.

    python -m benchmarks.triton [--files 128] [--concurrency 1 4 8] [--serving-python P] [--quick]

Starts a real ``tritonserver`` (nvidia-pytriton, Python backend) on loopback with the repository
``edgedx export triton --backend python`` writes for the model, then times:

- ``local classify_many b8``: :meth:`Classifier.classify_many` over the files, as ``edgedx classify``
  runs (decode workers, batches of 8): images/s; latency is per batch;
- ``local classify b1``: one :meth:`Classifier.classify` per file: latency per file;
- ``triton http cN``: N client threads, each sending one file per request (its bytes) and waiting
  for the record: requests/s and latency per request, plus Triton's own statistics for the
  ensemble and each step (queue and compute time per request, from ``/v2/models/stats``);
- ``triton grpc cN`` for the largest N;
- ``classify --triton b8 c4``: the client ``edgedx classify --triton`` uses (batches of 8 files per
  request, 4 in flight).

The client, the server and the local rows share this machine's cores: the numbers compare the
paths on one box; they are not a server's capacity. Prints a markdown table; writes
``results/triton.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common as C

ROOT = C.ROOT


def _pct(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1e3
    return {k: round(float(np.percentile(ms, q)), 2) for k, q in (("p50", 50), ("p90", 90), ("p99", 99))}


def local_rows(model: Path, files: list[Path]) -> list[dict[str, Any]]:
    from edgedx.api import Classifier

    rows = []
    with Classifier(model, batch_size=8) as clf:
        list(clf.classify_many(files[:16]))  # warm-up
        marks, t0 = [], time.perf_counter()
        for i, _ in enumerate(clf.classify_many(files)):
            if i % 8 == 7:
                marks.append(time.perf_counter())
        wall = time.perf_counter() - t0
        gaps = np.diff([t0, *marks]).tolist()
        rows.append({"row": "local classify_many b8", "images": len(files), "per_s": round(len(files) / wall, 1), "latency_ms": _pct(gaps), "latency_of": "batch of 8"})
        lat = []
        t0 = time.perf_counter()
        for f in files:
            t = time.perf_counter()
            clf.classify(f)
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
        rows.append({"row": "local classify b1", "images": len(files), "per_s": round(len(files) / wall, 1), "latency_ms": _pct(lat), "latency_of": "file"})
    return rows


def _stats(address: str) -> dict[str, dict[str, float]]:
    """Cumulative (count, queue ns, compute ns) per model from Triton's statistics."""
    from tritonclient import http

    client = http.InferenceServerClient(address)
    try:
        out = {}
        for m in client.get_inference_statistics()["model_stats"]:
            s = m["inference_stats"]
            out[m["name"]] = {"count": int(s["success"]["count"]), "queue_ns": int(s["queue"]["ns"]),
                              "compute_ns": int(s["compute_input"]["ns"]) + int(s["compute_infer"]["ns"]) + int(s["compute_output"]["ns"]),
                              "batches": int(m.get("execution_count", 0))}
        return out
    finally:
        client.close()


def _stats_delta(before: dict, after: dict) -> dict[str, dict[str, float]]:
    out = {}
    for name, a in after.items():
        b = before.get(name, {"count": 0, "queue_ns": 0, "compute_ns": 0, "batches": 0})
        n = a["count"] - b["count"]
        if n > 0:
            batches = a["batches"] - b["batches"]
            out[name] = {"requests": n, "queue_ms": round((a["queue_ns"] - b["queue_ns"]) / n / 1e6, 3),
                         "compute_ms": round((a["compute_ns"] - b["compute_ns"]) / n / 1e6, 3),
                         "avg_batch": round(n / batches, 2) if batches else None}
    return out


def triton_row(srv: Any, protocol: str, concurrency: int, payloads: list[bytes], passes: int) -> dict[str, Any]:
    """``concurrency`` threads, one file per request, each thread with its own client."""
    module = __import__(f"tritonclient.{protocol}", fromlist=["x"])
    address = (srv.http_url if protocol == "http" else srv.grpc_url).split("://")[1]
    work = [p for _ in range(passes) for p in payloads]
    latencies: list[float] = []
    lock = threading.Lock()
    errors = []

    def client_loop(share: list[bytes]) -> None:
        client = module.InferenceServerClient(address)
        mine = []
        try:
            for data in share:
                inp = module.InferInput("IMAGE", [1, 1], "BYTES")
                inp.set_data_from_numpy(np.array([[data]], dtype=np.object_))
                t = time.perf_counter()
                result = client.infer("edgedx", [inp], outputs=[module.InferRequestedOutput("RECORD")])
                mine.append(time.perf_counter() - t)
                json.loads(result.as_numpy("RECORD")[0][0])
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            client.close()
            with lock:
                latencies.extend(mine)

    before = _stats(srv.http_url.split("://")[1])
    threads = [threading.Thread(target=client_loop, args=(work[i::concurrency],)) for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    delta = _stats_delta(before, _stats(srv.http_url.split("://")[1]))
    row = {"row": f"triton {protocol} c{concurrency}", "images": len(latencies), "per_s": round(len(latencies) / wall, 1),
           "latency_ms": _pct(latencies), "latency_of": "request (1 file)", "triton": delta}
    if errors:
        row["errors"] = errors[:3]
    return row


def client_row(srv: Any, files: list[Path]) -> dict[str, Any]:
    from edgedx.serving.client import TritonClassifier

    with TritonClassifier(srv.grpc_url, batch_size=8, concurrency=4) as clf:
        t0 = time.perf_counter()
        n = sum(1 for _ in clf.classify_many(files))
        wall = time.perf_counter() - t0
    return {"row": "classify --triton grpc b8 c4", "images": n, "per_s": round(n / wall, 1), "latency_ms": None, "latency_of": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=128)
    ap.add_argument("--passes", type=int, default=2, help="Times each Triton row sends the files.")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--model", type=Path, default=None, help="ONNX with manifest (default: the bundled default model).")
    ap.add_argument("--images", type=Path, default=C.DEFAULT_IMAGES)
    ap.add_argument("--serving-python", default=os.environ.get("EDGEDX_TRITON_PYTHON") or str(ROOT / ".venv-triton"))
    ap.add_argument("--out", type=Path, default=C.DEFAULT_OUT / "triton.json")
    ap.add_argument("--quick", action="store_true", help="16 files, one pass: checks the script, not the machine.")
    args = ap.parse_args()
    if args.quick:
        args.files, args.passes, args.concurrency = 16, 1, [1, 4]

    import tempfile

    from edgedx import bundled
    from edgedx.serving import server
    from export import triton

    model = args.model or bundled.default_model()
    files = C.select_files(args.images, args.files)
    payloads = [f.read_bytes() for f in files]
    info = C.machine_info()
    C.log(f"{len(files)} files, model {model.name}")
    rows = local_rows(model, files)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        triton.write_repository(model, repo, triton.TritonOptions(variant="python", max_batch=8, preferred_batch=(4, 8)))
        env = server.find_env(args.serving_python)
        with server.TritonServer(repo, env, pythonpath=[ROOT], timeout_s=180) as srv:
            triton_row(srv, "http", 1, payloads[:8], 1)  # warm-up
            for c in args.concurrency:
                C.log(f"triton http c{c}")
                rows.append(triton_row(srv, "http", c, payloads, args.passes))
            rows.append(triton_row(srv, "grpc", max(args.concurrency), payloads, args.passes))
            rows.append(client_row(srv, files))
    result = {"machine": info, "model": str(model), "files": len(files), "serving": {"numpy": env.numpy, "python": env.version}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per row; Triton's statistics per request for each step (queue + compute)."""
    lines = ["| row | images | per s | p50 ms | p90 ms | p99 ms | latency of | Triton ms per request: preprocess, model, postprocess (queue+compute) | model avg batch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = r["latency_ms"] or {}
        tri = r.get("triton") or {}
        steps = [tri.get(f"edgedx_{s}") for s in ("preprocess", "model", "postprocess")]
        note = ", ".join(f"{s['queue_ms']:.2f}+{s['compute_ms']:.2f}" for s in steps if s) if all(steps) else ""
        batch = steps[1]["avg_batch"] if steps[1] else ""
        lines.append(f"| {r['row']} | {r['images']} | {r['per_s']} | {lat.get('p50', '')} | {lat.get('p90', '')} | {lat.get('p99', '')} "
                     f"| {r['latency_of'] or ''} | {note} | {batch} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
