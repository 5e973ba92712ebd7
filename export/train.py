"""Training recipe for edgedx's screening CNNs (plain torch, CPU friendly, reproducible).

    python -m export.train ../shared/data/chest_xray_kermany_224/train --out runs/default
    python -m export.train ../shared/data/pneumoniamnist/pneumoniamnist_trainval.npz --size 64 --out runs/pmnist

Data: a folder with one subfolder per class (labels from folder names, sorted), or a MedMNIST
``.npz`` with ``train_*``/``val_*`` keys. A folder is split into train/validation by patient
(file names such as ``person12_virus_3.jpeg`` and ``IM-0115-0001.jpeg`` name the patient), so no
patient's images sit on both sides.

Every image goes through :func:`edgedx.preprocess.apply`, the runtime's own preprocessing.
Augmentation happens before it, in the pixel domain: geometry (rotation, shift, zoom, flip) and,
against acquisition shift, exposure (gamma, contrast, brightness), resolution (down/up-sampling,
blur) and noise. The operating threshold is the highest one whose validation sensitivity is still
>= the target with 95% confidence (Wilson lower bound), so it holds up beyond the split it was
picked on.

Writes ``model.pt`` (state dict), ``training.json`` (spec, labels, threshold, metrics, history).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from edgedx import decode, metrics, preprocess
from edgedx.calibration import fit_platt
from edgedx.preprocess import PreprocessSpec
from export.models import ScreeningCNN, freeze_batchnorm, load_folded_onnx
from export.shift import Augmenter, shifted_copy  # noqa: F401  (Augmenter: public here since 0.1)

MEDMNIST_LABELS = {
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal_benign"],
    "retinamnist": ["grade0", "grade1", "grade2", "grade3", "grade4"],
}
MEDMNIST_POSITIVE = {"pneumoniamnist": "pneumonia", "breastmnist": "malignant"}
_PATIENT = [re.compile(r"^(person\d+)_"), re.compile(r"^((?:NORMAL2-)?IM-\d+)-")]


@dataclass
class Dataset:
    images: list[np.ndarray]  # decoded, pixel domain
    labels: np.ndarray
    groups: list[str]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def patient_id(name: str) -> str:
    for pattern in _PATIENT:
        if m := pattern.match(name):
            return m.group(1)
    return Path(name).stem


def load_folder(root: Path, limit_per_class: int | None = None) -> tuple[Dataset, list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels, groups = [], [], []
    for index, cls in enumerate(classes):
        files = sorted(f for f in (root / cls).iterdir() if f.is_file() and not f.name.startswith("."))
        for f in files[:limit_per_class]:
            try:
                img = decode.decode_file(f)[0].image
            except Exception as exc:  # one unreadable file must not stop a training run
                log(f"skipping {f}: {exc}")
                continue
            images.append(img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
            labels.append(index)
            groups.append(f"{cls}/{patient_id(f.name)}")
    return Dataset(images, np.asarray(labels), groups), classes


def link_split(root: Path, out: Path, val_fraction: float, seed: int) -> dict[str, int]:
    """Write ``out/{train,val}/<class>/`` symlinks for the split a run on ``root`` uses.

    The split needs only file names, so nothing is decoded; evaluation, calibration and the INT8
    gate then read held-out patients from ``out/val`` and training patients from ``out/train``.
    """
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels, groups = [], [], []
    for index, cls in enumerate(classes):
        for f in sorted(f for f in (root / cls).iterdir() if f.is_file() and not f.name.startswith(".")):
            files.append(f.resolve())
            labels.append(index)
            groups.append(f"{cls}/{patient_id(f.name)}")
    train, val = split_by_group(Dataset(files, np.asarray(labels), groups), val_fraction, seed)
    counts = {}
    for name, part in (("train", train), ("val", val)):
        for f, y in zip(part.images, part.labels):
            dest = out / name / classes[y] / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                dest.symlink_to(f)
        counts[name] = len(part.labels)
    return counts


def split_by_group(data: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Stratified by class, grouped by patient."""
    rng = np.random.default_rng(seed)
    val_groups: set[str] = set()
    for cls in np.unique(data.labels):
        groups = sorted({g for g, y in zip(data.groups, data.labels) if y == cls})
        rng.shuffle(groups)
        val_groups.update(groups[: max(1, round(len(groups) * val_fraction))])
    is_val = np.array([g in val_groups for g in data.groups])
    pick = lambda mask: Dataset([im for im, m in zip(data.images, mask) if m], data.labels[mask], [g for g, m in zip(data.groups, mask) if m])  # noqa: E731
    return pick(~is_val), pick(is_val)


