"""Raw model outputs -> probabilities -> :class:`Prediction`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgedx import calibration
from edgedx.errors import ModelError
from edgedx.manifest import Activation, Manifest


@dataclass(frozen=True)
class Prediction:
    """One image's answer.

    ``label`` is the decision: for binary screening models, the positive label when its
    probability reaches ``threshold``; otherwise the arg-max. ``score`` is ``scores[label]``.
    """

    label: str
    score: float
    scores: dict[str, float]
    threshold: float | None = None
    positive: bool | None = None


def check_output(manifest: Manifest, width: int) -> None:
    """Refuse a model whose output cannot give one score per label.

    Raises:
        ModelError: naming the mismatch.
    """
    n = len(manifest.labels)
    if manifest.activation is Activation.SIGMOID and width == 1 and n == 2:
        return
    if width == 1 and manifest.activation is Activation.SOFTMAX:
        raise ModelError("the model has one output with softmax, which is always 1.0; a one-output model needs sigmoid")
    if width != n:
        raise ModelError(f"the model outputs {width} values but the manifest has {n} labels {list(manifest.labels)}")


#: The error of an input whose model output is NaN or infinite: never a decision (a NaN compares
#: false with every threshold, which would read as a negative screen).
NON_FINITE = "the model's output for this input is NaN or infinite: no answer (a broken model, or an input it cannot handle)"


def probabilities(raw: np.ndarray, manifest: Manifest) -> np.ndarray:
    """(N, K) raw outputs -> (N, len(labels)) scores in label order.

    Raises:
        ModelError: the output has the wrong width for the labels, or holds NaN or infinity.
    """
    raw = _rows(raw, manifest)
    if not np.isfinite(raw).all():
        raise ModelError("the model's output holds NaN or infinite values: the model or its conversion is broken")
    return _scores(raw, manifest)


def answers(raw: np.ndarray, manifest: Manifest, threshold: float | None = None, *, batch: int | None = None) -> list[Prediction | None]:
    """One :class:`Prediction` per row of raw outputs, or None for a row that is not finite
    (that input gets the error :data:`NON_FINITE`; the other rows are answered as usual).

    Args:
        batch: the number of images run, when known: the output must have one row for each.

    Raises:
        ModelError: the output's width does not fit the labels, or its rows the batch (every
            answer would be wrong).
    """
    raw = _rows(raw, manifest, batch)
    finite = np.isfinite(raw).all(axis=1)
    good = iter(decide(_scores(raw[finite], manifest), manifest, threshold))
    return [next(good) if ok else None for ok in finite]


def _rows(raw: np.ndarray, manifest: Manifest, batch: int | None = None) -> np.ndarray:
    """Raw outputs as float64 (N, K), K checked against the labels (a dynamic output width is only
    known now) and N against the batch."""
    raw = np.asarray(raw)
    if raw.ndim == 0 or raw.shape[0] == 0 or (batch is not None and raw.shape[0] != batch):
        raise ModelError(
            f"the model's output has shape {raw.shape}"
            + (f" for a batch of {batch}" if batch is not None else "")
            + ": expected one row of scores per image"
        )
    raw = np.asarray(raw, np.float64).reshape(raw.shape[0], -1)
    check_output(manifest, raw.shape[1])
    return raw


def _scores(raw: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Activated scores, calibrated when the manifest carries a calibration (every backend alike)."""
    probs = _activate(raw, manifest)
    if not manifest.calibration:
        return probs
    logp = calibration.log_probabilities(raw, probs, manifest.activation.value, manifest.positive_index)
    return calibration.apply(manifest.calibration, logp, manifest.positive_index)


def _activate(raw: np.ndarray, manifest: Manifest) -> np.ndarray:
    with np.errstate(over="ignore", under="ignore"):  # exp overflow is exact here: p = 0 or 1
        if manifest.activation is Activation.SOFTMAX:
            z = raw - raw.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)
        if manifest.activation is Activation.SIGMOID:
            p = 1.0 / (1.0 + np.exp(-raw))
            if p.shape[1] == 1 and len(manifest.labels) == 2:
                pos = manifest.positive_index if manifest.positive_index is not None else 1
                out = np.empty((p.shape[0], 2))
                out[:, pos], out[:, 1 - pos] = p[:, 0], 1.0 - p[:, 0]
                return out
            return p
    return raw


def decide(probs: np.ndarray, manifest: Manifest, threshold: float | None = None) -> list[Prediction]:
    """One :class:`Prediction` per row of ``probs`` (from :func:`probabilities`).

    Args:
        threshold: overrides the manifest's operating threshold (binary models only).
    """
    labels = manifest.labels
    pos = manifest.positive_index
    t = threshold if threshold is not None else manifest.threshold
    out = []
    for row in probs:
        scores = {label: float(v) for label, v in zip(labels, row)}
        if pos is not None and t is not None:
            positive = bool(row[pos] >= t)
            index = pos if positive else 1 - pos
            out.append(Prediction(labels[index], float(row[index]), scores, t, positive))
        else:
            index = int(np.argmax(row))
            out.append(Prediction(labels[index], float(row[index]), scores))
    return out
