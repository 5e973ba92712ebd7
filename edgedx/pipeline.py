"""The batch pipeline: load ahead on worker threads, batch, run through the session, make records.

    sources -> load_ahead (decode, gate, resize; ``workers`` threads, in order)
            -> batches (``batch_size`` ready samples each; failed inputs ride along)
            -> infer (normalize into ``session.input_buffer``, submit; wait when ``session.slots``
               batches are in flight: one loop for every backend)
            -> records (postprocess, one :class:`~edgedx.results.Result` per input, audit line)

Where to hook in:
- a per-input step before inference (a new check, a new rejection): :meth:`Pipeline.load`;
- a per-record step or a new record field: :meth:`Pipeline.records` and :mod:`edgedx.results`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from edgedx import decode, dicom_ids, gate, postprocess, preprocess, results, trust
from edgedx.audit import AuditLog
from edgedx.backends import Session
from edgedx.errors import EdgedxError, UsageError
from edgedx.inputs import BytesSource, error_kind
from edgedx.loadahead import WORKER_NICE, ordered_map
from edgedx.manifest import Manifest
from edgedx.results import Result, RunFacts

log = logging.getLogger("edgedx")

Source = str | Path | np.ndarray | BytesSource

#: Inputs a load-ahead worker takes at a time (capped at the batch size).
LOAD_CHUNK = 4


@dataclass
class Item:
    """One input (one frame of a multi-frame DICOM) on its way through the pipeline."""

    index: int
    path: str | None
    frame: int | None = None
    error: str | None = None
    rejected: gate.Rejection | None = None
    sha256: str | None = None  # of the input file's bytes, for the audit trail
    sample: np.ndarray | None = None  # resized pixels, until normalized into the batch buffer
    error_kind: str = "input"  # or "run": reading failed for a reason outside the file
    uids: dict[str, str | None] | None = None  # DICOM identifiers, when asked for
    seen: np.ndarray | None = None  # resized pixels kept for the heatmap
    extras: dict[str, np.ndarray] | None = None  # this input's rows of the extra graph outputs

    @property
    def ready(self) -> bool:
        return self.sample is not None


@dataclass
class _Batch:
    """A batch in the inference queue: its items in input order, and what became of it."""

    items: list[Item]
    submitted: bool = False
    raw: np.ndarray | None = None
    error: str | None = None
    good: list[Item] = field(default_factory=list)


@dataclass(frozen=True)
class PipelineConfig:
    """How a pipeline runs; the Classifier builds it from its arguments.

    Args:
        batch_size: samples per inference call (already capped at the session's maximum).
        workers: load-ahead threads (0: everything in the caller's thread).
        use_gate: abstain on inputs the manifest does not accept and on blank/saturated images.
        threshold: overrides the manifest's operating threshold.
        decode_options: what the decoder may skip or must refuse.
        dicom_uids: put each DICOM input's Study/Series/SOP Instance UIDs in its records.
        float_range: the value range of float numpy frames, mapped onto the 0..255 pixel domain.
        worker_nice: how much lower the load-ahead workers' priority is than inference's (0: same).
    """

    batch_size: int
    workers: int
    use_gate: bool = True
    threshold: float | None = None
    decode_options: decode.DecodeOptions = field(default_factory=decode.DecodeOptions)
    dicom_uids: bool = False
    float_range: tuple[float, float] = (0.0, 255.0)
    worker_nice: int = WORKER_NICE


class Pipeline:
    """Files or frames in, one :class:`Result` per input out, in input order.

    Owns nothing it did not create: the session, the audit log and the manifest are the caller's.
    """

    def __init__(self, session: Session, manifest: Manifest, config: PipelineConfig, facts: RunFacts, audit: AuditLog | None = None,
                 plan: trust.Plan | None = None) -> None:
        self.session = session
        self.plan = plan or trust.Plan()
        self.manifest = manifest
        self.config = config
        self.facts = facts
        self.audit = audit
        self._turn = _Turn()

    # -- the stages -------------------------------------------------------------------------

    def run(self, sources: Iterable[Source], workers: int | None = None) -> Iterator[Result]:
        """One result per input, in input order, as batches finish.

        Raises:
            UsageError: the session is closed (at once, before any input is read).
        """
        if self.session.closed:
            raise UsageError(f"this {self.session.name} session is closed")
        return self._run(sources, self.config.workers if workers is None else workers)

    def _run(self, sources: Iterable[Source], workers: int) -> Iterator[Result]:
        for batch in self.infer(self.batches(self.load_ahead(sources, workers))):
            yield from self.records(batch)

    def load_ahead(self, sources: Iterable[Source], workers: int) -> Iterator[list[Item]]:
        """Decoded, gated and resized inputs, in order, ``workers`` threads ahead of the caller.

        Workers take runs of up to :data:`LOAD_CHUNK` inputs at a time (one task per input costs
        more in thread hand-offs than a small image costs to decode), at most ``2 * workers + 1``
        runs ahead, so memory stays flat whatever the number of inputs. They yield the cores to
        inference, and the caller loads a run itself when no worker has started it
        (:mod:`edgedx.loadahead`).
        """
        size = max(1, min(LOAD_CHUNK, self.config.batch_size))
        numbered = enumerate(sources)
        runs = iter(lambda: list(islice(numbered, size)), [])
        for loaded in ordered_map(self._load_run, runs, workers=workers, ahead=2 * workers + 1, nice=self.config.worker_nice):
            yield from loaded

    def _load_run(self, run: list[tuple[int, Source]]) -> list[list[Item]]:
        return [self.load(i, s) for i, s in run]

    def load(self, index: int, source: Source) -> list[Item]:
        """Decode, gate and resize one input into items (one per frame); problems become records."""
        out = []
        spec = self.manifest.preprocess
        for item, image, info in self._decode(index, source):
            if item.error is None and self.config.use_gate:
                item.rejected = gate.check(image, info, self.manifest.accepts)
            if item.error is None and item.rejected is None:
                try:
                    item.sample = preprocess.resize(image, spec)
                    item.seen = item.sample if self.plan.heatmap_dir is not None else None
                except EdgedxError as exc:
                    item.error = str(exc)
                else:
                    item.rejected = trust.check_layout(self.plan, item.sample)
                    if item.rejected is not None:  # never runs through the model
                        item.sample = item.seen = None
            out.append(item)
        return out

    def batches(self, loaded: Iterable[list[Item]]) -> Iterator[list[Item]]:
        """Group items so that each group holds ``batch_size`` ready samples (failed items ride along)."""
        size = self.config.batch_size
        items: list[Item] = []
        ready = 0
        for group in loaded:
            for item in group:
                items.append(item)
                ready += item.ready
                if ready == size:
                    yield items
                    items, ready = [], 0
        if items:
            yield items

    def infer(self, batches: Iterable[list[Item]]) -> Iterator[_Batch]:
        """Run the batches through the session, ``session.slots`` at a time, yielding them in order.

        The one loop for every backend: fill the session's input buffer, submit, and wait for the
        oldest batch when every slot is busy. A batch whose submit or wait fails carries the error;
        the others go on. The session belongs to this call while any batch is in flight.
        """
        session = self.session
        queue: deque[_Batch] = deque()
        held = False
        try:
            for items in batches:
                entry = _Batch(items)
                good = entry.good = [it for it in items if it.ready]
                if good:
                    if not held:
                        self._turn.acquire()
                        held = True
                    try:
                        session.submit(self._fill(session.input_buffer(len(good)), good))
                        entry.submitted = True
                    except UsageError:  # a closed session or a broken protocol: not this batch's fault
                        raise
                    except EdgedxError as exc:
                        entry.error = str(exc)
                queue.append(entry)
                while queue and (not queue[0].submitted or session.pending >= session.slots):
                    done = self._finish(queue.popleft())
                    if held and session.pending == 0:
                        self._turn.release()
                        held = False
                    yield done
            while queue:
                done = self._finish(queue.popleft())
                if held and session.pending == 0:
                    self._turn.release()
                    held = False
                yield done
        finally:
            if held:  # the caller stopped early: collect what is in flight so the session stays usable
                while session.pending and not session.closed:
                    try:
                        session.wait()
                    except EdgedxError:
                        pass
                self._turn.release()

    def records(self, batch: _Batch) -> Iterator[Result]:
        """One result per item of a finished batch, in order; each is written to the audit trail."""
        predictions: Iterator[postprocess.Prediction | None] = iter(())
        if batch.raw is not None:
            run = sum(it.error is None and it.rejected is None for it in batch.items)
            predictions = iter(postprocess.answers(batch.raw, self.manifest, self.config.threshold, batch=run))
        facts = self.facts
        for it in batch.items:
            if it.error is not None:
                result = results.error(it.path, it.frame, it.error, facts, it.error_kind, it.uids)
            elif it.rejected is not None:
                result = results.rejected(it.path, it.frame, it.rejected.code, it.rejected.detail, facts, it.uids)
            elif batch.error is not None:  # the backend failed on this batch: worth retrying
                result = results.error(it.path, it.frame, batch.error, facts, "run", it.uids)
            elif (prediction := next(predictions)) is None:  # NaN/inf from the model: never a decision
                result = results.error(it.path, it.frame, postprocess.NON_FINITE, facts, "input", it.uids)
            else:
                verdict = trust.judge(self.plan, self.manifest, it, self.manifest.labels.index(prediction.label))
                if verdict.rejected is not None:  # out of distribution by the model's own features
                    result = results.rejected(it.path, it.frame, verdict.rejected.code, verdict.rejected.detail, facts, it.uids)
                else:
                    result = results.ok(it.path, it.frame, prediction, facts, it.uids)
                result.ood_score, result.heatmap = verdict.ood_score, verdict.heatmap
            if self.audit is not None:
                self.audit.write(result, it.sha256)
            yield result

    def predict_proba(self, images: list[np.ndarray]) -> np.ndarray:
        """Scores (N, len(labels)) for decoded images, through the model's own preprocessing.

        Raises:
            UsageError: the session is closed (nothing is written anywhere then).
            InputError: an image cannot be preprocessed.
        """
        raw = self.predict_raw(images)
        if not len(raw):
            return np.empty((0, len(self.manifest.labels)))
        return postprocess.probabilities(raw, self.manifest)

    def predict_raw(self, images: list[np.ndarray]) -> np.ndarray:
        """The model's raw outputs (N, K) for decoded images, before activation and calibration."""
        out = []
        size = self.config.batch_size
        for start in range(0, len(images), size):
            chunk = images[start : start + size]
            self._turn.acquire()
            try:
                batch = preprocess.apply_batch(chunk, self.manifest.preprocess, self.session.input_buffer(len(chunk)))
                raw = np.array(self.session.run(batch), copy=True)  # a backend may reuse its output buffer
            finally:
                self._turn.release()
            out.append(raw.reshape(raw.shape[0], -1))
        return np.concatenate(out) if out else np.empty((0, 0))

    # -- internals --------------------------------------------------------------------------

    def _fill(self, buffer: np.ndarray, good: list[Item]) -> np.ndarray:
        """Normalize the items' resized pixels straight into the session's (possibly pinned) buffer."""
        spec = self.manifest.preprocess
        for row, it in enumerate(good):
            preprocess.normalize(it.sample, spec, buffer[row])
            it.sample = None
        return buffer

    def _finish(self, entry: _Batch) -> _Batch:
        if entry.submitted:
            try:
                entry.raw = self.session.wait()
                trust.attach(entry.good, self.session.last_extras)
            except EdgedxError as exc:
                entry.error = str(exc)
        return entry

    def _decode(self, index: int, source: Source) -> Iterator[tuple[Item, np.ndarray | None, decode.SourceInfo | None]]:
        """(item, image, SourceInfo) per frame; an item with ``error`` set when decoding failed."""
        hashing = self.audit is not None
        want_uids = self.config.dicom_uids
        if isinstance(source, np.ndarray):
            sha = hashlib.sha256(np.ascontiguousarray(source).tobytes()).hexdigest() if hashing else None
            frame = float_frame(source, self.config.float_range)
            yield Item(index, None, sha256=sha, uids=dict(dicom_ids.NONE) if want_uids else None), frame, None
            return
        held = isinstance(source, BytesSource)
        path = source.name if held else str(source)
        sha = None
        uids = dict(dicom_ids.NONE) if want_uids else None
        try:
            # Regular files only, size-checked first; one read serves the hash, the identifiers and the decoder.
            data = source.data if held else decode.read_file(path, self.config.decode_options.max_file_size)
            sha = hashlib.sha256(data).hexdigest() if hashing else None
            uids = dicom_ids.identifiers(data) if want_uids else None
            frames = decode.decode_bytes(data, self.config.decode_options)
        except EdgedxError as exc:
            yield Item(index, path, error=str(exc), sha256=sha, uids=uids, error_kind=error_kind(exc)), None, None
            return
        except Exception as exc:  # a decoder bug must not lose the other files' results
            yield Item(index, path, error=f"cannot decode: {type(exc).__name__}", sha256=sha, uids=uids), None, None
            return
        for d in frames:
            yield Item(index, path, frame=d.info.frame, sha256=sha, uids=uids), d.image, d.info


def float_frame(frame: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """A float frame in the stated range, in the 0..255 pixel domain; warns about 0..1 frames read as 0..255."""
    if frame.dtype in (np.float32, np.float64) and frame.size:
        if value_range == (0.0, 255.0) and float(np.nanmax(frame)) <= 1.0 and float(np.nanmin(frame)) >= 0.0:
            log.warning("a float frame with values in 0..1 is read in the 0..255 display range (nearly black); "
                        "pass Classifier(..., float_range=(0, 1)) for frames scaled to 0..1")
        return preprocess.from_float_range(frame, value_range)
    return frame


class _Turn:
    """Whose turn it is to use the session: one batch (or one in-flight window) at a time.

    A plain lock would deadlock when one thread interleaves two runs of the same pipeline (two
    ``classify_many`` generators, or ``predict_proba`` inside a loop over one) while batches are in
    flight; this one raises :class:`UsageError` instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    def acquire(self) -> None:
        if self._owner == threading.get_ident():
            raise UsageError("this Classifier is already running batches in this thread: finish (or close) the first classify_many first")
        self._lock.acquire()
        self._owner = threading.get_ident()

    def release(self) -> None:
        self._owner = None
        self._lock.release()