def load_npz(path: Path) -> tuple[Dataset, Dataset, list[str]]:
    arrays = np.load(path)
    name = path.stem.split("_")[0]
    n_classes = int(max(arrays["train_labels"].max(), arrays["val_labels"].max())) + 1
    classes = MEDMNIST_LABELS.get(name, [f"class_{i}" for i in range(n_classes)])

    def make(split: str) -> Dataset:
        imgs = arrays[f"{split}_images"]
        return Dataset(list(imgs), arrays[f"{split}_labels"].reshape(-1).astype(np.int64), [str(i) for i in range(len(imgs))])

    return make("train"), make("val"), classes


def batches(data: Dataset, spec: PreprocessSpec, batch_size: int, augment: Augmenter | None, order: np.ndarray):
    buf = spec.buffer(batch_size)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, j in enumerate(idx):
            img = data.images[j]
            preprocess.apply(augment(img) if augment else img, spec, buf[i])
        yield torch.from_numpy(buf[: len(idx)].copy()), torch.from_numpy(data.labels[idx])


def predict_logits(model: nn.Module, data: Dataset, spec: PreprocessSpec, batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for x, _ in batches(data, spec, batch_size, None, np.arange(len(data.labels))):
            out.append(model(x).numpy())
    return np.concatenate(out).astype(np.float64)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def predict(model: nn.Module, data: Dataset, spec: PreprocessSpec, batch_size: int = 64) -> np.ndarray:
    return softmax(predict_logits(model, data, spec, batch_size))


def recalibrate_batchnorm(model: nn.Module, data: Dataset, spec: PreprocessSpec, max_images: int = 2000) -> None:
    """Re-estimate BatchNorm statistics on clean images.

    During training they average over augmented batches (exposure, blur, noise), which shifts every
    clean image's logits at inference and leaves the probabilities badly calibrated.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the passes below
    model.train()
    idx = np.linspace(0, len(data.labels) - 1, min(max_images, len(data.labels))).astype(int)
    with torch.no_grad():
        for x, _ in batches(data, spec, 64, None, idx):
            model(x)
    for m in norms:
        m.momentum = 0.1
    model.eval()


def fold_platt(model: ScreeningCNN, a: float, b: float, pos_index: int) -> None:
    """Make the model itself output calibrated probabilities: softmax(a * z + b * e_pos) is
    sigmoid(a * (z_pos - z_other) + b) for two classes."""
    head = model.head[-1]
    with torch.no_grad():
        head.weight.mul_(a)
        head.bias.mul_(a)
        head.bias[pos_index] += b


def finalize(model: ScreeningCNN, train: Dataset, val: Dataset, spec: PreprocessSpec, pos_index: int | None, target: float,
             bn_recalibrate: bool = False, shifted: Dataset | None = None, threshold_on: str = "shifted") -> dict:
    """Calibrated probabilities (binary models), then the threshold; optionally clean BatchNorm statistics first.

    With a ``shifted`` validation set (see :mod:`export.shift`), Platt scaling is fitted on it (its
    class mix is the shifted prior). The threshold is the highest whose sensitivity reaches
    ``target`` at the 95% Wilson lower bound on the set ``threshold_on`` names: ``shifted`` (the
    default: the operating point is set for the acquisition shift a new site brings, under its class
    prior), ``clean``, or ``both`` (the lower of the two thresholds: sensitivity holds on both sets,
    at the price of specificity on shifted images). Without a shifted set it is the clean one's.

    BatchNorm re-estimation is off by default: on the validation splits it lowered AUC slightly for
    PneumoniaMNIST and BreastMNIST, and the statistics of augmented batches span more acquisitions.
    """
    out: dict = {"batchnorm": "training statistics (augmented batches)"}
    if bn_recalibrate:
        recalibrate_batchnorm(model, train, spec)
        out["batchnorm"] = "re-estimated on clean training images"
    calib = shifted if shifted is not None else val
    if pos_index is not None:
        logits = predict_logits(model, calib, spec)
        margin = logits[:, pos_index] - logits[:, 1 - pos_index]
        a, b = fit_platt(margin, calib.labels == pos_index)
        fold_platt(model, a, b, pos_index)
        out["platt"] = {"a": a, "b": b, "fitted_on": "shifted validation set" if shifted is not None else "validation split"}
    probs = predict(model, val, spec)
    probs_shifted = predict(model, shifted, spec) if shifted is not None else None
    threshold = None
    if pos_index is not None:
        threshold = metrics.threshold_for_sensitivity(val.labels == pos_index, probs[:, pos_index], target)
        out["threshold_clean"] = threshold
        if probs_shifted is not None:
            out["threshold_shifted"] = metrics.threshold_for_sensitivity(shifted.labels == pos_index, probs_shifted[:, pos_index], target)
            threshold = {"clean": threshold, "shifted": out["threshold_shifted"], "both": min(threshold, out["threshold_shifted"])}[threshold_on]
            out["threshold_rule"] = (f"highest threshold whose sensitivity is >= {target} at the 95% Wilson lower bound on the "
                                     + {"clean": "clean validation set", "shifted": "shifted validation set",
                                        "both": "clean and the shifted validation sets (the lower threshold)"}[threshold_on])
    out["threshold"] = threshold
    out["validation"] = metrics.summarize(val.labels, probs, pos_index, threshold)
    if probs_shifted is not None:
        out["validation_shifted"] = metrics.summarize(shifted.labels, probs_shifted, pos_index, threshold)
    return out


def make_shifted(val: Dataset, pos_index: int | None, seed: int) -> Dataset | None:
    """The shifted validation set of :mod:`export.shift` (gray images only), or None."""
    if not val.images or val.images[0].ndim != 2:
        return None
    images, labels, idx = shifted_copy(val.images, val.labels, pos_index, seed + 1000)
    return Dataset(images, labels, [val.groups[i] for i in idx])


def dataset_stats(data: Dataset, spec: PreprocessSpec, n: int = 512) -> tuple[float, float]:
    """Mean and std of the scaled (0..1) training pixels, through the same preprocessing."""
    unit = spec.with_changes(mean=(0.0,), std=(1.0,))
    idx = np.linspace(0, len(data.images) - 1, min(n, len(data.images))).astype(int)
    x = preprocess.apply_batch([data.images[i] for i in idx], unit)
    return float(x.mean()), float(x.std())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="class-per-subfolder directory or MedMNIST .npz")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--widths", default="24,32,64,128,256")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--max-minutes", type=float, default=60.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--val-fraction", type=float, default=0.15)
    ap.add_argument("--target-sensitivity", type=float, default=0.95)
    ap.add_argument("--positive", default=None, help="positive label of a binary model (default: PNEUMONIA/pneumonia/malignant)")
    ap.add_argument("--limit-per-class", type=int, default=None, help="smoke runs: use only this many files per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--finalize-only", action="store_true",
                    help="re-run only the final step (BatchNorm statistics, calibration, threshold) on OUT/model_raw.pt")
    ap.add_argument("--crop-scale", default="0.4,1.0", help="area fractions of the random resized crop (training augmentation)")
    ap.add_argument("--init-onnx", type=Path, default=None,
                    help="warm start from an FP32 ONNX export of the same architecture (BatchNorm folded; statistics frozen)")
    ap.add_argument("--select-on", choices=["shifted", "clean"], default="shifted",
                    help="validation set whose AUC picks the best epoch (shifted: the acquisition-shifted copy)")
    ap.add_argument("--threshold-on", choices=["shifted", "clean", "both"], default="shifted",
                    help="validation set the operating threshold is set on (default: the shifted one; both: the lower threshold)")
    ap.add_argument("--bn-recalibrate", action="store_true", help="re-estimate BatchNorm statistics on clean images before calibrating")
    ap.add_argument("--link-split", type=Path, default=None, metavar="DIR",
                    help="only write DIR/train and DIR/val symlink folders of this run's patient split, then exit")
    args = ap.parse_args(argv)
    if args.link_split is not None:
        log(f"split written to {args.link_split}: {link_split(args.data, args.link_split, args.val_fraction, args.seed)}")
        return 0

    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data.suffix == ".npz":
        train, val, classes = load_npz(args.data)
        positive = args.positive or MEDMNIST_POSITIVE.get(args.data.stem.split("_")[0])
    else:
        full, classes = load_folder(args.data, args.limit_per_class)
        train, val = split_by_group(full, args.val_fraction, args.seed)
        positive = args.positive or ("PNEUMONIA" if "PNEUMONIA" in classes else None)
    if len(classes) != 2:
        positive = None
    shifted = make_shifted(val, classes.index(positive) if positive else None, args.seed)
    channels = 3 if train.images[0].ndim == 3 else 1
    if args.finalize_only:
        return finalize_only(args, argv, train, val, classes, positive, shifted)
    log(f"{len(train.labels)} train / {len(val.labels)} val / {len(shifted.labels) if shifted else 0} shifted val images, "
        f"classes {classes}, counts {dict(Counter(train.labels.tolist()))}")

    spec = PreprocessSpec(width=args.size, height=args.size, channels=channels)
    mean, std = dataset_stats(train, spec)
    spec = spec.with_changes(mean=(round(mean, 4),), std=(round(std, 4),))
    model = ScreeningCNN(channels, len(classes), tuple(int(w) for w in args.widths.split(",")))
    if args.init_onnx is not None:
        from edgedx import manifest as manifest_mod

        source = manifest_mod.load(args.init_onnx)
        if source is not None:  # the source's preprocessing is what its weights expect
            spec = source.preprocess.with_changes(width=args.size, height=args.size)
        log(f"warm start: {load_folded_onnx(model, str(args.init_onnx))} layers from {args.init_onnx}")
    counts = np.bincount(train.labels, minlength=len(classes)).astype(np.float64)
    weights = torch.tensor(counts.sum() / (len(classes) * np.maximum(counts, 1)), dtype=torch.float32)
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=0.05)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)
    # Cosine decay over the planned epochs; after the first epoch the plan shrinks to what fits in
    # --max-minutes, so a budget-stopped run still ends at a low learning rate.
    plan = {"epochs": args.epochs}
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, e / max(1, plan["epochs"])))))
    lo, hi = (float(v) for v in args.crop_scale.split(","))
    augment = Augmenter(rng, crop_scale=(lo, hi))
    pos_index = classes.index(positive) if positive else None

    args.out.mkdir(parents=True, exist_ok=True)
    best, best_state, history, stale = -math.inf, None, [], 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        if args.init_onnx is not None:
            freeze_batchnorm(model)
        t0, total, n = time.perf_counter(), 0.0, 0
        for x, y in batches(train, spec, args.batch_size, augment, rng.permutation(len(train.labels))):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(y), n + len(y)
        sched.step()
        probs = predict(model, val, spec)
        report = metrics.summarize(val.labels, probs, pos_index)
        score = report["auc"] if report["auc"] is not None else report["accuracy"]
        entry = {"epoch": epoch, "train_loss": total / n, "lr": opt.param_groups[0]["lr"], **report}
        msg = f"val acc {report['accuracy']:.4f} auc {report['auc']}"
        if shifted is not None:
            shifted_report = metrics.summarize(shifted.labels, predict(model, shifted, spec), pos_index)
            entry["shifted"] = shifted_report
            msg += f" | shifted acc {shifted_report['accuracy']:.4f} auc {shifted_report['auc']}"
            if args.select_on == "shifted":
                score = shifted_report["auc"] if shifted_report["auc"] is not None else shifted_report["accuracy"]
        entry["seconds"] = time.perf_counter() - t0
        history.append(entry)
        # Budget the schedule after every epoch: the epochs that fit in what is left of --max-minutes
        # at the mean epoch time so far (the machine may be shared), never more than --epochs.
        left = args.max_minutes - (time.perf_counter() - t_start) / 60
        mean_minutes = float(np.mean([h["seconds"] for h in history])) / 60
        fits = min(args.epochs, epoch + int(left / mean_minutes))
        if fits != plan["epochs"]:
            plan["epochs"] = max(epoch, fits)
            log(f"schedule: {plan['epochs']} epochs in all fit in {args.max_minutes} minutes ({mean_minutes * 60:.0f}s an epoch)")
        log(f"epoch {epoch}: loss {total / n:.4f} {msg} ({entry['seconds']:.0f}s)")
        if score > best + 1e-4:
            best, stale = score, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            torch.save(best_state, args.out / "model.pt")
        else:
            stale += 1
        elapsed_min = (time.perf_counter() - t_start) / 60
        if stale >= args.patience:
            log(f"early stop: no validation gain in {args.patience} epochs")
            break
        if epoch >= plan["epochs"]:
            break
        if elapsed_min > args.max_minutes:
            log(f"stop: time budget of {args.max_minutes} minutes reached")
            break

    model.load_state_dict(best_state)
    torch.save(best_state, args.out / "model_raw.pt")
    done = finalize(model, train, val, spec, pos_index, args.target_sensitivity, args.bn_recalibrate, shifted, args.threshold_on)
    torch.save(model.state_dict(), args.out / "model.pt")
    threshold, final = done["threshold"], done["validation"]
    minutes = (time.perf_counter() - t_start) / 60
    summary = {
        "architecture": "ScreeningCNN",
        "widths": [int(w) for w in args.widths.split(",")],
        "labels": classes,
        "positive_label": positive,
        "threshold": threshold,
        "preprocess": {"width": spec.width, "height": spec.height, "channels": spec.channels, "resize": spec.resize.value,
                       "scale": spec.scale, "mean": list(spec.mean), "std": list(spec.std)},
        "validation": final,
        "validation_shifted": done.get("validation_shifted"),
        "selected_on": f"{args.select_on} validation AUC" if shifted is not None else "validation AUC",
        "calibration": {k: v for k, v in done.items() if k not in ("threshold", "validation", "validation_shifted")},
        "training": {
            "command": "python -m export.train " + " ".join(sys.argv[1:] if argv is None else argv),
            "data": str(args.data),
            "train_images": len(train.labels),
            "val_images": len(val.labels),
            "shifted_val_images": len(shifted.labels) if shifted is not None else 0,
            "split": "patient-grouped, class-stratified" if args.data.suffix != ".npz" else "MedMNIST train/val",
            "epochs_run": len(history),
            "init": str(args.init_onnx) if args.init_onnx is not None else None,
            "minutes": round(minutes, 1),
            "torch": torch.__version__,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "date": time.strftime("%Y-%m-%d"),
        },
        "history": history,
    }
    (args.out / "training.json").write_text(json.dumps(summary, indent=2))
    log(f"done in {minutes:.1f} min: validation {json.dumps(final)}")
    return 0


def finalize_only(args: argparse.Namespace, argv: list[str] | None, train: Dataset, val: Dataset, classes: list[str], positive: str | None,
                  shifted: Dataset | None = None) -> int:
    """Finalize a finished run again (or a run made before the final step existed)."""
    summary = json.loads((args.out / "training.json").read_text())
    raw = args.out / "model_raw.pt"
    if not raw.exists():  # a run from before model_raw.pt: its model.pt is the raw best state
        raw.write_bytes((args.out / "model.pt").read_bytes())
    p = summary["preprocess"]
    spec = PreprocessSpec(width=p["width"], height=p["height"], channels=p["channels"], mean=tuple(p["mean"]), std=tuple(p["std"]))
    model = ScreeningCNN(spec.channels, len(classes), tuple(summary["widths"]))
    model.load_state_dict(torch.load(raw, weights_only=True))
    t0 = time.perf_counter()
    done = finalize(model, train, val, spec, classes.index(positive) if positive else None, args.target_sensitivity,
                    args.bn_recalibrate, shifted, args.threshold_on)
    torch.save(model.state_dict(), args.out / "model.pt")
    summary["validation_before_finalize"] = summary.get("validation_before_finalize", summary["validation"])
    summary.update(threshold=done["threshold"], validation=done["validation"], validation_shifted=done.get("validation_shifted"),
                   calibration={k: v for k, v in done.items() if k not in ("threshold", "validation", "validation_shifted")})
    summary["training"]["finalize_command"] = "python -m export.train " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.out / "training.json").write_text(json.dumps(summary, indent=2))
    log(f"finalized in {time.perf_counter() - t0:.0f}s: validation {json.dumps(done['validation'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
