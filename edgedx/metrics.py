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
            ppv=prec,
            npv=tn / (tn + fn) if tn + fn else None,
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


# -- uncertainty and calibration (``edgedx eval``) --------------------------------------------------

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> list[float] | None:
    """Two-sided Wilson score interval of a proportion (95% by default); None when ``n`` is 0."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _midranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def auc_delong(positive: np.ndarray, score: np.ndarray, z: float = Z95) -> tuple[float, list[float]] | None:
    """AUC and its DeLong (1988) confidence interval (normal approximation, clipped to [0, 1]).

    Uses the fast midrank form (Sun and Xu, 2014). None when one class is absent.
    """
    positive = np.asarray(positive, bool)
    score = np.asarray(score, np.float64)
    x, y = score[positive], score[~positive]
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        return None
    tz = _midranks(np.concatenate([x, y]))
    v10 = (tz[:m] - _midranks(x)) / n
    v01 = 1.0 - (tz[m:] - _midranks(y)) / m
    auc = float(v10.mean())
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    half = z * math.sqrt(max(var, 0.0))
    return auc, [max(0.0, auc - half), min(1.0, auc + half)]


def macro_auc_bootstrap(labels: np.ndarray, probs: np.ndarray, rounds: int = 200, seed: int = 0) -> list[float] | None:
    """Percentile bootstrap 95% interval of the one-vs-rest macro AUC (several classes)."""
    labels = np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        idx = rng.integers(0, len(labels), len(labels))
        aucs = [roc_auc(labels[idx] == c, probs[idx, c]) for c in range(probs.shape[1])]
        aucs = [a for a in aucs if a is not None]
        if aucs:
            values.append(float(np.mean(aucs)))
    if not values:
        return None
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def brier(labels: np.ndarray, probs: np.ndarray, positive_index: int | None = None) -> float:
    """Brier score: binary, mean (p_pos - y)^2; several classes, mean over images of sum_k (p_k - y_k)^2."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, np.float64)
    if positive_index is not None:
        return float(np.mean((probs[:, positive_index] - (labels == positive_index)) ** 2))
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def reliability(labels: np.ndarray, probs: np.ndarray, positive_index: int | None = None, bins: int = 10) -> dict[str, Any]:
    """Reliability bins and the expected calibration error (equal-width bins).

    Binary models: the positive label's probability against the observed positive rate. Several
    classes: the top-1 confidence against top-1 accuracy.
    """
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, np.float64)
    if positive_index is not None:
        conf, hit = probs[:, positive_index], (labels == positive_index).astype(float)
    else:
        conf, hit = probs.max(1), (probs.argmax(1) == labels).astype(float)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        count = int(sel.sum())
        if count:
            mean_conf, rate = float(conf[sel].mean()), float(hit[sel].mean())
            ece += count / len(conf) * abs(mean_conf - rate)
            rows.append({"low": b / bins, "high": (b + 1) / bins, "count": count, "confidence": mean_conf, "observed": rate})
    return {"ece": float(ece), "bins": rows, "over": "positive label" if positive_index is not None else "top-1"}


def roc_points(positive: np.ndarray, score: np.ndarray, max_points: int = 200) -> dict[str, list[float]] | None:
    """ROC curve: false- and true-positive rates at each distinct threshold (at most ``max_points``)."""
    positive = np.asarray(positive, bool)
    score = np.asarray(score, np.float64)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each distinct score
    tpr = np.r_[0.0, np.cumsum(y)[last] / n_pos]
    fpr = np.r_[0.0, np.cumsum(~y)[last] / n_neg]
    thresholds = np.r_[np.inf, s[last]]
    if len(tpr) > max_points:
        keep = np.unique(np.linspace(0, len(tpr) - 1, max_points).round().astype(int))
        tpr, fpr, thresholds = tpr[keep], fpr[keep], thresholds[keep]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": [None if not np.isfinite(t) else float(t) for t in thresholds]}


def uncertainty(labels: np.ndarray, probs: np.ndarray, positive_index: int | None, confusion: list[list[int]]) -> dict[str, Any]:
    """95% intervals (``<metric>_ci``), Brier score, ECE with reliability bins, and ROC points."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, np.float64)
    c = np.asarray(confusion)
    n = int(c.sum())
    out: dict[str, Any] = {"accuracy_ci": wilson_interval(int(np.trace(c)), n)}
    if positive_index is not None:
        p = positive_index
        tp = int(c[p, p])
        fn, fp = int(c[p].sum() - tp), int(c[:, p].sum() - tp)
        tn = n - tp - fn - fp
        out.update(sensitivity_ci=wilson_interval(tp, tp + fn), specificity_ci=wilson_interval(tn, tn + fp),
                   ppv_ci=wilson_interval(tp, tp + fp), npv_ci=wilson_interval(tn, tn + fn))
        delong = auc_delong(labels == p, probs[:, p])
        out["auc_ci"] = None if delong is None else delong[1]
        out["auc_ci_method"] = "DeLong"
        out["roc"] = roc_points(labels == p, probs[:, p])
    else:
        out["auc_ci"] = macro_auc_bootstrap(labels, probs)
        out["auc_ci_method"] = "bootstrap (200 resamples, percentile)"
        out["roc"] = None
    out["brier"] = brier(labels, probs, positive_index)
    rel = reliability(labels, probs, positive_index)
    out["ece"] = rel["ece"]
    out["reliability"] = rel
    return out
