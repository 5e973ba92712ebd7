"""``edgedx bench --compare A B C``: the artifacts of one model side by side, in one run, on the same inputs.

Each artifact is a file or a bundled model's name, optionally with a backend: ``model.onnx``,
``model.onnx@openvino``, ``chest_xray_cnn_int8@onnxruntime``, ``model.engine@tensorrt``. The backend
after ``@`` is looked up in the backend map when the artifact is opened, so a backend registered
there is usable here without a change to this module. Every artifact fails soft: its row says why,
and the others are still measured.

For each artifact, opened as ``edgedx classify`` opens it:
- model-only timing on one real scan (the same for every artifact): latency percentiles per batch,
  images per second, and the medians of the preprocessing and postprocessing stages;
- with ``--images DIR``: one end-to-end pass over the same files (decode to result, images per
  second), and accuracy, AUC, sensitivity and specificity when DIR holds one folder per label.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgedx import bench, bundled, machine, metrics, tables
from edgedx.errors import EdgedxError, UsageError, first_line


@dataclass(frozen=True)
class Artifact:
    """One column of the comparison: what the user wrote, the file, and the backend asked for."""

    spec: str
    path: Path
    backend: str = "auto"


def parse_artifact(spec: str) -> Artifact:
    """``PATH[@BACKEND]``; PATH may be a bundled model's name. A file whose own name has an ``@`` wins."""
    head, sep, tail = spec.rpartition("@")
    if sep and head and tail and not Path(spec).exists():
        return Artifact(spec, bundled.resolve(head), tail)
    return Artifact(spec, bundled.resolve(spec), "auto")


@dataclass
class Row:
    """The measurements of one artifact; None where not measured (and ``error`` says why)."""

    artifact: str
    path: str
    backend_requested: str
    backend: str | None = None
    backend_note: str | None = None
    precision: str | None = None
    size_mb: float | None = None
    status: str = "error"
    error: str | None = None
    batch_size: int | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    images_per_s: float | None = None
    preprocess_ms: float | None = None
    postprocess_ms: float | None = None
    e2e_images_per_s: float | None = None
    n: int | None = None
    accuracy: float | None = None
    auc: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    threshold: float | None = None
    rejected: int | None = None
    failed: int | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class Inputs:
    """What every artifact was run on."""

    images_dir: str | None
    files: list[Path]
    classes: list[str | None]
    timing_image: str | None
    batch_size: int
    iterations: int
    warmup: int

    def to_dict(self) -> dict[str, Any]:
        labelled = [c for c in self.classes if c is not None]
        counts = {c: labelled.count(c) for c in sorted(set(labelled))}
        return {"images_dir": self.images_dir, "images": len(self.files), "classes": counts,
                "timing_image": self.timing_image, "batch_size": self.batch_size,
                "iterations": self.iterations, "warmup": self.warmup}


def select_inputs(images: Path | None, limit: int | None) -> tuple[list[Path], list[str | None]]:
    """The files under ``images`` (sorted, at most ``limit`` evenly spread) and each one's class
    folder (its first path component below ``images``; None for a file directly in it)."""
    if images is None:
        return [], []
    from edgedx.api import expand_paths

    if not images.is_dir():
        raise UsageError(f"--images {images}: not a folder")
    files = expand_paths([images])
    if not files:
        raise UsageError(f"no image or DICOM files under {images}")
    if limit is not None and limit < len(files):
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    classes = [(f.relative_to(images).parts[0] if len(f.relative_to(images).parts) > 1 else None) for f in files]
    return files, classes


