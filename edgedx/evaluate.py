"""Labelled data -> model scores -> metrics at the operating threshold; and the accuracy gate.

``edgedx eval`` reports one model on a labelled set; ``edgedx export verify`` (and quantization)
compares a candidate (INT8, FP16, an engine) against its reference on the same images and fails
it past a :class:`Gate`. Runtime side: numpy only, every image through the model's own
preprocessing (:meth:`edgedx.api.Classifier.predict_proba`).

Data is either a folder with one subfolder per class (folder names matched to the model's labels,
case-insensitive) or a MedMNIST-style ``.npz`` (``{split}_images`` / ``{split}_labels``, integer
labels in the model's label order).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from edgedx import decode, metrics
from edgedx.errors import EdgedxError, InputError, UsageError

if TYPE_CHECKING:
    from edgedx.api import Classifier

log = logging.getLogger("edgedx")

NPZ_SPLITS = ("test", "val", "train")


@dataclass
class Dataset:
    """Labelled images, decoded on demand (a folder of thousands of scans is never held at once).

    ``targets`` index into ``labels`` (the model's labels, in the model's order).
    """

    labels: tuple[str, ...]
    targets: np.ndarray
    names: list[str]
    source: str
    split: str | None
    _load: Callable[[int], np.ndarray] = field(repr=False)

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> np.ndarray:
        """The decoded image ``index`` (pixel domain).

        Raises:
            InputError: the file cannot be decoded.
        """
        return self._load(index)

    def subset(self, indices: Sequence[int]) -> Dataset:
        idx = np.asarray(indices, int)
        load = self._load
        return Dataset(self.labels, self.targets[idx], [self.names[i] for i in idx], self.source, self.split,
                       lambda i: load(int(idx[i])))

    def limit(self, n: int | None) -> Dataset:
        """At most ``n`` items, evenly spread over the set (so every class keeps its share)."""
        if n is None or n >= len(self):
            return self
        return self.subset(np.linspace(0, len(self) - 1, n).round().astype(int))


@dataclass(frozen=True)
class Gate:
    """How far a candidate may fall below its reference; a drop past any limit fails it.

    Args:
        max_auc_drop: reference AUC minus candidate AUC.
        max_accuracy_drop: reference accuracy minus candidate accuracy.
        max_sensitivity_drop: binary models: drop in sensitivity at the operating threshold.
        max_flip_rate: optional limit on the fraction of decisions that change.
    """

    max_auc_drop: float = 0.005
    max_accuracy_drop: float = 0.01
    max_sensitivity_drop: float = 0.01
    max_flip_rate: float | None = None

    def failures(self, report: dict[str, Any]) -> list[str]:
        """The criteria ``report`` (from :func:`verify`) falls past, one readable line each."""
        out = []
        delta = report["delta"]
        for key, limit in (("auc", self.max_auc_drop), ("accuracy", self.max_accuracy_drop), ("sensitivity", self.max_sensitivity_drop)):
            change = delta.get(key)
            if change is not None and -change > limit + 1e-12:
                ref, cand = report["reference"][key], report["candidate"][key]
                out.append(f"{key} dropped by {-change:.4f} ({ref:.4f} -> {cand:.4f}), limit {limit}")
        if self.max_flip_rate is not None and report["flips"]["rate"] > self.max_flip_rate:
            out.append(f"{report['flips']['count']} decisions flipped ({report['flips']['rate']:.2%}), limit {self.max_flip_rate:.2%}")
        return out


class GateFailed(EdgedxError):
    """A candidate model fell past the accuracy gate; ``report`` holds the comparison."""

    exit_code = 1

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report
        super().__init__("accuracy gate failed: " + "; ".join(report["gate"]["failures"]))


def load_dataset(data: str | Path, labels: Sequence[str], split: str | None = None) -> Dataset:
    """A labelled set from a class-per-subfolder directory or a MedMNIST-style ``.npz``.

    Args:
        data: the folder or ``.npz`` file.
        labels: the model's labels; folder names map onto them case-insensitively.
        split: ``.npz`` only: test, val or train (default: test if present, else val).

    Raises:
        UsageError: the data does not exist, a folder is not a model label, or the split is missing.
    """
    path = Path(data)
    labels = tuple(labels)
    if path.is_file() and path.suffix.lower() == ".npz":
        return _load_npz(path, labels, split)
    if split is not None:
        raise UsageError("--split applies to .npz data; a folder is one split")
    if path.is_dir():
        return _load_folder(path, labels)
    raise UsageError(f"{path}: expected a folder with one subfolder per class, or a .npz file")


def _load_folder(root: Path, labels: tuple[str, ...]) -> Dataset:
    from edgedx.api import expand_paths

    by_name = {label.casefold(): i for i, label in enumerate(labels)}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UsageError(f"{root} has no class subfolders; expected one subfolder per label {list(labels)}")
    unknown = [f.name for f in folders if f.name.casefold() not in by_name]
    if unknown:
        raise UsageError(f"folders {unknown} in {root} are not labels of the model {list(labels)}")
    files: list[Path] = []
    targets: list[int] = []
    for folder in sorted(folders, key=lambda f: (by_name[f.name.casefold()], f.name)):  # in label order
        found = expand_paths([folder])
        files.extend(found)
        targets.extend([by_name[folder.name.casefold()]] * len(found))
    if not files:
        raise UsageError(f"no image or DICOM files under {root}")
    return Dataset(labels, np.asarray(targets, int), [str(f) for f in files], str(root), None,
                   lambda i: decode.decode_file(files[i])[0].image)


def _load_npz(path: Path, labels: tuple[str, ...], split: str | None) -> Dataset:
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    present = [s for s in NPZ_SPLITS if f"{s}_images" in arrays.files and f"{s}_labels" in arrays.files]
    if split is None:
        split = next((s for s in ("test", "val") if s in present), None)
        if split is None:
            raise UsageError(f"{path} has no test_* or val_* arrays (it has {arrays.files}); choose --split")
    elif split not in present:
        raise UsageError(f"{path} has no {split}_images/{split}_labels (splits here: {present})")
    images = arrays[f"{split}_images"]
    y = arrays[f"{split}_labels"]
    if y.ndim == 2 and y.shape[1] > 1:
        raise UsageError(f"{path}: {split}_labels has {y.shape[1]} columns; edgedx evaluates single-label data")
    y = y.reshape(-1).astype(int)
    if len(y) != len(images):
        raise UsageError(f"{path}: {len(images)} images but {len(y)} labels in split {split}")
    if len(y) and (y.min() < 0 or y.max() >= len(labels)):
        raise UsageError(f"{path}: labels range {y.min()}..{y.max()} but the model has {len(labels)} labels {list(labels)}")
    return Dataset(labels, y, [f"{path.name}:{split}[{i}]" for i in range(len(y))], str(path), split,
                   lambda i: np.asarray(images[i]))


def score(classifiers: Sequence[Classifier], dataset: Dataset, batch_size: int = 32,
          names: list[str] | None = None) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Scores of every classifier on the same images, decoded once.

    Args:
        names: when given, the names of the scored images are appended to it, in score order.

    Returns:
        One (N, len(labels)) array per classifier, the targets of the scored images, and the names
        of the images that could not be decoded (skipped, with a warning).
    """
    outs: list[list[np.ndarray]] = [[] for _ in classifiers]
    kept: list[int] = []
    skipped: list[str] = []
    for indices, images in _batches(dataset, batch_size, skipped):
        for out, clf in zip(outs, classifiers):
            out.append(clf.predict_proba(images))
        kept.extend(indices)
    if skipped:
        log.warning("skipped %d unreadable images (first: %s)", len(skipped), skipped[0])
    if not kept:
        raise UsageError(f"no image of {dataset.source} could be read")
    if names is not None:
        names.extend(dataset.names[i] for i in kept)
    return [np.concatenate(o) for o in outs], dataset.targets[np.asarray(kept, int)], skipped


