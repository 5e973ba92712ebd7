"""The library the CLI wraps and screening devices embed.

    with Classifier() as clf:                 # the bundled default model, best backend here
        result = clf.classify("scan.dcm")     # or a numpy frame
        for r in clf.classify_many(paths):    # batched, in input order, one record per input
            ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Union

import numpy as np

from edgedx import bundled, decode, gate, postprocess, preprocess, trust
from edgedx import manifest as manifest_mod
from edgedx.audit import AuditLog
from edgedx.backends import Session, SessionOptions, open_session, resolve_backend
from edgedx.backends.base import cpu_count
from edgedx.errors import EdgedxError, ModelError, UsageError, file_sha256
from edgedx.manifest import Manifest

log = logging.getLogger("edgedx")

Source = Union[str, Path, np.ndarray]


@dataclass
class Result:
    """One record per input (per frame for multi-frame DICOM with ``all_frames``).

    ``status`` is ``ok``, ``rejected`` (the input gate abstained: ``reason`` holds
    ``code: detail``) or ``error`` (``error`` holds the message); only ``ok`` records have a label.
    ``backend_note`` says why this backend ran when ``auto`` had to fall back.
    """

    path: str | None
    label: str | None = None
    score: float | None = None
    scores: dict[str, float] | None = None
    error: str | None = None
    status: str = "ok"
    reason: str | None = None
    model: str = ""
    backend: str = ""
    frame: int | None = None
    threshold: float | None = None
    positive: bool | None = None
    backend_note: str | None = None
    ood_score: float | None = None
    heatmap: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ManifestOverrides:
    """What the user supplies for a model without a manifest (and ``threshold`` for any model)."""

    labels: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    resize: str | None = None
    layout: str | None = None
    activation: str | None = None
    positive_label: str | None = None


@dataclass
class _Item:
    index: int
    path: str | None
    frame: int | None = None
    error: str | None = None
    rejected: gate.Rejection | None = None
    sha256: str | None = None  # of the input file's bytes, for the audit trail
    sample: np.ndarray | None = None  # resized pixels, until normalized into the batch buffer
    seen: np.ndarray | None = None  # resized pixels kept for the heatmap
    extras: dict[str, np.ndarray] | None = None  # this input's rows of the extra graph outputs

    @property
    def ready(self) -> bool:
        return self.sample is not None


class Classifier:
    """A loaded model ready to classify files or frames; reusable, closeable, thread-safe to call.

    Args:
        model: an ONNX file or TensorRT engine; None for the bundled default model.
        backend: "auto", "onnxruntime" or "tensorrt". Only ``auto`` may fall back, and every
            result then names the backend that ran and why.
        threshold: overrides the manifest's operating threshold (binary models).
        batch_size: images per inference call in :meth:`classify_many`.
        workers: decode/preprocess threads for :meth:`classify_many` (default: the usable cores).
        use_gate: abstain on inputs outside the manifest's ``accepts`` and on blank, constant or
            saturated images (status ``rejected``).
        audit: append one JSON line per answer to this file.
        decode_options: DICOM window override, all frames, pixel limit.
        session_options: backend options (threads, CUDA graphs, ...).
        overrides: what to assume for a model that carries no manifest.
        heatmap: write a class-activation heatmap PNG per answered input into this folder.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        backend: str = "auto",
        *,
        threshold: float | None = None,
        batch_size: int = 8,
        workers: int | None = None,
        use_gate: bool = True,
        audit: str | Path | None = None,
        decode_options: decode.DecodeOptions | None = None,
        session_options: SessionOptions | None = None,
        overrides: ManifestOverrides | None = None,
        heatmap: str | Path | None = None,
    ) -> None:
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise UsageError(f"threshold must be in [0, 1], got {threshold}")
        if batch_size < 1:
            raise UsageError(f"batch size must be >= 1, got {batch_size}")
        self.model_path = Path(model) if model is not None else bundled.default_model(backend)
        if not self.model_path.is_file():
            raise ModelError(f"model not found: {self.model_path}")
        self.requested_backend = backend
        self.workers = cpu_count() if workers is None else workers
        self.decode_options = decode_options or decode.DecodeOptions()
        self.threshold = threshold
        self.backend_note: str | None = None
        session_options = session_options or SessionOptions()
        if session_options.spin_wait is None:
            # Spinning inference threads would take the cores the decode workers need.
            session_options = dataclasses.replace(session_options, spin_wait=self.workers == 0)
        self.session = self._open(backend, session_options)
        self.use_gate = use_gate
        self._audit: AuditLog | None = None
        self._lock = threading.RLock()  # one batch at a time owns the input buffer and the session
        try:
            self.manifest = self._manifest(overrides or ManifestOverrides())
            spec = self.manifest.preprocess
            if self.decode_options.target_size is None:
                # Let the decoder skip work the model cannot see: JPEG DCT scaling, gray decode
                # (not when the gate judges colour from the pixels).
                channels = None if use_gate and "color" in self.manifest.accepts else spec.channels
                self.decode_options = dataclasses.replace(
                    self.decode_options, target_size=(spec.width, spec.height), target_channels=channels)
            self._trust = trust.plan(self.manifest, self.session, use_gate, heatmap)
            self.batch_size = min(batch_size, self.session.max_batch_size or batch_size)
            self._buffer = self.session.input_buffer(self.batch_size)
            if audit is not None:
                self._audit = AuditLog(audit, model_sha256=file_sha256(self.model_path), manifest=self.manifest, backend_detail=self.session.describe())
        except OSError as exc:
            self.session.close()
            raise UsageError(f"cannot open audit file {audit}: {exc.strerror or exc}") from None
        except BaseException:
            self.session.close()
            raise

    # -- public API -------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return self.session.name

    def classify(self, source: Source) -> Result:
        """Classify one file or HxW[xC] frame; the first frame of a multi-frame DICOM."""
        return next(iter(self.classify_many([source])))

    def classify_many(self, sources: Iterable[Source], *, workers: int | None = None) -> Iterator[Result]:
        """Yield one result per input (per frame with ``all_frames``), in input order, as batches finish.

        ``workers`` threads decode and resize ahead of inference (OpenCV and ONNX Runtime release
        the GIL, so they overlap), and each batch is normalized straight into the session's input
        buffer (pinned memory for TensorRT: no extra copy); at most ``2 * workers + batch_size`` files are in flight, so memory
        stays flat whatever the number of inputs. ``workers=0`` does everything in this thread.
        Bad inputs yield error records; the others still get results. Calls from several threads
        are safe: each batch runs atomically.
        """
        workers = self.workers if workers is None else workers
        batches = self._batches(self._load_ahead(sources, workers))
        run = self._run_overlapped if self.session.overlapped else self._run_serial
        for items, raw, error in run(batches):
            yield from self._answers(items, raw, error)

    def _batches(self, loaded: Iterator[list[_Item]]) -> Iterator[list[_Item]]:
        """Group items so that each group holds ``batch_size`` preprocessed samples (errors ride along)."""
        items: list[_Item] = []
        ready = 0
        for group in loaded:
            for item in group:
                items.append(item)
                ready += item.ready
                if ready == self.batch_size:
                    yield items
                    items, ready = [], 0
        if items:
            yield items

    def _fill(self, buffer: np.ndarray, good: list[_Item]) -> np.ndarray:
        """Normalize the items' resized pixels straight into the (possibly pinned) input buffer."""
        batch = buffer[: len(good)]
        spec = self.manifest.preprocess
        for row, it in enumerate(good):
            preprocess.normalize(it.sample, spec, batch[row])
            it.sample = None
        return batch

    def _run_serial(self, batches: Iterator[list[_Item]]) -> Iterator[tuple[list[_Item], np.ndarray | None, str | None]]:
        """One batch at a time; each copies into the input buffer and runs atomically."""
        for items in batches:
            good = [it for it in items if it.ready]
            if not good:
                yield items, None, None
                continue
            try:
                with self._lock:
                    raw, extras = self.session.run_with(self._fill(self._buffer, good), self._trust.names)
                trust.attach(good, extras)
            except EdgedxError as exc:
                yield items, None, str(exc)
                continue
            yield items, raw, None

    def _run_overlapped(self, batches: Iterator[list[_Item]]) -> Iterator[tuple[list[_Item], np.ndarray | None, str | None]]:
        """Double buffering: fill and submit batch N+1 while the device runs batch N.

        Holds the lock for the whole run: the session's two slots belong to this call.
        """
        session: Any = self.session
        with self._lock:
            pending: list[_Item] | None = None
            for items in batches:
                good = [it for it in items if it.ready]
                submitted, error = False, None
                if good:
                    try:
                        session.submit(self._fill(session.input_buffer(len(good)), good))
                        submitted = True
                    except EdgedxError as exc:
                        error = str(exc)
                if pending is not None:
                    yield self._collect(pending)
                    pending = None
                if submitted:
                    pending = items
                else:
                    yield items, None, error
            if pending is not None:
                yield self._collect(pending)

    def _collect(self, items: list[_Item]) -> tuple[list[_Item], np.ndarray | None, str | None]:
        try:
            return items, self.session.wait(), None  # type: ignore[attr-defined]
        except EdgedxError as exc:
            return items, None, str(exc)

    def _load_ahead(self, sources: Iterable[Source], workers: int) -> Iterator[list[_Item]]:
        """Decoded, gated and resized inputs, in order, ``workers`` threads ahead of the caller."""
        if workers <= 0:
            yield from (self._load(i, s) for i, s in enumerate(sources))
            return
        window = 2 * workers + self.batch_size
        pool = ThreadPoolExecutor(workers, thread_name_prefix="edgedx-decode")
        pending: deque[Future[list[_Item]]] = deque()
        try:
            for index, source in enumerate(sources):
                pending.append(pool.submit(self._load, index, source))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _load(self, index: int, source: Source) -> list[_Item]:
        """Decode, gate and resize one input into items (one per frame); problems become records."""
        out = []
        for item, image, info in self._decode(index, source):
            if item.error is None and self.use_gate:
                item.rejected = gate.check(image, info, self.manifest.accepts)
            if item.error is None and item.rejected is None:
                try:
                    item.sample = preprocess.resize(image, self.manifest.preprocess)
                    item.seen = item.sample if self._trust.heatmap_dir is not None else None
                except EdgedxError as exc:
                    item.error = str(exc)
            out.append(item)
        return out

    def predict_proba(self, images: list[np.ndarray]) -> np.ndarray:
        """Scores (N, len(labels)) for decoded images, through the model's own preprocessing.

        Used by evaluation, verification and calibration; raises on a bad image.
        """
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            with self._lock:
                batch = preprocess.apply_batch(chunk, self.manifest.preprocess, self._buffer[: len(chunk)])
                raw = self.session.run(batch)
            out.append(postprocess.probabilities(raw, self.manifest))
        return np.concatenate(out) if out else np.empty((0, len(self.manifest.labels)))

    def info(self) -> dict[str, Any]:
        return {
            "model": str(self.model_path),
            "sha256": file_sha256(self.model_path),
            "backend": self.session.describe(),
            "backend_note": self.backend_note,
            "inputs": [asdict(t) for t in self.session.inputs],
            "outputs": [asdict(t) for t in self.session.outputs],
            "manifest": self.manifest.to_dict(),
        }

    def close(self) -> None:
        self.session.close()
        if self._audit is not None:
            self._audit.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------

    def _open(self, backend: str, options: SessionOptions) -> Session:
        name = resolve_backend(self.model_path, backend)
        try:
            return open_session(self.model_path, name, options)
        except EdgedxError as exc:
            fallback = getattr(exc, "fallback_onnx", None)
            if backend != "auto" or fallback is None:
                raise
            self.backend_note = f"{name} refused {self.model_path.name} ({exc}); ran source ONNX {Path(fallback).name} on onnxruntime"
            log.warning("%s", self.backend_note)
            return open_session(fallback, "onnxruntime", options)

    def _manifest(self, ov: ManifestOverrides) -> Manifest:
        path = self.session.model_path
        found = manifest_mod.load(self.model_path) or manifest_mod.load(path)
        out_spec = self.session.outputs[0]
        width = out_spec.shape[-1] if out_spec.shape and isinstance(out_spec.shape[-1], int) else None
        if found is None:
            found, assumed = manifest_mod.assumed(
                input_shape=self.session.inputs[0].shape,
                layout=ov.layout,
                labels=ov.labels,
                mean=ov.mean,
                std=ov.std,
                scale=ov.scale,
                resize=ov.resize,
                activation=ov.activation,
                num_outputs=width,
                positive_label=ov.positive_label,
                threshold=self.threshold,
            )
            if assumed:
                log.warning("%s has no edgedx manifest; assumed %s", self.model_path.name, ", ".join(assumed))
        if self.threshold is not None and found.positive_label is None:
            raise EdgedxError("--threshold applies to binary screening models; this model has no positive label")
        _check_input(found, self.session)
        if width is not None:
            postprocess.check_output(found, width)
        return found

    def _decode(self, index: int, source: Source) -> Iterator[tuple[_Item, Any, Any]]:
        """(item, image, SourceInfo) per frame; an item with ``error`` set when decoding failed."""
        if isinstance(source, np.ndarray):
            sha = hashlib.sha256(np.ascontiguousarray(source).tobytes()).hexdigest() if self._audit else None
            yield _Item(index, None, sha256=sha), source, None
            return
        path = str(source)
        sha = None
        try:
            data = decode.read_file(path)  # regular files only; one read serves the hash and the decoder
            sha = hashlib.sha256(data).hexdigest() if self._audit is not None else None
            frames = decode.decode_bytes(data, self.decode_options)
        except EdgedxError as exc:
            yield _Item(index, path, error=str(exc), sha256=sha), None, None
            return
        except Exception as exc:  # a decoder bug must not lose the other files' results
            yield _Item(index, path, error=f"cannot decode: {type(exc).__name__}", sha256=sha), None, None
            return
        for d in frames:
            yield _Item(index, path, frame=d.info.frame, sha256=sha), d.image, d.info

    def _answers(self, items: list[_Item], raw: np.ndarray | None, error: str | None) -> Iterator[Result]:
        """Results for one batch's items, in order; ``error`` fails every item that was run."""
        predictions: Iterator[postprocess.Prediction] = iter(())
        if raw is not None:
            predictions = iter(postprocess.decide(postprocess.probabilities(raw, self.manifest), self.manifest, self.threshold))
        for it in items:
            pred = None
            if it.error is None and it.rejected is None:
                if error is not None:
                    it.error = error
                else:
                    pred = next(predictions)
            verdict = trust.judge(self._trust, self.manifest, it, self.manifest.labels.index(pred.label)) if pred else None
            if verdict is not None and verdict.rejected is not None:
                it.rejected, pred = verdict.rejected, None
            result = self._result(it, pred, verdict)
            if self._audit is not None:
                self._audit.write(result, it.sha256)
            yield result

    def _result(self, item: _Item, pred: postprocess.Prediction | None, verdict: trust.Verdict | None = None) -> Result:
        common = dict(path=item.path, model=str(self.model_path), backend=self.backend, frame=item.frame, backend_note=self.backend_note,
                      ood_score=verdict.ood_score if verdict else None, heatmap=verdict.heatmap if verdict else None)
        if item.error is not None:
            return Result(error=item.error, status="error", **common)
        if item.rejected is not None:
            return Result(status="rejected", reason=str(item.rejected), **common)
        return Result(label=pred.label, score=pred.score, scores=pred.scores, threshold=pred.threshold, positive=pred.positive, **common)


def _check_input(m: Manifest, session: Session) -> None:
    """The manifest's input must match the model's real input tensor."""
    shape = session.inputs[0].shape
    expected = (None, *m.preprocess.sample_shape())
    if len(shape) != 4 or any(isinstance(a, int) and a != b for a, b in zip(shape[1:], expected[1:])):
        raise ModelError(
            f"manifest input {m.preprocess.layout.value} {expected[1:]} does not match the model's input "
            f"{session.inputs[0].name} {shape}"
        )


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders walked recursively (image and DICOM files only, sorted).

    A path that does not exist is kept, so it gets its own error record. Symbolic links to folders
    are not followed (no loops).
    """
    import os

    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
            continue
        found = []
        for root, dirs, files in os.walk(p, followlinks=False, onerror=lambda e: log.warning("cannot list %s", e.filename)):
            dirs.sort()
            found.extend(Path(root, f) for f in files if decode.is_candidate(Path(root, f)))
        out.extend(sorted(found))
    return out
