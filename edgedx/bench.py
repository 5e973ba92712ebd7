"""Latency and throughput measurement, reported like trtexec.

Model-only timing runs the session on a preprocessed batch of a real (or synthetic) image, so it
measures what the backend costs and nothing else. End-to-end timing runs ``classify_many`` over real
files: decode, preprocess, inference, postprocess.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgedx import decode, preprocess
from edgedx.api import Classifier

PERCENTILES = (90, 95, 99)


@dataclass
class BenchResult:
    model: str
    backend: str
    precision: str
    batch_size: int
    iterations: int
    latency_ms: dict[str, float]
    throughput_ips: float
    stages_ms: dict[str, float]
    mode: str = "model"
    backend_detail: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    images: int | None = None
    #: Jetson only: nvpmodel power mode and clocks during the run.
    platform: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarize_ms(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000.0
    out = {"min": float(ms.min()), "mean": float(ms.mean()), "median": float(np.median(ms))}
    out.update({f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES})
    out["max"] = float(ms.max())
    return out


def bench_model(
    clf: Classifier,
    *,
    batch_size: int,
    iterations: int | None = 200,
    warmup: int = 10,
    duration_s: float | None = None,
    image: np.ndarray | None = None,
) -> BenchResult:
    """Time ``session.run`` alone on one batch, after ``warmup`` runs.

    Stops after ``iterations`` runs or ``duration_s`` seconds, whichever is given (both: the first
    reached). Preprocessing and postprocessing are timed separately, per batch, as the median of
    :data:`STAGE_REPEATS` warm runs (the first run of each is untimed).
    """
    spec = clf.manifest.preprocess
    if image is None:
        image = np.random.default_rng(0).integers(0, 256, (spec.height, spec.width), np.uint8)
    session = clf.session
    pre_s = _median_s(lambda: preprocess.apply_batch([image] * batch_size, spec, session.input_buffer(batch_size)))
    batch = preprocess.apply_batch([image] * batch_size, spec, session.input_buffer(batch_size))
    # Every slot holds the batch before timing starts: each timed run is then handed the session's
    # own free buffer, as the pipeline does, and copies nothing (a pinned slot stays pinned).
    for _ in range(session.slots):
        session.submit(_copy_into(session.input_buffer(batch_size), batch))
    for _ in range(session.slots):
        session.wait()
    for _ in range(warmup):
        session.run(session.input_buffer(batch_size))
    samples: list[float] = []
    stage_samples: dict[str, list[float]] = {}
    deadline = None if duration_s is None else time.perf_counter() + duration_s
    while True:
        t = time.perf_counter()
        raw = session.run(session.input_buffer(batch_size))
        samples.append(time.perf_counter() - t)
        for k, v in session.last_timings().items():
            stage_samples.setdefault(k, []).append(v)
        if iterations is not None and len(samples) >= iterations:
            break
        if deadline is not None and time.perf_counter() >= deadline:
            break
    from edgedx import postprocess

    raw = np.array(raw, copy=True)  # a backend may reuse its output buffer
    post_s = _median_s(lambda: postprocess.decide(postprocess.probabilities(raw, clf.manifest), clf.manifest))
    stages = {"preprocess": pre_s * 1000.0}
    stages.update({k: statistics.median(v) for k, v in stage_samples.items()})
    if "compute" not in stages:
        stages["compute"] = float(np.median(samples) * 1000.0)
    stages["postprocess"] = post_s * 1000.0
    latency = summarize_ms(samples)
    return BenchResult(
        model=str(clf.model_path),
        backend=clf.backend,
        precision=clf.manifest.precision,
        batch_size=batch_size,
        iterations=len(samples),
        latency_ms=latency,
        throughput_ips=batch_size * len(samples) / sum(samples),
        stages_ms=stages,
        backend_detail=clf.session.describe(),
        warnings=_warnings(latency, stages),
    )


#: Timed runs of the pre- and postprocessing stages in :func:`bench_model` (their median is reported).
STAGE_REPEATS = 15


def _median_s(fn: Any, repeats: int = STAGE_REPEATS) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one untimed call."""
    fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def bench_files(clf: Classifier, files: list[Path], *, warmup: int = 1) -> BenchResult:
    """Time ``classify_many`` over real files end to end (start-up and warm-up excluded)."""
    if not files:
        raise ValueError("no image files to time")
    for _ in range(warmup):
        list(clf.classify_many(files[: clf.batch_size]))
    per_batch: list[float] = []
    errors = 0
    t_start = t_last = time.perf_counter()
    for i, result in enumerate(clf.classify_many(files), 1):
        errors += result.status != "ok"
        if i % clf.batch_size == 0:
            now = time.perf_counter()
            per_batch.append(now - t_last)
            t_last = now
    total = time.perf_counter() - t_start
    latency = summarize_ms(per_batch or [total])
    return BenchResult(
        model=str(clf.model_path),
        backend=clf.backend,
        precision=clf.manifest.precision,
        batch_size=clf.batch_size,
        iterations=len(per_batch),
        latency_ms=latency,
        throughput_ips=len(files) / total,
        stages_ms={},
        mode="end-to-end",
        backend_detail=clf.session.describe(),
        warnings=[f"{errors} of {len(files)} files failed"] if errors else [],
        images=len(files),
    )


def _copy_into(buffer: np.ndarray, batch: np.ndarray) -> np.ndarray:
    if buffer.ctypes.data != batch.ctypes.data:
        buffer[...] = batch
    return buffer


def first_image(files: list[Path]) -> np.ndarray | None:
    """A real decoded image to bench with, when any file decodes."""
    for f in files:
        try:
            return decode.decode_file(f)[0].image
        except Exception:
            continue
    return None


def _warnings(latency: dict[str, float], stages: dict[str, float]) -> list[str]:
    out = []
    transfers = stages.get("h2d", 0.0) + stages.get("d2h", 0.0)
    if transfers and transfers > 0.5 * stages.get("compute", float("inf")):
        out.append(f"host/device transfers ({transfers:.3f} ms) rival compute ({stages['compute']:.3f} ms)")
    if latency["median"] > 0 and (latency["p99"] - latency["median"]) / latency["median"] > 0.5:
        out.append("high run-to-run variation: p99 is more than 1.5x the median (other load on the machine?)")
    return out