def _batches(dataset: Dataset, size: int, skipped: list[str]) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    indices: list[int] = []
    images: list[np.ndarray] = []
    for i in range(len(dataset)):
        try:
            images.append(dataset.image(i))
        except InputError as exc:
            skipped.append(f"{dataset.names[i]}: {exc}")
            continue
        indices.append(i)
        if len(images) == size:
            yield indices, images
            indices, images = [], []
    if images:
        yield indices, images


def operating_threshold(classifier: Classifier, override: float | None = None) -> float | None:
    """The threshold decisions are taken at: ``override``, the classifier's, or the manifest's."""
    m = classifier.manifest
    if m.positive_index is None:
        if override is not None:
            raise UsageError("--threshold applies to binary screening models; this model has no positive label")
        return None
    for t in (override, getattr(classifier, "threshold", None), m.threshold):
        if t is not None:
            return float(t)
    return 0.5


def evaluate(classifier: Classifier, dataset: Dataset, threshold: float | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Metrics at the operating threshold with 95% intervals, calibration error and the ROC points.

    Accuracy, AUC, sensitivity, specificity, PPV, NPV, F1 and the confusion matrix; ``<metric>_ci``
    holds ``[low, high]`` (Wilson for proportions, DeLong for a binary AUC, bootstrap for a macro
    AUC); ``brier``, ``ece`` with its ``reliability`` bins, and ``roc`` (binary models).
    """
    t = operating_threshold(classifier, threshold)
    (probs,), targets, skipped = score([classifier], dataset, batch_size)
    m = classifier.manifest
    report = metrics.summarize(targets, probs, m.positive_index, t)
    report.update(metrics.uncertainty(targets, probs, m.positive_index, report["confusion"]))
    return {
        "model": str(classifier.model_path),
        "backend": classifier.backend,
        "data": dataset.source,
        "split": dataset.split,
        "labels": list(m.labels),
        "positive_label": m.positive_label,
        "threshold": t,
        "skipped": len(skipped),
        **report,
    }


def verify(reference: Classifier, candidate: Classifier, dataset: Dataset, gate: Gate | None = None,
           threshold: float | None = None, batch_size: int = 32, near_margin: float = 0.02) -> dict[str, Any]:
    """Compare ``candidate`` with ``reference`` on the same images and apply ``gate``.

    Both decide at the reference's operating threshold (or ``threshold``). Score drift is over the
    positive class for binary models, over all probabilities otherwise. ``flipped`` lists the
    images whose decision changed; ``near_threshold`` (binary models) those not flipped whose
    positive score lies within ``near_margin`` of the threshold in either model: the next to flip.

    Returns:
        A report whose ``gate`` section says ``passed`` and lists ``failures``.
    """
    gate = gate or Gate()
    if tuple(reference.manifest.labels) != tuple(candidate.manifest.labels):
        raise UsageError(f"the models' labels differ: {list(reference.manifest.labels)} vs {list(candidate.manifest.labels)}")
    t = operating_threshold(reference, threshold)
    names: list[str] = []
    (ref, cand), targets, skipped = score([reference, candidate], dataset, batch_size, names)
    pos = reference.manifest.positive_index
    ref_m = metrics.summarize(targets, ref, pos, t)
    cand_m = metrics.summarize(targets, cand, pos, t)
    if pos is not None:
        ref_dec, cand_dec = ref[:, pos] >= t, cand[:, pos] >= t
        drift = np.abs(ref[:, pos] - cand[:, pos])
    else:
        ref_dec, cand_dec = ref.argmax(1), cand.argmax(1)
        drift = np.abs(ref - cand)
    flips = int((ref_dec != cand_dec).sum())
    keys = ("auc", "accuracy", "sensitivity", "specificity", "f1")
    report: dict[str, Any] = {
        "reference": {"model": str(reference.model_path), "backend": reference.backend, **ref_m},
        "candidate": {"model": str(candidate.model_path), "backend": candidate.backend, **cand_m},
        "data": dataset.source,
        "split": dataset.split,
        "n": int(len(targets)),
        "skipped": len(skipped),
        "threshold": t,
        "flips": {"count": flips, "rate": flips / len(targets)},
        "flipped": _listed(np.flatnonzero(ref_dec != cand_dec), names, ref, cand, targets, reference.manifest.labels, pos),
        "near_threshold": _near(names, ref, cand, targets, reference.manifest.labels, pos, t, near_margin),
        "top1_agreement": float((ref.argmax(1) == cand.argmax(1)).mean()),
        "score_drift": {"mean_abs": float(drift.mean()), "max_abs": float(drift.max()),
                        "over": "positive class" if pos is not None else "all classes"},
        "delta": {k: _delta(ref_m.get(k), cand_m.get(k)) for k in keys},
    }
    failures = gate.failures(report)
    report["gate"] = {**asdict(gate), "passed": not failures, "failures": failures}
    return report


#: At most this many images are listed under ``flipped`` and ``near_threshold`` (their counts are complete).
MAX_LISTED = 50


def _listed(idx: np.ndarray, names: list[str], ref: np.ndarray, cand: np.ndarray, targets: np.ndarray,
            labels: Sequence[str], pos: int | None) -> list[dict[str, Any]]:
    out = []
    for i in idx[:MAX_LISTED]:
        i = int(i)
        if pos is not None:
            r, c = float(ref[i, pos]), float(cand[i, pos])
        else:
            r, c = labels[int(ref[i].argmax())], labels[int(cand[i].argmax())]
        out.append({"file": names[i], "truth": labels[int(targets[i])], "reference": r, "candidate": c})
    return out


def _near(names: list[str], ref: np.ndarray, cand: np.ndarray, targets: np.ndarray, labels: Sequence[str], pos: int | None,
          t: float | None, margin: float) -> dict[str, Any] | None:
    if pos is None or t is None:
        return None
    r, c = ref[:, pos], cand[:, pos]
    near = ((np.abs(r - t) < margin) | (np.abs(c - t) < margin)) & ((r >= t) == (c >= t))
    idx = np.flatnonzero(near)
    idx = idx[np.argsort(np.minimum(np.abs(r[idx] - t), np.abs(c[idx] - t)), kind="stable")]
    return {"margin": margin, "count": int(len(idx)), "files": _listed(idx, names, ref, cand, targets, labels, pos)}


def _delta(ref: float | None, cand: float | None) -> float | None:
    return None if ref is None or cand is None else float(cand - ref)
