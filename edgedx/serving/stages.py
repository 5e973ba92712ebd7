"""The work of each served step, on edgedx's own code: file bytes -> model input, logits -> record.

Triton runs these inside its Python backend (:mod:`edgedx.serving.triton_models`); they import no
Triton module, so tests run them directly. An input that cannot be classified still produces a
model input (zeros) and a *status* that travels beside it: a Triton ensemble fails the whole
request when one step returns an error, so decode failures and gate rejections must reach the
client as records, not as failed requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgedx import decode, gate, ood, postprocess, preprocess, trust
from edgedx.errors import EdgedxError
from edgedx.manifest import Manifest

#: Status of an input that went through to the model.
OK = ""


@dataclass(frozen=True)
class Prepared:
    """One input, ready for the model: ``sample`` is zeros unless ``status`` is :data:`OK`.

    ``status`` is empty for a good input, else a JSON object ``{"status": "rejected", "reason":
    ...}`` or ``{"status": "error", "error": ...}`` that the postprocessing step turns into the record.
    """

    sample: np.ndarray
    status: str = OK


def decode_options(manifest: Manifest, base: decode.DecodeOptions | None = None, use_gate: bool = True) -> decode.DecodeOptions:
    """The options :class:`edgedx.api.Classifier` decodes with (:meth:`DecodeOptions.for_model`)."""
    spec = manifest.preprocess
    return (base or decode.DecodeOptions()).for_model(spec.width, spec.height, spec.channels,
                                                      judges_color=use_gate and "color" in manifest.accepts)


def layout_plan(manifest: Manifest) -> trust.Plan:
    """The image-layout part of the OOD check for :func:`prepare` (build it once per model)."""
    return trust.Plan(layout=ood.layout_scorer(manifest.ood))


def prepare(data: bytes, manifest: Manifest, options: decode.DecodeOptions, use_gate: bool = True,
            plan: trust.Plan | None = None) -> Prepared:
    """Decode (first frame), gate and preprocess one file's bytes, as ``edgedx classify`` does.

    ``plan``: :func:`layout_plan` of ``manifest``, built once by a caller that prepares many files.
    """
    spec = manifest.preprocess
    try:
        frames = decode.decode_bytes(data, options)
        image, info = frames[0].image, frames[0].info
        rejected = gate.check(image, info, manifest.accepts) if use_gate else None
        if rejected is None:
            sample = preprocess.resize(image, spec)
            if use_gate:  # the image-layout part of the OOD check, as classify runs it
                rejected = trust.check_layout(plan or layout_plan(manifest), sample)
            if rejected is None:
                return Prepared(preprocess.normalize(sample, spec))
        return Prepared(np.zeros(spec.sample_shape(), np.float32), json.dumps({"status": "rejected", "reason_code": rejected.code, "reason": rejected.detail}))
    except EdgedxError as exc:
        message = str(exc)
    except Exception as exc:  # a decoder bug must not fail the request (and the batch with it)
        message = f"cannot decode: {type(exc).__name__}"
    return Prepared(np.zeros(spec.sample_shape(), np.float32), json.dumps({"status": "error", "error": message}))


def records(raw: np.ndarray, statuses: list[str], manifest: Manifest) -> list[dict[str, Any]]:
    """One record per row of the model's raw output: the decision for good inputs, the carried
    status for the others.

    A record holds ``status`` and, as :class:`edgedx.api.Result` names them, ``label``, ``score``,
    ``scores``, ``threshold``, ``positive``, ``reason_code``, ``reason`` and ``error``.
    """
    if len(statuses) != raw.shape[0]:
        raise ValueError(f"{raw.shape[0]} output rows for {len(statuses)} statuses")
    predictions = postprocess.answers(raw, manifest)
    out = []
    for status, pred in zip(statuses, predictions):
        if status:
            carried = json.loads(status)
            out.append({"status": carried["status"], "reason_code": carried.get("reason_code"), "reason": carried.get("reason"),
                        "error": carried.get("error")})
        elif pred is None:  # NaN/inf from the model: an error record, never a decision
            out.append({"status": "error", "reason_code": None, "reason": None, "error": postprocess.NON_FINITE})
        else:
            out.append({
                "status": "ok", "label": pred.label, "score": pred.score, "scores": pred.scores,
                "threshold": pred.threshold, "positive": pred.positive,
            })
    return out
