"""The library the CLI wraps and screening devices embed.

    with Classifier() as clf:                 # the bundled default model, best backend here
        result = clf.classify("scan.dcm")     # or a numpy frame
        for r in clf.classify_many(paths):    # batched, in input order, one record per input
            ...

A facade over three stages: :mod:`edgedx.opening` (backend choice, ``auto`` fallback, the model's
contract), :mod:`edgedx.pipeline` (load ahead, batch, submit/wait) and :mod:`edgedx.results` (the
records).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from edgedx import decode, limits, preprocess, trust
from edgedx.audit import AuditLog
from edgedx.backends import SessionOptions
from edgedx.backends.base import cpu_count
from edgedx.errors import UsageError, file_sha256
from edgedx.inputs import BytesSource, expand_paths
from edgedx.opening import Fallback, ManifestOverrides, default_spin_wait, open_model
from edgedx.pipeline import Pipeline, PipelineConfig, Source
from edgedx.results import Result, RunFacts

log = logging.getLogger("edgedx")

__all__ = ["Classifier", "Fallback", "ManifestOverrides", "Result", "Source", "expand_paths", "file_sha256"]


class Classifier:
    """A loaded model ready to classify files or frames; reusable, closeable, thread-safe to call.

    Args:
        model: an ONNX file or TensorRT engine; None for the bundled default model.
        backend: "auto", "onnxruntime", "openvino" or "tensorrt". Only ``auto`` may fall back, and
            every result then names the backend that ran and why.
        threshold: overrides the manifest's operating threshold (binary models).
        batch_size: images per inference call in :meth:`classify_many`.
        workers: decode/preprocess threads for :meth:`classify_many` (default: the usable cores).
        use_gate: abstain on inputs outside the manifest's ``accepts`` and on blank, constant or
            saturated images (status ``rejected``).
        audit: append one JSON line per answer to this file.
        decode_options: DICOM window override, all frames, pixel limit.
        session_options: backend options (threads, CUDA graphs, OpenVINO precision, ...).
        overrides: what to assume for a model that carries no manifest.
        dicom_uids: put each DICOM input's Study/Series/SOP Instance UIDs in its records (they
            never reach logs).
        float_range: the value range of float numpy frames (default 0..255, the display range
            uint8 images have); ``(0, 1)`` for frames scaled to 0..1, which are then mapped onto
            0..255 before the input gate and the model's own preprocessing.
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
        dicom_uids: bool = False,
        float_range: tuple[float, float] = (0.0, 255.0),
        heatmap: str | Path | None = None,
    ) -> None:
        float_range = (float(float_range[0]), float(float_range[1]))
        preprocess.from_float_range(np.zeros(1, np.float32), float_range)  # validates the range
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise UsageError(f"threshold must be in [0, 1], got {threshold}")
        limits.check_count("batch size", batch_size, limits.BATCH_SIZE)
        limits.check_count("workers", workers, limits.WORKERS)
        limits.check_count("threads", (session_options or SessionOptions()).threads, limits.thread_bounds())
        self.requested_backend = backend
        self.threshold = threshold
        self.workers = cpu_count() if workers is None else workers
        options = default_spin_wait(session_options or SessionOptions(), self.workers)
        opened = open_model(model, backend, options=options, overrides=overrides, threshold=threshold)
        self.model_path, self.session, self.manifest = opened.path, opened.session, opened.manifest
        self.fallback = opened.fallback
        self.backend_note = None if opened.fallback is None else str(opened.fallback)
        self._audit: AuditLog | None = None
        try:
            spec = self.manifest.preprocess
            self.decode_options = (decode_options or decode.DecodeOptions()).for_model(
                spec.width, spec.height, spec.channels, judges_color=use_gate and "color" in self.manifest.accepts)
            limit = self.session.max_batch_size
            if limit is not None and batch_size > limit:  # said, not silently capped
                log.warning("batch size %d is more than %s takes (at most %d): running batches of %d (a TensorRT engine "
                            "takes larger ones when rebuilt with edgedx export engine --batch 1,%d,%d)",
                            batch_size, self.model_path.name, limit, limit, batch_size, batch_size)
            self.batch_size = min(batch_size, limit or batch_size)
            plan = trust.plan(self.manifest, self.session, use_gate, heatmap)
            self.session.request_outputs(plan.names)
            if audit is not None:
                self._audit = AuditLog(audit, model_sha256=file_sha256(self.model_path), manifest=self.manifest, backend_detail=self.session.describe())
        except OSError as exc:
            self.session.close()
            raise UsageError(f"cannot open audit file {audit}: {exc.strerror or exc}") from None
        except BaseException:
            self.session.close()
            raise
        facts = RunFacts(str(self.model_path), self.session.name, self.backend_note, self.session.precision)
        config = PipelineConfig(self.batch_size, self.workers, use_gate, threshold, self.decode_options, dicom_uids, float_range)
        self._pipeline = Pipeline(self.session, self.manifest, config, facts, self._audit, plan)

    @property
    def backend(self) -> str:
        """The backend that runs (after any ``auto`` fallback)."""
        return self.session.name

    @property
    def use_gate(self) -> bool:
        return self._pipeline.config.use_gate

    def classify(self, source: Source) -> Result:
        """Classify one file or HxW[xC] frame; the first frame of a multi-frame DICOM."""
        return next(iter(self.classify_many([source])))

    def classify_bytes(self, data: bytes, name: str | None = None) -> Result:
        """Classify a file's content that the caller already holds; ``name`` becomes the record's path."""
        return next(iter(self.classify_many([BytesSource(data, name)])))

    def classify_bytes_many(self, datas: Iterable[bytes], names: Iterable[str | None] | None = None, *,
                            workers: int | None = None) -> Iterator[Result]:
        """:meth:`classify_many` over contents held in memory (``names``: their record paths, in order)."""
        pairs = zip(datas, repeat(None) if names is None else names)
        return self.classify_many((BytesSource(d, n) for d, n in pairs), workers=workers)

    def classify_many(self, sources: Iterable[Source], *, workers: int | None = None) -> Iterator[Result]:
        """Yield one result per input (per frame with ``all_frames``), in input order, as batches finish.

        ``workers`` threads decode and resize ahead of inference (OpenCV and the backends release
        the GIL, so they overlap), and each batch is normalized straight into the session's input
        buffer (pinned memory for TensorRT: no extra copy); a bounded number of files is in flight
        (``(2 * workers + 1) * 4``), so memory stays flat whatever the number of inputs. ``workers=0`` does
        everything in this thread. Bad inputs yield error records; the others still get results.
        Calls from several threads are safe: the session serves one batch window at a time.
        """
        return self._pipeline.run(sources, workers)

    def predict_proba(self, images: list[np.ndarray]) -> np.ndarray:
        """Scores (N, len(labels)) for decoded images, through the model's own preprocessing.

        Used by evaluation, verification and calibration; raises on a bad image, and
        :class:`UsageError` after :meth:`close`.
        """
        return self._pipeline.predict_proba(images)

    def predict_raw(self, images: list[np.ndarray]) -> np.ndarray:
        """The model's raw outputs (N, K) for decoded images, before activation and calibration
        (what a calibration is fitted on)."""
        return self._pipeline.predict_raw(images)

    def info(self) -> dict[str, Any]:
        """The model, its hash, what runs it, its tensors and its manifest."""
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
        """Close the session and the audit file; later calls raise :class:`UsageError`."""
        self.session.close()
        if self._audit is not None:
            self._audit.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
