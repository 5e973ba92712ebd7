"""What edgedx answers: one :class:`Result` per input, and how it is made.

A leaf module: it imports nothing else from edgedx, so the report writers, the audit trail and the
pipeline can all meet here without importing one another.

Adding a field to every record is two steps, both in this file: a field on :class:`Result` (with a
default, so old callers still build records) and, when it comes from the run rather than from the
prediction, a field on :class:`RunFacts` that :func:`ok` / :func:`error` / :func:`rejected` copy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

#: The three outcomes of one input.
STATUSES = ("ok", "rejected", "error")


@dataclass
class Result:
    """One record per input (per frame for multi-frame DICOM with ``all_frames``).

    ``status`` is ``ok``, ``rejected`` (the input gate abstained: ``reason_code`` holds the stable
    code, ``reason`` the detail) or ``error`` (``error`` holds the message); only ``ok`` records have a label.
    ``backend`` names the backend that ran; ``backend_note`` says why it ran when ``auto`` had to
    fall back; ``precision`` is the inference precision the backend ran in (``None`` when the
    backend does not choose one, e.g. ONNX Runtime running the file as stored). ``error_kind`` is
    ``input`` for an error about the input itself (retrying gives the same answer) and ``run`` for an
    error of the run (a backend failure, a transient read error, no memory; worth retrying).
    ``dicom_uids`` holds the Study, Series and SOP Instance UIDs when asked for
    (``Classifier(dicom_uids=True)``), else None. ``ood_score`` is the out-of-distribution score of
    the model's own features (where the manifest fits one), ``heatmap`` the PNG written for this
    record with ``heatmap=DIR``.
    """

    path: str | None
    label: str | None = None
    score: float | None = None
    scores: dict[str, float] | None = None
    error: str | None = None
    status: str = "ok"
    reason_code: str | None = None
    reason: str | None = None
    model: str = ""
    backend: str = ""
    frame: int | None = None
    threshold: float | None = None
    positive: bool | None = None
    backend_note: str | None = None
    precision: str | None = None
    error_kind: str | None = None
    dicom_uids: dict[str, str | None] | None = None
    ood_score: float | None = None
    heatmap: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunFacts:
    """What every record of one run shares: the model, the backend that ran and why."""

    model: str
    backend: str
    backend_note: str | None = None
    precision: str | None = None


class Decision(Protocol):
    """What a record needs from a prediction (``edgedx.postprocess.Prediction`` has it)."""

    label: str
    score: float
    scores: dict[str, float]
    threshold: float | None
    positive: bool | None


Uids = dict[str, "str | None"]


def ok(path: str | None, frame: int | None, decision: Decision, facts: RunFacts, uids: Uids | None = None) -> Result:
    """The record of an input that got an answer."""
    return _record(path, frame, facts, uids, label=decision.label, score=decision.score, scores=decision.scores,
                   threshold=decision.threshold, positive=decision.positive)


def rejected(path: str | None, frame: int | None, code: str, detail: str, facts: RunFacts, uids: Uids | None = None) -> Result:
    """The record of an input the gate abstained on: a stable reason code and its detail."""
    return _record(path, frame, facts, uids, status="rejected", reason_code=code, reason=detail)


def error(path: str | None, frame: int | None, message: str, facts: RunFacts, kind: str = "input", uids: Uids | None = None) -> Result:
    """The record of an input that failed (decode, preprocess or its batch's inference); ``kind``
    says whether the input (``input``) or the run (``run``) failed."""
    return _record(path, frame, facts, uids, status="error", error=message, error_kind=kind)


def _record(path: str | None, frame: int | None, facts: RunFacts, uids: Uids | None, **fields: Any) -> Result:
    return Result(path, frame=frame, model=facts.model, backend=facts.backend, backend_note=facts.backend_note,
                  precision=facts.precision, dicom_uids=uids, **fields)
