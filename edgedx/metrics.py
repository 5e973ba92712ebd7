"""Classification metrics in numpy: used by training, ``edgedx eval`` and ``edgedx export verify``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None when one class is absent."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), np.float64)
    sorted_scores = np.asarray(score)[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def wilson_lower(successes: int, n: int, z: float = 1.645) -> float:
    """One-sided 95% Wilson lower bound of a proportion."""
    if n == 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - margin) / (1 + z * z / n)


def threshold_for_sensitivity(positive: np.ndarray, score: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity is >= ``target`` with 95% confidence.

    Falls back to the threshold that reaches ``target`` on the point estimate when the sample is too
    small for the bound to reach it at any threshold.
    """
    positive = np.asarray(positive, bool)
    pos_scores = np.sort(np.asarray(score)[positive])[::-1]
    n = len(pos_scores)
    if n == 0:
        raise ValueError("no positive samples to set a threshold on")
    # Thresholding at pos_scores[k-1] keeps the k highest-scoring positives (ties may keep more).
    for k in range(1, n + 1):
        if wilson_lower(k, n) >= target:
            return float(pos_scores[k - 1])
    k = min(n, math.ceil(target * n))
    return float(pos_scores[k - 1])


def summarize(
    labels: np.ndarray,
    probs: np.ndarray,
    positive_index: int | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Accuracy, AUC, sensitivity, specificity, F1 and the confusion matrix.

    Binary models (``positive_index`` set) decide at ``threshold`` (0.5 when None) on the positive
    class's probability; other models take the arg-max. AUC is one-vs-rest macro for several classes.
    """
    labels = np.asarray(labels).astype(int).reshape(-1)
    probs = np.asarray(probs, np.float64)
    k = probs.shape[1]
    if positive_index is not None:
        t = 0.5 if threshold is None else threshold
        is_pos = probs[:, positive_index] >= t
        other = 1 - positive_index
        pred = np.where(is_pos, positive_index, other)
    else:
        pred = probs.argmax(1)
    confusion = np.zeros((k, k), int)
    np.add.at(confusion, (labels, pred), 1)
    out: dict[str, Any] = {"n": int(len(labels)), "accuracy": float((pred == labels).mean()) if len(labels) else None}
    if positive_index is not None:
        tp = int(confusion[positive_index, positive_index])
        fn = int(confusion[positive_index].sum() - tp)
        fp = int(confusion[:, positive_index].sum() - tp)
        tn = int(confusion.sum() - tp - fn - fp)
        sens = tp / (tp + fn) if tp + fn else None
        spec = tn / (tn + fp) if tn + fp else None
        prec = tp / (tp + fp) if tp + fp else None
        out.update(
            auc=roc_auc(labels == positive_index, probs[:, positive_index]),
            sensitivity=sens,
            specificity=spec,
            f1=(2 * prec * sens / (prec + sens)) if prec and sens else 0.0,
            threshold=0.5 if threshold is None else float(threshold),
        )
    else:
        aucs = [roc_auc(labels == c, probs[:, c]) for c in range(k)]
        aucs = [a for a in aucs if a is not None]
        recalls = [confusion[c, c] / confusion[c].sum() for c in range(k) if confusion[c].sum()]
        out.update(
            auc=float(np.mean(aucs)) if aucs else None,
            macro_recall=float(np.mean(recalls)) if recalls else None,
            f1=_macro_f1(confusion),
        )
    out["confusion"] = confusion.tolist()
    return out


def _macro_f1(confusion: np.ndarray) -> float:
    f1s = []
    for c in range(confusion.shape[0]):
        tp = confusion[c, c]
        denom = confusion[c].sum() + confusion[:, c].sum()
        if denom:
            f1s.append(2 * tp / denom)
    return float(np.mean(f1s)) if f1s else 0.0
