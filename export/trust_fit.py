"""Bundle-time fitting of the trust outputs: the OOD score's parameters and threshold, and the
validation report (clean and shifted) of the exported files, with FP32/INT8 CAM agreement."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgedx import decode, metrics, ood, preprocess
from edgedx.errors import ModelError
from edgedx.manifest import Manifest
from edgedx.manifest import load as load_manifest

log = logging.getLogger("edgedx")


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_outputs(path: Path, images: Sequence[np.ndarray], batch_size: int = 32) -> tuple[Manifest, dict[str, np.ndarray]]:
    """All graph outputs of the ONNX file at ``path`` for decoded images (through the model's preprocessing)."""
    manifest = load_manifest(path)
    if manifest is None:
        raise ModelError(f"{path} has no edgedx manifest")
    sess = _session(path)
    names = [o.name for o in sess.get_outputs()]
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, len(images), batch_size):
        batch = preprocess.apply_batch(list(images[start : start + batch_size]), manifest.preprocess)
        for n, o in zip(names, sess.run(names, {sess.get_inputs()[0].name: batch})):
            chunks[n].append(o)
    return manifest, {n: np.concatenate(v) for n, v in chunks.items()}


def features(path: Path, files: Sequence[Path]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pooled penultimate features of ``files`` (decoded like the runtime decodes them), and the
    images resized as the model takes them (for the layout score)."""
    images = [decode.decode_file(f)[0].image for f in files]
    manifest, outs = run_outputs(path, images)
    if not manifest.features_output:
        raise ModelError(f"{path.name} has no features output")
    return outs[manifest.features_output], [preprocess.resize(im, manifest.preprocess) for im in images]


def fit_params(train_features: np.ndarray, layout_samples: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """The ``ood`` section without thresholds: the feature score, and the image-layout score when
    ``layout_samples`` (training images resized as the model takes them) are given."""
    params = ood.fit(train_features)
    params["fitted_on"] = f"{len(train_features)} training images"
    if layout_samples is not None:
        params["layout"] = {**ood.fit_layout(list(layout_samples)), "threshold": None, "fitted_on": f"{len(layout_samples)} training images"}
    return params


def set_ood(path: Path, params: dict[str, Any], threshold: float | None, extra: dict[str, Any] | None = None,
            provenance: dict[str, Any] | None = None) -> None:
    """Rewrite the manifest embedded in ``path`` with this ``ood`` section (and provenance additions)."""
    import onnx

    from export.to_onnx import save_with_manifest

    manifest = load_manifest(path)
    model = onnx.load(str(path))
    section = {**params, "threshold": None if threshold is None else float(f"{threshold:.6g}"), **(extra or {})}
    changes: dict[str, Any] = {"ood": section}
    if provenance:
        changes["provenance"] = {**dict(manifest.provenance), **provenance}
    save_with_manifest(model, path, manifest.with_changes(**changes))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def cam_correlation(a: np.ndarray, b: np.ndarray, positive_index: int) -> np.ndarray:
    """Per-image Pearson correlation of two models' positive-minus-negative CAM maps."""
    ma = (a[:, positive_index] - a[:, 1 - positive_index]).reshape(len(a), -1)
    mb = (b[:, positive_index] - b[:, 1 - positive_index]).reshape(len(b), -1)
    ma = ma - ma.mean(1, keepdims=True)
    mb = mb - mb.mean(1, keepdims=True)
    return (ma * mb).sum(1) / np.maximum(np.linalg.norm(ma, axis=1) * np.linalg.norm(mb, axis=1), 1e-12)


def validation_sets(val_dir: Path, info: dict[str, Any], seed: int = 0, more_draws: int = 5) -> dict[str, Any]:
    """The clean validation set of ``val_dir``, its shifted copy (:mod:`export.shift`; the draw
    training selected and calibrated on) and ``more_draws`` further shifted copies pooled into
    ``shifted_more`` (draws training never saw: an honest estimate, and a larger sample for the
    out-of-distribution thresholds), as train.Dataset."""
    from export.train import Dataset, load_folder, make_shifted

    val, classes = load_folder(val_dir)
    positive = info.get("positive_label")
    pos = classes.index(positive) if positive in classes else None
    shifted = make_shifted(val, pos, seed)
    if shifted is None:
        return {"val": val}
    more = [make_shifted(val, pos, seed + 7919 * (k + 1)) for k in range(more_draws)]
    out = {"val": val, "shifted_val": shifted}
    if more:
        out["shifted_more"] = Dataset([im for d in more for im in d.images], np.concatenate([d.labels for d in more]),
                                      [g for d in more for g in d.groups])
    return out


def _pooled(scores: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """The clean scores, and every shifted set's scores pooled into one sample."""
    clean = [(n, s) for n, s in scores if not n.startswith("shifted")]
    shifted = [s for n, s in scores if n.startswith("shifted")]
    return clean + ([("shifted (pooled)", np.concatenate(shifted))] if shifted else [])


def finish_one(path: Path, sets: dict[str, Any], reject: float, layout_reject: float = 0.002) -> dict[str, Any]:
    """Validation metrics of one file on each set, and its OOD thresholds (written into its manifest):
    the higher of the ``1 - reject`` quantiles of the feature score on the clean set and on all
    shifted sets pooled, and likewise at ``1 - layout_reject`` for the image-layout score (when the
    section has one)."""
    entry: dict[str, Any] = {}
    scores, layout_scores = [], []
    for name, data in sets.items():
        manifest, outs = run_outputs(path, data.images)
        probs = _softmax(outs[manifest.output_name or "logits"].astype(np.float64))
        entry[name] = metrics.summarize(data.labels, probs, manifest.positive_index, manifest.threshold)
        if manifest.features_output and manifest.ood:
            scores.append((name, ood.Scorer(manifest.ood).score(outs[manifest.features_output])))
            if (scorer := ood.layout_scorer(manifest.ood)) is not None:
                vectors = np.stack([ood.layout(preprocess.resize(im, manifest.preprocess), scorer.size) for im in data.images])
                layout_scores.append((name, scorer.score(vectors)))
    if scores:
        threshold = max(float(np.quantile(s, 1 - reject)) for _, s in _pooled(scores))
        entry["ood_threshold"] = threshold
        entry["ood_rejected"] = {name: float(np.mean(s > threshold)) for name, s in scores}
        section = dict(load_manifest(path).ood)
        if layout_scores:
            limit = max(float(np.quantile(s, 1 - layout_reject)) for _, s in _pooled(layout_scores))
            entry["layout_threshold"] = limit
            entry["layout_rejected"] = {name: float(np.mean(s > limit)) for name, s in layout_scores}
            either = {name: float(np.mean((s > threshold) | (ls > limit))) for (name, s), (_, ls) in zip(scores, layout_scores)}
            entry["ood_rejected_either"] = either
            section["layout"] = {**section["layout"], "threshold": float(f"{limit:.6g}"),
                                 "threshold_rule": f"higher of the {1 - layout_reject:.3g} quantiles of the clean and the pooled shifted validation scores",
                                 "validation_rejected": entry["layout_rejected"]}
        set_ood(path, section, threshold,
                {"threshold_rule": f"higher of the {1 - reject:.3g} quantiles of the clean and the pooled shifted validation scores",
                 "validation_rejected": entry["ood_rejected"],
                 **({"validation_rejected_either": entry["ood_rejected_either"]} if layout_scores else {})},
                {"validation_shifted": {k: v for k, v in entry.get("shifted_val", {}).items() if k != "confusion"},
                 **({"validation_shifted_more": {k: v for k, v in entry["shifted_more"].items() if k != "confusion"}}
                    if "shifted_more" in entry else {})})
    return entry


def cam_agreement(fp32: Path, int8: Path, images: Sequence[np.ndarray]) -> dict[str, float] | None:
    """Per-scan correlation of the two files' decision maps (mean, lowest, 5th percentile)."""
    m32, a = run_outputs(fp32, images)
    m8, b = run_outputs(int8, images)
    if not (m32.cam_output and m8.cam_output and m32.positive_index is not None):
        return None
    r = cam_correlation(a[m32.cam_output], b[m8.cam_output], m32.positive_index)
    return {"mean": float(r.mean()), "min": float(r.min()), "p05": float(np.quantile(r, 0.05)), "scans": len(r)}
