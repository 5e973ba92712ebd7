"""``edgedx export onnx|quantize|fp16|verify`` and ``edgedx eval``: parse options, call the library, render.

Imports here are typer and the standard library only; torch, onnx, keras and onnxruntime load
inside the commands, and a missing one raises :class:`~edgedx.errors.BackendUnavailable` saying
``pip install 'edgedx[export]'``. Results go to stdout (``--json``: one JSON object); logs and
progress go to stderr. A candidate that falls past the accuracy gate exits with code 1.
"""

from __future__ import annotations

import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import typer

from edgedx.cli import Backend, log_to_stderr
from edgedx.errors import EXIT_INPUT_FAILED, UsageError
from export.options import Method, Target

app = typer.Typer(
    help="Workstation side: export to ONNX, quantize to INT8, convert to FP16, verify against a reference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("edgedx")


JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout.")
SplitOpt = typer.Option(None, "--split", help=".npz data: test, val or train (default: test if present, else val).")
MaxAucDrop = typer.Option(0.005, "--max-auc-drop", min=0.0, help="Gate: largest allowed AUC drop.")
MaxAccDrop = typer.Option(0.01, "--max-accuracy-drop", min=0.0, help="Gate: largest allowed accuracy drop.")
MaxSensDrop = typer.Option(0.01, "--max-sensitivity-drop", min=0.0, help="Gate: largest allowed sensitivity drop (binary models).")
MaxFlipRate = typer.Option(None, "--max-flip-rate", min=0.0, max=1.0, help="Gate: largest allowed fraction of flipped decisions (off by default).")


@app.command("onnx")
def onnx_command(
    model: Path = typer.Argument(..., help="State dict (.pt/.pth, with --arch), TorchScript archive, torch.export .pt2, or Keras .keras/.h5."),
    output: Path = typer.Option(..., "--out", "-o", help="The ONNX file to write."),
    manifest_file: Optional[Path] = typer.Option(None, "--manifest", help="PyTorch: a JSON manifest (labels, input, preprocess, output, threshold) instead of the options below."),
    labels: Optional[str] = typer.Option(None, help="Comma-separated labels in the model's output order."),
    positive: Optional[str] = typer.Option(None, "--positive", help="Binary models: the label screened for."),
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Binary models: operating threshold on the positive label's probability."),
    size: Optional[str] = typer.Option(None, help="Input size W or WxH (PyTorch: required without --manifest; Keras: from the model)."),
    channels: Optional[int] = typer.Option(None, help="1 (gray) or 3 (RGB); default 3 (Keras: from the model)."),
    mean: Optional[str] = typer.Option(None, help="Per-channel mean after scale (default 0)."),
    std: Optional[str] = typer.Option(None, help="Per-channel std (default 1)."),
    scale: Optional[float] = typer.Option(None, help="Pixel scale before mean/std (default 1/255)."),
    resize: Optional[str] = typer.Option(None, help="stretch (default), letterbox or center_crop."),
    activation: Optional[str] = typer.Option(None, help="PyTorch: softmax (default) or sigmoid on the logits. Keras: taken from the last layer."),
    arch: Optional[str] = typer.Option(None, "--arch", help="State dicts: screening_cnn or resnet (export.models.ARCHITECTURES)."),
    arch_kwargs: Optional[str] = typer.Option(None, "--arch-kwargs", help='State dicts: constructor arguments as JSON, e.g. \'{"in_channels": 1, "widths": [24, 32, 64]}\'.'),
    images: Optional[List[Path]] = typer.Option(None, "--images", help="Real scans (files or folders) to compare ONNX Runtime with the source on."),
    num_images: int = typer.Option(16, "--num-images", min=1, help="How many of --images to compare on."),
    opset: int = typer.Option(17, min=13, help="ONNX opset."),
    simplify: bool = typer.Option(False, "--simplify", help="Simplify the graph with onnxslim (or onnx-simplifier)."),
    static_batch: bool = typer.Option(False, "--static-batch", help="Batch axis fixed at 1 instead of dynamic."),
    atol: float = typer.Option(1e-4, min=0.0, help="Largest allowed probability difference from the source."),
    min_agreement: float = typer.Option(1.0, min=0.0, max=1.0, help="Smallest allowed top-1 agreement with the source."),
    as_json: bool = JsonOpt,
) -> None:
    """Export a PyTorch or Keras model to one self-contained ONNX file with its manifest, checked on real images."""
    from export import from_keras, to_onnx

    log_to_stderr()
    tol = to_onnx.Tolerance(atol, min_agreement)
    files = _pick(_expand(images), num_images) if images else None
    if model.suffix.lower() in (".keras", ".h5", ".hdf5"):
        if not labels:
            raise UsageError("Keras models need --labels (in output order: flow_from_directory sorts the class folders)")
        spec = _keras_spec(size, channels, mean, std, scale, resize)
        result = from_keras.export_keras(model, output, labels.split(","), positive_label=positive, threshold=threshold, spec=spec,
                                      images=files, opset=opset, simplify=simplify, tolerance=tol)
    else:
        manifest = _torch_manifest(manifest_file, labels, positive, threshold, size, channels, mean, std, scale, resize, activation)
        kwargs = _json_arg(arch_kwargs, "--arch-kwargs") if arch_kwargs else None
        result = to_onnx.export_torch(model, output, manifest, images=files, architecture=arch, arch_kwargs=kwargs, opset=opset,
                                      simplify=simplify, dynamic_batch=not static_batch, tolerance=tol)
    if as_json:
        _print_json(result)
        return
    c = result["comparison"]
    print(f"wrote      {result['output']} ({result['bytes'] / 1e6:.2f} MB, opset {result['opset']}, from {result['from']})")
    print(f"sha256     {result['sha256']}")
    print(f"checked    {c['images']} images: max |p_onnx - p_source| {c['max_abs_error']:.2e} (tol {c['atol']:g}), "
          f"top-1 agreement {c['top1_agreement']:.3f}")


@app.command("quantize")
def quantize_command(
    model: Path = typer.Argument(..., help="The FP32 ONNX model (with its edgedx manifest)."),
    output: Path = typer.Option(..., "--out", "-o", help="The INT8 ONNX file to write."),
    calib: List[Path] = typer.Option(..., "--calib", help="Calibration scans: files or folders (walked recursively)."),
    target: Target = typer.Option(Target.CPU, help="cpu: U8S8 for ONNX Runtime; tensorrt: symmetric S8S8 Q/DQ."),
    method: Method = typer.Option(Method.PERCENTILE, help="Activation range calibration."),
    num_images: int = typer.Option(200, "--num-images", min=1, help="Calibration images (evenly spread over --calib)."),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Node names or op types to keep in float (repeatable or comma-separated)."),
    percentile: float = typer.Option(99.999, min=90.0, max=100.0, help="--method percentile: the cut-off."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recalibrate even when cached ranges exist."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Labelled data (class folders or .npz): the INT8 model must pass the gate against the input."),
    split: Optional[str] = SplitOpt,
    max_auc_drop: float = MaxAucDrop,
    max_accuracy_drop: float = MaxAccDrop,
    max_sensitivity_drop: float = MaxSensDrop,
    max_flip_rate: Optional[float] = MaxFlipRate,
    as_json: bool = JsonOpt,
) -> None:
    """Quantize an FP32 ONNX model to INT8 on real calibration images; with --eval, gate it against the FP32 model."""
    from edgedx.evaluate import Gate, GateFailed
    from export import quantize as quant

    log_to_stderr()
    options = quant.QuantizeOptions(
        target=target, method=method, num_images=num_images,
        exclude=tuple(x for item in exclude or () for x in item.split(",") if x), percentile=percentile, cache=not no_cache,
    )
    gate = Gate(max_auc_drop, max_accuracy_drop, max_sensitivity_drop, max_flip_rate)
    try:
        result = quant.quantize(model, output, _expand(calib), options, eval_data=eval_data, split=split, gate=gate)
    except GateFailed as exc:
        _gate_failed(exc.report, as_json, "quantized model " + exc.report.get("rejected_output", ""))
    if as_json:
        _print_json(result)
        return
    cal = result["calibration"]
    print(f"wrote      {result['output']} ({result['bytes'] / 1e6:.2f} MB, int8 for {result['target']})")
    print(f"calibrated {cal['method']} on {cal['images']} images" + (f", cache {cal['cache']}" if cal["cache"] else ""))
    if result["excluded"]:
        print(f"float      {', '.join(result['excluded'])}")
    if "verify" in result:
        print(_verify_text(result["verify"]))


@app.command("fp16")
def fp16_command(
    model: Path = typer.Argument(..., help="The FP32 ONNX model (with its edgedx manifest)."),
    output: Path = typer.Option(..., "--out", "-o", help="The FP16 ONNX file to write."),
    images: Optional[List[Path]] = typer.Option(None, "--images", help="Scans to compare FP16 with FP32 on (ONNX Runtime)."),
    num_images: int = typer.Option(16, "--num-images", min=1),
    atol: float = typer.Option(1e-2, min=0.0, help="Largest allowed probability difference from FP32."),
    as_json: bool = JsonOpt,
) -> None:
    """Convert an FP32 ONNX model to FP16 weights and compute (float32 inputs/outputs) for TensorRT."""
    from export import quantize as quant

    log_to_stderr()
    files = _pick(_expand(images), num_images) if images else None
    result = quant.to_fp16(model, output, images=files, atol=atol)
    if as_json:
        _print_json(result)
        return
    print(f"wrote      {result['output']} ({result['bytes'] / 1e6:.2f} MB, fp16, float32 inputs/outputs)")
    if "comparison" in result:
        c = result["comparison"]
        print(f"checked    {c['images']} images: max |p_fp16 - p_fp32| {c['max_abs_error']:.2e} (tol {c['atol']:g})")


@app.command("verify")
def verify_command(
    reference: Path = typer.Argument(..., help="The reference model (usually the FP32 ONNX)."),
    candidate: Path = typer.Argument(..., help="The model to check: INT8/FP16 ONNX or a TensorRT engine."),
    data: Path = typer.Argument(..., help="Labelled data: class folders or a .npz."),
    split: Optional[str] = SplitOpt,
    backend: Backend = typer.Option(Backend.auto, "--backend", "-b", help="Backend for the candidate."),
    reference_backend: Backend = typer.Option(Backend.onnxruntime, "--reference-backend", help="Backend for the reference."),
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Decide at this threshold (default: the reference's)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use at most N images (evenly spread)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    max_auc_drop: float = MaxAucDrop,
    max_accuracy_drop: float = MaxAccDrop,
    max_sensitivity_drop: float = MaxSensDrop,
    max_flip_rate: Optional[float] = MaxFlipRate,
    as_json: bool = JsonOpt,
) -> None:
    """Compare a candidate with its reference on labelled data; exit 1 when it falls past the gate."""
    from edgedx import evaluate
    from edgedx.api import Classifier

    log_to_stderr()
    gate = evaluate.Gate(max_auc_drop, max_accuracy_drop, max_sensitivity_drop, max_flip_rate)
    with Classifier(reference, reference_backend.value, batch_size=batch_size) as ref, \
            Classifier(candidate, backend.value, batch_size=batch_size) as cand:
        dataset = evaluate.load_dataset(data, ref.manifest.labels, split).limit(limit)
        report = evaluate.verify(ref, cand, dataset, gate, threshold, batch_size)
    if not report["gate"]["passed"]:
        _gate_failed(report, as_json, "candidate")
    if as_json:
        _print_json(report)
    else:
        print(_verify_text(report))


def eval_command(
    model: Path = typer.Argument(..., help="ONNX model or TensorRT engine."),
    data: Path = typer.Argument(..., help="Labelled data: a folder with one subfolder per label, or a MedMNIST-style .npz."),
    as_json: bool = JsonOpt,
    backend: Backend = typer.Option(Backend.auto, "--backend", "-b", help="auto, onnxruntime or tensorrt."),
    split: Optional[str] = SplitOpt,
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Operating threshold for binary models (default: the manifest's)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use at most N images (evenly spread)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    heatmap_summary: bool = typer.Option(False, "--heatmap-summary",
                                         help="Also report how much of the class-activation maps' mass lies on the image border and corners."),
) -> None:
    """Evaluate a model on labelled data: accuracy, AUC, sensitivity, specificity, F1, confusion matrix."""
    from edgedx import evaluate
    from edgedx.api import Classifier

    log_to_stderr()
    with Classifier(model, backend.value, threshold=threshold, batch_size=batch_size) as clf:
        dataset = evaluate.load_dataset(data, clf.manifest.labels, split).limit(limit)
        report = evaluate.evaluate(clf, dataset, threshold, batch_size)
        if heatmap_summary:
            from edgedx import heatmap

            report["heatmap_summary"] = heatmap.summarize(clf, dataset, batch_size)
    if as_json:
        _print_json(report)
        return
    print(f"model        {report['model']} ({report['backend']})")
    print(f"data         {report['data']}" + (f" [{report['split']}]" if report["split"] else "") + f"  n={report['n']}"
          + (f"  skipped={report['skipped']}" if report["skipped"] else ""))
    if report["threshold"] is not None:
        print(f"decision     {report['positive_label']} when p >= {report['threshold']:.4f}")
    keys = ("accuracy", "auc", "sensitivity", "specificity", "f1", "macro_recall")
    for key in keys:
        if key in report:
            print(f"{key:12} {_num(report[key])}")
    print(_confusion_text(report["labels"], report["confusion"]))
    if "heatmap_summary" in report:
        h = report["heatmap_summary"]
        print(f"heatmaps     mass on the {h['border_band']:.0%} border band {h['all']['border']:.3f} (uniform {h['uniform']['border']:.3f}), "
              f"in the corners {h['all']['corners']:.3f} (uniform {h['uniform']['corners']:.3f}); "
              f"border-heavy maps {h['border_heavy']:.1%}")
        for label, part in h["by_label"].items():
            print(f"  {label:10} border {part['border']:.3f}  corners {part['corners']:.3f}  n={part['n']}")


# -- rendering and option helpers -----------------------------------------------------------------


def _verify_text(r: dict[str, Any]) -> str:
    ref, cand = r["reference"], r["candidate"]
    lines = [
        f"reference  {ref['model']} ({ref['backend']})",
        f"candidate  {cand['model']} ({cand['backend']})",
        f"data       {r['data']}" + (f" [{r['split']}]" if r["split"] else "") + f"  n={r['n']}"
        + (f"  threshold {r['threshold']:.4f}" if r["threshold"] is not None else ""),
        f"flips      {r['flips']['count']} ({r['flips']['rate']:.2%})   top-1 agreement {r['top1_agreement']:.4f}",
        f"drift      mean {r['score_drift']['mean_abs']:.2e}  max {r['score_drift']['max_abs']:.2e} ({r['score_drift']['over']})",
        f"{'':11} {'reference':>10} {'candidate':>10} {'change':>9}",
    ]
    for key in ("auc", "accuracy", "sensitivity", "specificity", "f1"):
        if ref.get(key) is not None or cand.get(key) is not None:
            d = r["delta"].get(key)
            lines.append(f"{key:11} {_num(ref.get(key)):>10} {_num(cand.get(key)):>10} {'' if d is None else f'{d:+.4f}':>9}")
    g = r["gate"]
    lines.append("gate       PASSED" if g["passed"] else "gate       FAILED: " + "; ".join(g["failures"]))
    return "\n".join(lines)


def _gate_failed(report: dict[str, Any], as_json: bool, what: str) -> None:
    """Print the report (stdout) and the failing criteria (stderr), then exit 1."""
    if as_json:
        _print_json(report)
    else:
        print(_verify_text(report))
    for failure in report["gate"]["failures"]:
        print(f"edgedx: gate failed: {what.strip()}: {failure}", file=sys.stderr)
    raise typer.Exit(EXIT_INPUT_FAILED)


def _confusion_text(labels: list[str], confusion: list[list[int]]) -> str:
    width = max(8, *(len(x) for x in labels)) + 1
    head = "confusion    " + "true \\ pred".ljust(width) + "".join(x.rjust(width) for x in labels)
    rows = ["             " + label.ljust(width) + "".join(str(v).rjust(width) for v in row) for label, row in zip(labels, confusion)]
    return "\n".join([head, *rows])


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, default=_json_default))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (Path, Enum)):
        return str(obj.value if isinstance(obj, Enum) else obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _expand(paths: Optional[List[Path]]) -> list[Path]:
    from edgedx.api import expand_paths

    files = expand_paths(paths or [])
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise UsageError(f"not found: {missing[0]}")
    if not files:
        raise UsageError(f"no image or DICOM files in {', '.join(map(str, paths or []))}")
    return files


def _pick(files: list[Path], n: int) -> list[Path]:
    from export.quantize import select_images

    return select_images(files, n)


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(x) for x in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise UsageError(f"--size must be W or WxH, got {text!r}")
    return (parts[0], parts[-1])


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not JSON: {exc.msg}") from None


def _keras_spec(size, channels, mean, std, scale, resize):
    """None (the model's own input size, scale 1/255) unless an option overrides it."""
    if size is None and mean is None and std is None and scale is None and resize is None:
        return None
    if size is None:
        raise UsageError("give --size with --mean/--std/--scale/--resize for a Keras model")
    from edgedx.preprocess import PreprocessSpec

    w, h = _size(size)
    try:
        return PreprocessSpec(width=w, height=h, channels=channels or 3, layout="NHWC", scale=1 / 255 if scale is None else scale,
                              mean=_floats(mean, "--mean") or (0.0,), std=_floats(std, "--std") or (1.0,), resize=resize or "stretch")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _torch_manifest(manifest_file, labels, positive, threshold, size, channels, mean, std, scale, resize, activation):
    from edgedx import manifest as manifest_mod

    if manifest_file is not None:
        given = [n for n, v in (("--labels", labels), ("--size", size), ("--mean", mean), ("--std", std)) if v is not None]
        if given:
            raise UsageError(f"give --manifest or {', '.join(given)}, not both")
        try:
            return manifest_mod.from_json(manifest_file.read_text(encoding="utf-8"), str(manifest_file))
        except OSError as exc:
            raise UsageError(f"cannot read {manifest_file}: {exc.strerror}") from None
    if not labels or not size:
        raise UsageError("a PyTorch model needs --manifest, or --labels and --size (plus --mean/--std/--channels as trained)")
    w, h = _size(size)
    if positive is not None and threshold is None:
        threshold = 0.5
    data = {
        "schema_version": manifest_mod.SCHEMA_VERSION,
        "labels": labels.split(","),
        "input": {"layout": "NCHW", "height": h, "width": w, "channels": channels or 3},
        "preprocess": {"resize": resize or "stretch", "scale": 1 / 255 if scale is None else scale,
                       "mean": list(_floats(mean, "--mean") or (0.0,)), "std": list(_floats(std, "--std") or (1.0,))},
        "output": {"activation": activation or "softmax"},
        "positive_label": positive,
        "threshold": threshold,
    }
    try:
        return manifest_mod.from_dict(data, "command-line options")
    except Exception as exc:  # ModelError naming each bad field: the user's options
        raise UsageError(str(exc).replace("invalid manifest in command-line options: ", "")) from None


