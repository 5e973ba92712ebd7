"""A training run -> the models edgedx ships: FP32 ONNX and CPU INT8 ONNX, manifests and provenance.

    python -m export.bundle runs/default --out edgedx/models --calib-dir runs/split/train \\
        --num-calib 200 --eval runs/split/val \\
        --accepts '{"modalities": ["CR", "DX"], "photometric": ["MONOCHROME1", "MONOCHROME2"], "min_size": 64}'


The graph gets two extra outputs (:mod:`export.explain`): pooled penultimate ``features`` and a
class-activation map ``cam``; ``--flip-tta`` averages the model over the image and its mirror
image inside the graph. The out-of-distribution score (:mod:`edgedx.ood`) is fitted on the
training images' features and its threshold set per file on validation (clean and the shifted
copy of :mod:`export.shift`) so that at most ``--ood-reject`` of them would be rejected; its
image-layout part (:func:`edgedx.ood.layout`, off with ``--no-layout``) likewise, at most
``--layout-reject``.

Reads ``model.pt`` (a state dict of :class:`export.models.ScreeningCNN`) and ``training.json``
(written by :mod:`export.train`) from the run, exports ``chest_xray_cnn_fp32.onnx``, and quantizes
``chest_xray_cnn_int8.onnx`` for ONNX Runtime on the CPU (U8S8, per-channel weights). With
evaluation data, the INT8 model must pass the accuracy gate against the FP32 one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from edgedx.errors import EdgedxError, ModelError
from edgedx.evaluate import Gate
from edgedx.manifest import SCHEMA_VERSION, Manifest, from_dict

FP32_NAME = "chest_xray_cnn_fp32.onnx"
INT8_NAME = "chest_xray_cnn_int8.onnx"
#: Compared image count for the FP32 export check (the calibration set's first, evenly spread).
COMPARE_IMAGES = 16


def read_run(run_dir: Path) -> dict[str, Any]:
    """``training.json`` of a run, with ``model.pt`` present.

    Raises:
        ModelError: either file is missing or the JSON lacks what the export needs.
    """
    run_dir = Path(run_dir)
    for name in ("model.pt", "training.json"):
        if not (run_dir / name).is_file():
            raise ModelError(f"{run_dir / name} not found: is the training run finished?")
    try:
        info = json.loads((run_dir / "training.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {run_dir / 'training.json'}: {exc}") from None
    missing = [k for k in ("labels", "preprocess", "widths") if k not in info]
    if missing:
        raise ModelError(f"{run_dir / 'training.json'} lacks {missing}")
    return info


def run_manifest(run_dir: Path, info: dict[str, Any], accepts: dict[str, Any] | None = None) -> Manifest:
    """The manifest of a run's model: contract from ``training.json``, provenance from the run.

    ``accepts`` is the input gate's section (what inputs the model is meant for).
    """
    from edgedx.api import file_sha256

    p = info["preprocess"]
    training = info.get("training", {})
    validation = {k: v for k, v in (info.get("validation") or {}).items() if k != "confusion"}
    provenance = {
        "source_model": f"{Path(run_dir).name}/model.pt",  # run-relative: no machine paths in the model
        "source_sha256": file_sha256(Path(run_dir) / "model.pt"),
        "architecture": info.get("architecture", "ScreeningCNN"),
        "widths": info["widths"],
        "training_data": training.get("data"),
        "split": training.get("split"),
        "train_images": training.get("train_images"),
        "val_images": training.get("val_images"),
        "validation": validation,
        "validation_shifted": {k: v for k, v in (info.get("validation_shifted") or {}).items() if k != "confusion"} or None,
        "selected_on": info.get("selected_on"),
        "trained": training.get("date"),
        "training_command": training.get("command"),
        "finalize_command": training.get("finalize_command"),
        "calibration": info.get("calibration"),
        "training_minutes": training.get("minutes"),
        "epochs": training.get("epochs_run"),
        "torch": training.get("torch"),
        "machine": training.get("machine"),
    }
    return from_dict({
        "schema_version": SCHEMA_VERSION,
        "labels": info["labels"],
        "input": {"layout": "NCHW", "height": p["height"], "width": p["width"], "channels": p["channels"]},
        "preprocess": {k: p[k] for k in ("resize", "scale", "mean", "std") if k in p},
        "output": {"activation": "softmax"},
        "positive_label": info.get("positive_label"),
        "threshold": info.get("threshold") if info.get("positive_label") else None,
        "accepts": accepts or {},
        "provenance": {k: v for k, v in provenance.items() if v is not None},
    }, str(Path(run_dir) / "training.json"))


def bundle_default(
    run_dir: Path,
    out_dir: Path,
    calib_images: Sequence[Path],
    eval_data: str | Path | None = None,
    *,
    num_calib: int = 200,
    method: str = "percentile",
    split: str | None = None,
    gate: Gate = Gate(),
    accepts: dict[str, Any] | None = None,
    flip_tta: bool = False,
    ood_images: int = 1500,
    ood_reject: float = 0.002,
    layout: bool = True,
    layout_reject: float = 0.002,
) -> dict[str, Any]:
    """Export a run's model as the bundled FP32 and CPU INT8 ONNX files.

    Args:
        calib_images: real scans for calibration (and the FP32 export check).
        eval_data: labelled data to gate the INT8 model against the FP32 one (recommended; not
            the training data).
        method: calibration method; percentile (99.999) keeps small CNNs' accuracy best in our
            runs, entropy is the alternative.
        flip_tta: mirror-image test-time augmentation inside the graph.
        ood_images: training images (evenly spread over ``calib_images``) the OOD score is fitted on.
        ood_reject: share of validation images (clean and shifted) allowed past the OOD threshold.
        layout: add the image-layout part of the OOD score (:func:`edgedx.ood.layout`).
        layout_reject: share of validation images allowed past the layout threshold.

    Returns:
        A summary: both files' results and, with ``eval_data``, the gate report.

    Raises:
        GateFailed: the INT8 model fell past ``gate``.
    """
    from export import quantize as quant
    from export.to_onnx import export_torch

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    info = read_run(run_dir)
    manifest = run_manifest(run_dir, info, accepts)
    calib = quant.select_images(calib_images, num_calib)
    arch_kwargs = {"in_channels": manifest.preprocess.channels, "num_classes": len(manifest.labels), "widths": tuple(info["widths"])}
    fp32 = export_torch(run_dir / "model.pt", out_dir / FP32_NAME, manifest, images=quant.select_images(calib, COMPARE_IMAGES),
                        architecture="screening_cnn", arch_kwargs=arch_kwargs, explain=True, flip_tta=flip_tta)
    from edgedx.api import file_sha256
    from export import trust_fit

    # The FP32 file is final (OOD parameters and threshold) before it is quantized, so the INT8
    # model's provenance names the hash of the FP32 file that ships.
    train_feats, train_samples = trust_fit.features(out_dir / FP32_NAME, quant.select_images(calib_images, ood_images))
    trust_fit.set_ood(out_dir / FP32_NAME, trust_fit.fit_params(train_feats, train_samples if layout else None), None)
    report: dict[str, Any] = {}
    sets = trust_fit.validation_sets(Path(eval_data), info) if eval_data is not None else None
    if sets is not None:
        report[FP32_NAME] = trust_fit.finish_one(out_dir / FP32_NAME, sets, ood_reject, layout_reject)
    fp32["sha256"] = file_sha256(out_dir / FP32_NAME)
    options = quant.QuantizeOptions(target=quant.Target.CPU, method=quant.Method(method), num_images=num_calib, cache_dir=run_dir)
    int8 = quant.quantize(out_dir / FP32_NAME, out_dir / INT8_NAME, calib, options, eval_data=eval_data, split=split, gate=gate)
    if sets is not None:
        report[INT8_NAME] = trust_fit.finish_one(out_dir / INT8_NAME, sets, ood_reject, layout_reject)
        report["cam_correlation_fp32_int8"] = trust_fit.cam_agreement(out_dir / FP32_NAME, out_dir / INT8_NAME, sets["val"].images)
        int8["sha256"] = file_sha256(out_dir / INT8_NAME)
    summary = {"fp32": {k: v for k, v in fp32.items() if k != "manifest"}, "int8": int8, "validation": report}
    from edgedx.manifest import load as load_manifest

    summary["manifest"] = load_manifest(out_dir / INT8_NAME).to_dict()
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="training run folder with model.pt and training.json")
    ap.add_argument("--out", type=Path, default=Path("edgedx/models"))
    ap.add_argument("--calib-dir", type=Path, required=True, help="real scans (walked recursively)")
    ap.add_argument("--num-calib", type=int, default=200)
    ap.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="percentile")
    ap.add_argument("--eval", dest="eval_data", default=None, help="labelled data (class folders or .npz) for the INT8 gate")
    ap.add_argument("--split", default=None)
    ap.add_argument("--flip-tta", action="store_true", help="average over the image and its mirror image, inside the graph")
    ap.add_argument("--ood-reject", type=float, default=0.002,
                    help="share of validation chest X-rays (clean and shifted) the OOD threshold may reject")
    ap.add_argument("--no-layout", dest="layout", action="store_false",
                    help="no image-layout part in the OOD score (it suits inputs with one typical layout, like chest radiographs)")
    ap.add_argument("--layout-reject", type=float, default=0.002,
                    help="share of validation images the image-layout threshold may reject")
    ap.add_argument("--accepts", type=json.loads, default=None,
                    help='the input gate\'s section as JSON, e.g. \'{"modalities": ["CR", "DX"], "min_size": 64}\'')
    args = ap.parse_args(argv)
    from edgedx.api import expand_paths

    try:
        summary = bundle_default(args.run_dir, args.out, expand_paths([args.calib_dir]), args.eval_data,
                                 num_calib=args.num_calib, method=args.method, split=args.split, accepts=args.accepts,
                                 flip_tta=args.flip_tta, ood_reject=args.ood_reject,
                                 layout=args.layout, layout_reject=args.layout_reject)
    except EdgedxError as exc:
        print(f"edgedx: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