def compare(
    artifacts: Sequence[str],
    images: Path | None = None,
    *,
    batch_size: int = 1,
    iterations: int = 200,
    warmup: int = 10,
    limit: int | None = None,
    session_options: Any = None,
    machine_facts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure every artifact on the same inputs; one row each, in the order given.

    Args:
        artifacts: ``PATH[@BACKEND]`` specs (see :func:`parse_artifact`).
        images: a folder of scans (class subfolders for accuracy); None: model-only timing on a
            synthetic image.
        batch_size: images per inference call, for timing and the end-to-end pass.
        iterations: timed model-only runs per artifact.
        warmup: untimed runs first.
        limit: at most this many images from ``images``, evenly spread.
        session_options: backend options for every artifact.
        machine_facts: the machine header (default: :func:`edgedx.machine.header`).

    Raises:
        UsageError: no artifacts, or ``images`` has no files. Problems of one artifact are in its row.
    """
    if not artifacts:
        raise UsageError("--compare needs at least one artifact (a model file or a bundled model name)")
    files, classes = select_inputs(images, limit)
    image, timing_name = _timing_image(files)
    inputs = Inputs(str(images) if images else None, files, classes, timing_name, batch_size, iterations, warmup)
    rows = [_measure(parse_artifact(a), inputs, image, session_options) for a in artifacts]
    return {"machine": machine_facts if machine_facts is not None else machine.header(),
            "inputs": inputs.to_dict(), "rows": [asdict(r) for r in rows]}


def _timing_image(files: list[Path]) -> tuple[np.ndarray | None, str | None]:
    for f in files:
        img = bench.first_image([f])
        if img is not None:
            return img, str(f)
    return None, None


def _measure(art: Artifact, inputs: Inputs, image: np.ndarray | None, session_options: Any) -> Row:
    from edgedx.api import Classifier

    row = Row(art.spec, str(art.path), art.backend, batch_size=inputs.batch_size)
    try:
        row.size_mb = os.path.getsize(art.path) / 1e6
    except OSError as exc:
        row.error = f"cannot read {art.path}: {exc.strerror or exc}"
        return row
    try:
        clf = Classifier(art.path, art.backend, batch_size=inputs.batch_size, session_options=session_options)
    except EdgedxError as exc:
        row.error = str(exc)
        return row
    except Exception as exc:  # noqa: BLE001 - one artifact's failure must not end the comparison
        row.error = f"cannot open: {type(exc).__name__}: {first_line(exc)}"
        return row
    with clf:
        row.backend, row.backend_note, row.precision = clf.backend, clf.backend_note, clf.manifest.precision
        row.batch_size = clf.batch_size
        try:
            timed = bench.bench_model(clf, batch_size=clf.batch_size, iterations=inputs.iterations, warmup=inputs.warmup, image=image)
            row.p50_ms, row.p99_ms = timed.latency_ms["median"], timed.latency_ms["p99"]
            row.images_per_s = timed.throughput_ips
            row.preprocess_ms, row.postprocess_ms = timed.stages_ms.get("preprocess"), timed.stages_ms.get("postprocess")
            row.warnings.extend(timed.warnings)
            if inputs.files:
                _end_to_end(clf, inputs, row)
        except EdgedxError as exc:
            row.error = str(exc)
            return row
        except Exception as exc:  # noqa: BLE001
            row.error = f"{type(exc).__name__}: {first_line(exc)}"
            return row
    row.status = "ok" if row.backend_note is None else "fallback"
    return row


def _end_to_end(clf: Any, inputs: Inputs, row: Row) -> None:
    """One pass of ``classify_many`` over the inputs: images per second, and accuracy when labelled."""
    list(clf.classify_many(inputs.files[: clf.batch_size]))  # warm-up, untimed
    t0 = time.perf_counter()
    results = list(clf.classify_many(inputs.files))
    row.e2e_images_per_s = len(results) / (time.perf_counter() - t0)
    row.rejected = sum(r.status == "rejected" for r in results)
    row.failed = sum(r.status == "error" for r in results)
    m = clf.manifest
    index = {label.casefold(): i for i, label in enumerate(m.labels)}
    cls_of = dict(zip(map(str, inputs.files), inputs.classes))
    if not inputs.classes or any(c is None or c.casefold() not in index for c in inputs.classes):
        return  # not one folder per label of this model: no accuracy
    targets, probs = [], []
    for r in results:
        if r.status == "ok" and r.scores is not None:
            targets.append(index[cls_of[r.path].casefold()])
            probs.append([r.scores[label] for label in m.labels])
    if not targets:
        return
    threshold = clf.threshold if clf.threshold is not None else m.threshold
    summary = metrics.summarize(np.asarray(targets), np.asarray(probs), m.positive_index, threshold)
    row.n, row.threshold = summary["n"], threshold
    row.accuracy, row.auc = summary.get("accuracy"), summary.get("auc")
    row.sensitivity, row.specificity = summary.get("sensitivity"), summary.get("specificity")


# -- rendering --------------------------------------------------------------------------------

COLUMNS = (
    ("artifact", "artifact"), ("backend", "backend"), ("precision", "prec"), ("size_mb", "MB"), ("status", "status"),
    ("accuracy", "acc"), ("auc", "auc"), ("sensitivity", "sens"), ("specificity", "spec"),
    ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("images_per_s", "img/s"), ("e2e_images_per_s", "e2e img/s"),
    ("preprocess_ms", "pre ms"), ("postprocess_ms", "post ms"),
)


def _body(report: dict[str, Any]) -> tuple[list[str], list[list[Any]], list[str]]:
    header = [title for _, title in COLUMNS]
    body, notes = [], []
    for i, r in enumerate(report["rows"], 1):
        cells = [r[key] for key, _ in COLUMNS]
        problem = r["error"] or r["backend_note"]
        if problem:
            notes.append(f"[{i}] {r['artifact']}: {problem}")
            cells[header.index("status")] = f"{r['status']} [{i}]"
        body.append(cells)
    return header, body, notes


def header_lines(report: dict[str, Any]) -> list[str]:
    """The machine and the inputs, in plain text."""
    inp = report["inputs"]
    what = (f"{inp['images']} images from {inp['images_dir']}"
            + (f" ({', '.join(f'{k} {v}' for k, v in inp['classes'].items())})" if inp["classes"] else "")
            if inp["images_dir"] else "no images (model-only timing on a synthetic image)")
    timing = (f"batch {inp['batch_size']}, {inp['iterations']} timed runs after {inp['warmup']} warm-up, on "
              + (Path(inp["timing_image"]).name if inp["timing_image"] else "a synthetic image"))
    return [*machine.header_lines(report["machine"]), f"inputs   {what}", f"timing   {timing}; pre/post: medians"]


def render_text(report: dict[str, Any]) -> str:
    header, body, notes = _body(report)
    numeric = [key not in ("artifact", "backend", "precision", "status") for key, _ in COLUMNS]
    return "\n".join([*header_lines(report), "", tables.text_table(header, body, right=numeric), *(["", *notes] if notes else [])])


def render_markdown(report: dict[str, Any]) -> str:
    header, body, notes = _body(report)
    lines = [f"- {line.split(None, 1)[0]}: {line.split(None, 1)[1]}" for line in header_lines(report)]
    return "\n".join([*lines, "", tables.markdown_table(header, body), *(["", *(f"- {n}" for n in notes)] if notes else [])])
