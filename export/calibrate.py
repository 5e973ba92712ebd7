"""``edgedx export calibrate``: calibrated probabilities and an operating threshold for any model.

    calibrate("model.onnx", "val/", "model_cal.onnx", target_sensitivity=0.95)

Binary models get Platt scaling on the positive-vs-other log-odds, models with more classes get
temperature scaling (:mod:`edgedx.calibration`). The fit is stored in the manifest and applied by
:func:`edgedx.postprocess.probabilities`, so every backend (ONNX Runtime, TensorRT, OpenVINO)
reports the calibrated probabilities; the graph is unchanged.

The operating threshold follows the training recipe's rule (:func:`edgedx.metrics.threshold_for_sensitivity`):
the highest threshold whose sensitivity on the calibration data is at least the target with 95%
confidence (one-sided Wilson lower bound), so it holds up beyond the images it was picked on.
Without a target, a binary model keeps its decisions: the old threshold is mapped through the fit.

Fit on held-out labelled data (a validation split), never on the test set you report.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgedx import calibration, evaluate, metrics, postprocess
from edgedx.errors import ModelError, UsageError
from export.contract import manifest_of_model, staged
from export.to_onnx import require, save_with_manifest

log = logging.getLogger("edgedx")

#: Below this many positives, the Wilson margin makes the threshold very conservative: say so.
FEW_POSITIVES = 50


def calibrate(
    model: str | Path,
    data: str | Path,
    output: str | Path,
    *,
    target_sensitivity: float | None = None,
    positive: str | None = None,
    method: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Fit the calibration on labelled ``data`` and write ``output``: ``model`` with it in the manifest.

    Args:
        model: an edgedx ONNX model (with its manifest).
        data: class folders or a MedMNIST-style ``.npz``.
        target_sensitivity: binary models: pick the threshold for this sensitivity (with 95% confidence).
        positive: binary models: the label screened for, when the manifest names none.
        method: ``platt`` or ``temperature``; default platt for binary models, temperature otherwise.

    Returns:
        A summary: the fit, calibration error (ECE, Brier, log-loss) before and after, the threshold
        with the sensitivity/specificity it gives on ``data`` (95% intervals), and the manifest.

    Raises:
        UsageError: options that do not fit the model, or data without both classes.
        ModelError: the model carries no manifest.
    """
    from edgedx import manifest as manifest_mod
    from edgedx.api import Classifier, file_sha256

    onnx = require("onnx")
    model, output = Path(model), Path(output)
    found = manifest_of_model(model, output)
    labels = found.labels
    pos_label = positive or found.positive_label
    if pos_label is not None and pos_label not in labels:
        raise UsageError(f"--positive {pos_label!r} is not one of the labels {list(labels)}")
    if pos_label is not None and len(labels) != 2:
        raise UsageError(f"--positive applies to binary models; this one has {len(labels)} labels")
    pos = None if pos_label is None else labels.index(pos_label)
    method = method or ("platt" if pos is not None else "temperature")
    if method == "platt" and pos is None:
        raise UsageError("platt scaling is for binary models: name the positive label with --positive (or use --method temperature)")
    if target_sensitivity is not None and pos is None:
        raise UsageError("--target-sensitivity needs a binary model with a positive label (--positive)")

    uncalibrated = found.with_changes(calibration={})
    with Classifier(model, "onnxruntime", batch_size=batch_size) as clf:
        # The raw outputs, so the fit sees the logits at full precision, as postprocess does.
        dataset = evaluate.load_dataset(data, labels, split).limit(limit)
        (raw,), targets, skipped = evaluate.score([_RawOutputs(clf)], dataset, batch_size)
    present = np.bincount(targets, minlength=len(labels))
    if (present == 0).any():
        raise UsageError(f"{dataset.source} has no images of {[labels[i] for i in np.flatnonzero(present == 0)]}; calibration needs every class")
    probs = postprocess.probabilities(raw, uncalibrated)
    logp = calibration.log_probabilities(raw, probs, found.activation.value, pos)
    if method == "platt":
        a, b = calibration.fit_platt(logp[:, pos] - logp[:, 1 - pos], targets == pos)
        section: dict[str, Any] = {"method": "platt", "a": a, "b": b}
    else:
        section = {"method": "temperature", "temperature": calibration.fit_temperature(logp, targets)}
    calibrated = calibration.apply(section, logp, pos)
    before, after = _errors(targets, probs, logp, pos), _errors(targets, calibrated, np.log(np.clip(calibrated, 1e-300, None)), pos)
    section.update(n=int(len(targets)), fitted_on=Path(dataset.source).name + (f"[{dataset.split}]" if dataset.split else ""),
                   ece_before=before["ece"], ece_after=after["ece"], date=time.strftime("%Y-%m-%d"))

    threshold, rule = None, None
    if pos is not None:
        if target_sensitivity is not None:
            n_pos = int((targets == pos).sum())
            if n_pos < FEW_POSITIVES:
                log.warning("only %d positive images: the 95%% margin on sensitivity is wide, so the threshold is conservative", n_pos)
            threshold = metrics.threshold_for_sensitivity(targets == pos, calibrated[:, pos], target_sensitivity)
            rule = (f"highest threshold whose sensitivity on {section['fitted_on']} is >= {target_sensitivity} "
                    "with 95% confidence (one-sided Wilson lower bound)")
        else:
            old = found.threshold if found.threshold is not None and pos_label == found.positive_label else 0.5
            threshold = _mapped_threshold(section, old)
            rule = f"the previous threshold {old} mapped through the calibration (same decisions)"
    at = metrics.summarize(targets, calibrated, pos, threshold)
    at.update({k: v for k, v in metrics.uncertainty(targets, calibrated, pos, at["confusion"]).items()
               if k.endswith("_ci") and k != "auc_ci"})
    provenance = {**dict(found.provenance), "calibration": {
        "method": section["method"], "data": section["fitted_on"], "n": section["n"],
        **({"target_sensitivity": target_sensitivity} if target_sensitivity is not None else {}),
        **({"threshold_rule": rule} if rule else {}), "source_sha256": file_sha256(model)}}
    new = found.with_changes(calibration=section, positive_label=pos_label, threshold=threshold, provenance=provenance)
    new = manifest_mod.from_dict(new.to_dict(), "the calibrated manifest")  # validated like every manifest

    graph = onnx.load(str(model))
    with staged(output) as tmp:
        save_with_manifest(graph, tmp, new)
        _check_runtime(tmp, dataset, calibrated, batch_size)
    keep = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "sensitivity_ci", "specificity_ci", "ppv_ci", "npv_ci", "confusion")
    return {
        "output": str(output), "sha256": file_sha256(output), "source": str(model), "data": dataset.source, "split": dataset.split,
        "n": int(len(targets)), "skipped": len(skipped), "calibration": section,
        "before": before, "after": after, "positive_label": pos_label, "threshold": threshold, "threshold_rule": rule,
        "at_threshold": {k: at[k] for k in keep if k in at}, "manifest": new.to_dict(),
    }


class _RawOutputs:
    """A classifier's raw outputs in the place of its probabilities, for :func:`evaluate.score`."""

    def __init__(self, clf: Any) -> None:
        self.predict_proba = clf.predict_raw


def _errors(targets: np.ndarray, probs: np.ndarray, logp: np.ndarray, pos: int | None) -> dict[str, float]:
    return {"ece": metrics.reliability(targets, probs, pos)["ece"], "brier": metrics.brier(targets, probs, pos),
            "log_loss": float(-logp[np.arange(len(targets)), targets].mean())}


def _mapped_threshold(section: dict[str, Any], old: float) -> float:
    """The calibrated probability at the old threshold (Platt is monotone: decisions stay the same)."""
    if section["method"] != "platt" or not 0.0 < old < 1.0:
        return old
    margin = math.log(old) - math.log1p(-old)
    return float(calibration.sigmoid(section["a"] * margin + section["b"]))


def _check_runtime(path: Path, dataset: evaluate.Dataset, expected: np.ndarray, batch_size: int, n: int = 16) -> None:
    """The written model, through the runtime's own postprocess, gives the probabilities fitted here."""
    from edgedx.api import Classifier

    idx = np.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().astype(int)
    sub = dataset.subset(idx)
    with Classifier(path, "onnxruntime", batch_size=batch_size) as clf:
        names: list[str] = []
        (got,), _, _ = evaluate.score([clf], sub, batch_size, names)
    # ``expected`` rows follow the full set's order; the subset's rows are those of its files.
    rows = {name: i for i, name in enumerate(dataset.names)}
    want = expected[[rows[name] for name in names]] if len(expected) == len(dataset) else None
    if want is not None and np.abs(got - want).max() > 1e-6:
        raise ModelError(f"the calibrated model's runtime probabilities differ from the fit by {np.abs(got - want).max():.3g}")
