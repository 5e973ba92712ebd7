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
from pathlib import Path
from typing import Any, List, Optional

import typer

from edgedx.console import Backend, log_to_stderr, model_name
from edgedx.errors import EXIT_INPUT_FAILED, UsageError
from edgedx.outputs import say
from export.options import Method, Target
from export.report_text import eval_text, num, print_json, verify_text

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


VerboseOpt = typer.Option(False, "--verbose", "-v", help="Let third-party output (torch, Keras, ONNX Runtime) through to stderr.")


@app.command("onnx")
def onnx_command(
    model: Path = typer.Argument(..., help="An ONNX model you have, a state dict (.pt/.pth, with --arch), TorchScript, torch.export .pt2, or Keras .keras/.h5."),
    output: Path = typer.Option(..., "--out", "-o", help="The ONNX file to write (nothing is left there if a check fails)."),
    manifest_file: Optional[Path] = typer.Option(None, "--manifest", help="PyTorch: a JSON manifest (labels, input, preprocess, output, threshold) instead of the options below."),
    labels: Optional[str] = typer.Option(None, help="Comma-separated labels in the model's output order."),
    positive: Optional[str] = typer.Option(None, "--positive", help="Binary models: the label screened for."),
    threshold: Optional[str] = typer.Option(None, help="Binary models: operating threshold on the positive label's probability (a number or fraction in 0..1)."),
    size: Optional[str] = typer.Option(None, help="Input size W or WxH (ONNX and Keras: from the model; PyTorch: required without --manifest)."),
    channels: Optional[int] = typer.Option(None, help="1 (gray) or 3 (RGB); ONNX and Keras: from the model, else 3."),
    layout: Optional[str] = typer.Option(None, help="ONNX: NCHW or NHWC when the input shape does not tell."),
    mean: Optional[str] = typer.Option(None, help="Per-channel mean after scale (default 0); numbers or fractions."),
    std: Optional[str] = typer.Option(None, help="Per-channel std (default 1); numbers or fractions."),
    scale: Optional[str] = typer.Option(None, help="Pixel scale before mean/std, e.g. 1/255 (the default; Keras with its own Rescaling layer: 1)."),
    force_scale: bool = typer.Option(False, "--force-scale", help="Keras: apply --scale/--mean/--std even though the model has its own Rescaling/Normalization layer."),
    resize: Optional[str] = typer.Option(None, help="stretch (default), letterbox or center_crop."),
    interpolation: Optional[str] = typer.Option(None, help="nearest, linear, area or cubic: what the model was trained with (default: the source framework's loader default)."),
    antialias: Optional[bool] = typer.Option(None, "--antialias/--no-antialias", help="linear/cubic: antialiased like PIL and torchvision Resize."),
    activation: Optional[str] = typer.Option(None, help="softmax, sigmoid or none. ONNX: outputs are logits unless this says otherwise (a final Softmax/Sigmoid is detected). PyTorch: softmax by default. Keras: from the last layer."),
    accepts: Optional[str] = typer.Option(None, "--accepts", help='What inputs the model is for, as JSON: \'{"modalities": ["CR", "DX"], "min_size": 64}\'.'),
    arch: Optional[str] = typer.Option(None, "--arch", help="State dicts: a name (screening_cnn, resnet, resnet18/34/50 in torchvision layout), path/to/file.py:ClassName or package.module:ClassName."),
    arch_kwargs: Optional[str] = typer.Option(None, "--arch-kwargs", help='State dicts: constructor arguments as JSON, e.g. \'{"in_channels": 1, "widths": [24, 32, 64]}\'.'),
    images: Optional[List[Path]] = typer.Option(None, "--images", help="Real scans (files or folders) to compare ONNX Runtime with the source on."),
    num_images: int = typer.Option(16, "--num-images", min=1, help="How many of --images to compare on."),
    opset: int = typer.Option(17, min=13, help="ONNX opset (PyTorch and Keras sources)."),
    simplify: bool = typer.Option(False, "--simplify", help="Simplify the graph with onnxslim (or onnx-simplifier)."),
    explain: bool = typer.Option(False, "--explain", help="Add the pooled `features` (OOD score) and class-activation map `cam` (--heatmap) outputs: models that end in global average pooling and one linear layer (PyTorch, ONNX, Keras)."),
    static_batch: bool = typer.Option(False, "--static-batch", help="Batch axis fixed at 1 instead of dynamic."),
    atol: float = typer.Option(1e-4, min=0.0, help="Largest allowed probability difference from the source."),
    min_agreement: float = typer.Option(1.0, min=0.0, max=1.0, help="Smallest allowed top-1 agreement with the source."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Bring a model in: an existing ONNX, PyTorch or Keras model -> one self-contained ONNX file with its manifest, checked on real images."""
    from export import contract, from_keras, quiet, to_onnx

    log_to_stderr()
    quiet.set_verbose(verbose)
    tol = to_onnx.Tolerance(atol, min_agreement)
    files = _pick(_expand(images), num_images) if images else None
    threshold_value = _probability(threshold, "--threshold")
    given = contract.Given(
        labels=tuple(labels.split(",")) if labels else None, positive_label=positive, threshold=threshold_value,
        size=_size(size) if size else None, channels=channels, layout=layout.upper() if layout else None,
        scale=contract.number(scale, "--scale") if scale is not None else None,
        mean=contract.numbers(mean, "--mean"), std=contract.numbers(std, "--std"), resize=resize,
        interpolation=interpolation, antialias=antialias, activation=activation,
        accepts=contract.parse_accepts(accepts), force_scale=force_scale,
    )
    suffix = model.suffix.lower()
    if suffix == ".onnx":
        from export.from_onnx import import_onnx

        if manifest_file is not None or arch is not None:
            raise UsageError("--manifest and --arch are for PyTorch sources; an ONNX model takes --labels and the preprocessing options")
        result = import_onnx(model, output, given, images=files, static_batch=static_batch, simplify=simplify, tolerance=tol,
                             explain=explain)
    elif suffix in (".keras", ".h5", ".hdf5"):
        if not labels:
            raise UsageError("Keras models need --labels (in output order: flow_from_directory sorts the class folders)")
        result = from_keras.export_keras(model, output, list(given.labels or ()), positive_label=positive, threshold=threshold_value, given=given,
                                         images=files, opset=opset, simplify=simplify, tolerance=tol, explain=explain)
    else:
        manifest = _torch_manifest(manifest_file, given)
        kwargs = _json_arg(arch_kwargs, "--arch-kwargs") if arch_kwargs else None
        result = to_onnx.export_torch(model, output, manifest, images=files, architecture=arch, arch_kwargs=kwargs, opset=opset,
                                      simplify=simplify, dynamic_batch=not static_batch, tolerance=tol, explain=explain)
    if as_json:
        print_json(result)
        return
    c = result["comparison"]
    say(f"wrote      {result['output']} ({result['bytes'] / 1e6:.2f} MB, opset {result['opset']}, from {result['from']})")
    say(f"sha256     {result['sha256']}")
    if "batch" in result:
        say(f"batch      {result['batch']}")
    say(f"checked    {c['images']} images: max |p_onnx - p_source| {c['max_abs_error']:.2e} (tol {c['atol']:g}), "
          f"top-1 agreement {c['top1_agreement']:.3f}")


@app.command("quantize")
def quantize_command(
    model: Path = typer.Argument(..., callback=model_name, help="The FP32 ONNX model (with its edgedx manifest)."),
    output: Path = typer.Option(..., "--out", "-o", help="The INT8 ONNX file to write."),
    calib: List[Path] = typer.Option(..., "--calib", help="Calibration scans: files or folders (walked recursively)."),
    target: Target = typer.Option(Target.CPU, help="cpu: U8S8 for ONNX Runtime; tensorrt: symmetric S8S8 Q/DQ."),
    method: Method = typer.Option(Method.PERCENTILE, help="Activation range calibration."),
    num_images: int = typer.Option(200, "--num-images", min=1, help="Calibration images (evenly spread over --calib)."),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Node names or op types to keep in float (repeatable or comma-separated)."),
    float_input_layer: bool = typer.Option(True, "--float-input-layer/--quantize-input-layer", help="Keep the layer that reads the image in float (default: ONNX Runtime's int8 kernels saturate on CPUs without VNNI, worst there)."),
    reduce_range: bool = typer.Option(True, "--reduce-range/--full-range", help="CPU target: 7-bit weights (default), no int8 saturation in ONNX Runtime on x86 CPUs without VNNI; --full-range for 8-bit weights. TensorRT ignores it."),
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
        float_input_layer=float_input_layer, reduce_range=reduce_range,
    )
    gate = Gate(max_auc_drop, max_accuracy_drop, max_sensitivity_drop, max_flip_rate)
    try:
        result = quant.quantize(model, output, _expand(calib), options, eval_data=eval_data, split=split, gate=gate)
    except GateFailed as exc:
        _gate_failed(exc.report, as_json, "quantized model " + exc.report.get("rejected_output", ""))
    if as_json:
        print_json(result)
        return
    cal = result["calibration"]
    say(f"wrote      {result['output']} ({result['bytes'] / 1e6:.2f} MB, int8 for {result['target']})")
    say(f"calibrated {cal['method']} on {cal['images']} images" + (f", cache {cal['cache']}" if cal["cache"] else ""))
    if result["excluded"]:
        say(f"float      {', '.join(result['excluded'])}")
    if "verify" in result:
        say(verify_text(result["verify"]))


@app.command("fp16")
def fp16_command(
    model: Path = typer.Argument(..., callback=model_name, help="The FP32 ONNX model (with its edgedx manifest)."),
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
        print_json(result)
        return
    say(f"wrote      {result['output']} ({result['bytes'] / 1e6:.2f} MB, fp16, float32 inputs/outputs)")
    if "comparison" in result:
        c = result["comparison"]
        say(f"checked    {c['images']} images: max |p_fp16 - p_fp32| {c['max_abs_error']:.2e} (tol {c['atol']:g})")


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
        print_json(report)
    else:
        say(verify_text(report))


@app.command("calibrate")
def calibrate_command(
    model: Path = typer.Argument(..., help="The edgedx ONNX model (with its manifest)."),
    data: Path = typer.Argument(..., help="Held-out labelled data: class folders or a .npz (not the test set you report)."),
    output: Path = typer.Option(..., "--out", "-o", help="The calibrated ONNX file to write (the graph is unchanged)."),
    target_sensitivity: Optional[float] = typer.Option(None, "--target-sensitivity", min=0.0, max=1.0,
                                                       help="Binary models: the highest threshold whose sensitivity is >= this with 95% confidence."),
    positive: Optional[str] = typer.Option(None, "--positive", help="Binary models: the label screened for (default: the manifest's)."),
    method: Optional[str] = typer.Option(None, "--method", help="platt (binary default) or temperature (default for more classes)."),
    split: Optional[str] = SplitOpt,
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use at most N images (evenly spread)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Calibrate a model's probabilities (Platt or temperature) and pick its operating threshold; reports calibration error before and after."""
    from export import quiet
    from export.calibrate import calibrate

    log_to_stderr()
    quiet.set_verbose(verbose)
    if method not in (None, "platt", "temperature"):
        raise UsageError(f"--method must be platt or temperature, got {method!r}")
    result = calibrate(model, data, output, target_sensitivity=target_sensitivity, positive=positive, method=method,
                       split=split, limit=limit, batch_size=batch_size)
    if as_json:
        print_json(result)
        return
    cal, before, after = result["calibration"], result["before"], result["after"]
    fit = f"a={cal['a']:.4f} b={cal['b']:.4f}" if cal["method"] == "platt" else f"T={cal['temperature']:.4f}"
    say(f"wrote        {result['output']}")
    say(f"calibration  {cal['method']} {fit} on {result['n']} images of {result['data']}")
    for key in ("ece", "brier", "log_loss"):
        say(f"{key:12} {before[key]:.4f} -> {after[key]:.4f}")
    if result["threshold"] is not None:
        at = result["at_threshold"]
        say(f"threshold    {result['positive_label']} when p >= {result['threshold']:.4f} ({result['threshold_rule']})")
        for key in ("sensitivity", "specificity"):
            ci = at.get(f"{key}_ci")
            say(f"{key:12} {num(at.get(key))}" + (f"  95% CI [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "") + "  (on the calibration data)")


@app.command("manifest")
def manifest_command(
    model: Path = typer.Argument(..., help="The edgedx ONNX model whose manifest to change (it is not modified)."),
    output: Path = typer.Option(..., "--out", "-o", help="The copy to write, with the new manifest."),
    labels: Optional[str] = typer.Option(None, help="Comma-separated labels (same count, output order)."),
    positive: Optional[str] = typer.Option(None, "--positive", help="Binary models: the label screened for."),
    threshold: Optional[str] = typer.Option(None, help="Binary models: the operating threshold (a number or fraction in 0..1)."),
    accepts: Optional[str] = typer.Option(None, "--accepts", help='What inputs the model is for, as JSON (\'{}\' clears it).'),
    mean: Optional[str] = typer.Option(None, help="Per-channel mean after scale."),
    std: Optional[str] = typer.Option(None, help="Per-channel std."),
    scale: Optional[str] = typer.Option(None, help="Pixel scale before mean/std, e.g. 1/255."),
    resize: Optional[str] = typer.Option(None, help="stretch, letterbox or center_crop."),
    interpolation: Optional[str] = typer.Option(None, help="nearest, linear, area or cubic."),
    antialias: Optional[bool] = typer.Option(None, "--antialias/--no-antialias", help="linear/cubic: antialiased (PIL, torchvision)."),
    activation: Optional[str] = typer.Option(None, help="softmax, sigmoid or none."),
    no_calibration: bool = typer.Option(False, "--no-calibration", help="Remove the calibration."),
    as_json: bool = JsonOpt,
) -> None:
    """Change a model's manifest in a copy: labels, threshold, accepts, preprocessing; validated before it is written."""
    from export import contract
    from export.edit import edit_manifest

    log_to_stderr()
    changes = {
        "labels": tuple(labels.split(",")) if labels else None, "positive_label": positive, "threshold": _probability(threshold, "--threshold"),
        "accepts": contract.parse_accepts(accepts) if accepts is not None else None,
        "mean": contract.numbers(mean, "--mean"), "std": contract.numbers(std, "--std"),
        "scale": contract.number(scale, "--scale") if scale is not None else None, "resize": resize,
        "interpolation": interpolation, "antialias": antialias, "activation": activation,
        "calibration": {} if no_calibration else None,
    }
    result = edit_manifest(model, output, changes)
    if as_json:
        print_json(result)
        return
    say(f"wrote      {result['output']} (changed: {', '.join(result['changed'])})")
    say(json.dumps(result["manifest"], indent=2))


def eval_command(
    model: Path = typer.Argument(..., help="ONNX model or TensorRT engine."),
    data: Path = typer.Argument(..., help="Labelled data: a folder with one subfolder per label, or a MedMNIST-style .npz."),
    as_json: bool = JsonOpt,
    backend: Backend = typer.Option(Backend.auto, "--backend", "-b", help="auto, onnxruntime or tensorrt."),
    split: Optional[str] = SplitOpt,
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Operating threshold for binary models (default: the manifest's)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use at most N images (evenly spread)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw ROC (with the operating point), confusion matrix and reliability diagram into FILE.png (needs matplotlib)."),
    labels: Optional[str] = typer.Option(None, help="A model without a manifest: its labels in output order (the rest is assumed, with a warning; `export onnx` attaches a manifest for good)."),
    heatmap_summary: bool = typer.Option(False, "--heatmap-summary",
                                         help="Also report how much of the class-activation maps' mass lies on the image border and corners."),
) -> None:
    """Evaluate a model on labelled data: metrics with 95% intervals, Brier score, calibration error, ROC, confusion matrix."""
    from edgedx import evaluate
    from edgedx import manifest as manifest_mod
    from edgedx.api import Classifier, ManifestOverrides

    log_to_stderr()
    if plot is not None:
        from export.to_onnx import require

        require("matplotlib", "pip install matplotlib (or 'edgedx[export]') for --plot")  # before the long run, not after
    overrides = None
    if labels is not None:
        if model.is_file() and manifest_mod.load(model) is not None:
            raise UsageError(f"{model.name} carries a manifest with its labels; change them in a copy with `edgedx export manifest`")
        overrides = ManifestOverrides(labels=labels.split(","))
    with Classifier(model, backend.value, threshold=threshold, batch_size=batch_size, overrides=overrides) as clf:
        dataset = evaluate.load_dataset(data, clf.manifest.labels, split).limit(limit)
        report = evaluate.evaluate(clf, dataset, threshold, batch_size)
        if heatmap_summary:
            from edgedx import heatmap

            report["heatmap_summary"] = heatmap.summarize(clf, dataset, batch_size)
    if plot is not None:
        from export.plots import plot_report

        report["plot"] = str(plot_report(report, plot))
    if as_json:
        print_json(report)
        return
    say(eval_text(report))


# -- rendering and option helpers -----------------------------------------------------------------


def _gate_failed(report: dict[str, Any], as_json: bool, what: str) -> None:
    """Print the report (stdout) and the failing criteria (stderr), then exit 1."""
    if as_json:
        print_json(report)
    else:
        say(verify_text(report))
    for failure in report["gate"]["failures"]:
        print(f"edgedx: gate failed: {what.strip()}: {failure}", file=sys.stderr)
    raise typer.Exit(EXIT_INPUT_FAILED)


def _probability(text: Optional[str], what: str) -> Optional[float]:
    """A number or fraction in 0..1, or None."""
    if text is None:
        return None
    from export.contract import number

    value = number(text, what)
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{what} must be in 0..1, got {text}")
    return value


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


def _torch_manifest(manifest_file: Optional[Path], given: Any):
    """A PyTorch source's manifest: from --manifest (plus --accepts), or from the options."""
    from edgedx import manifest as manifest_mod
    from export.contract import build_manifest

    if manifest_file is not None:
        stated = [n for n, v in (("--labels", given.labels), ("--size", given.size), ("--mean", given.mean), ("--std", given.std),
                                 ("--scale", given.scale), ("--interpolation", given.interpolation)) if v is not None]
        if stated:
            raise UsageError(f"give --manifest or {', '.join(stated)}, not both")
        try:
            found = manifest_mod.from_json(manifest_file.read_text(encoding="utf-8"), str(manifest_file))
        except OSError as exc:
            raise UsageError(f"cannot read {manifest_file}: {exc.strerror}") from None
        return found.with_changes(accepts=dict(given.accepts)) if given.accepts else found
    if not given.labels or not given.size:
        raise UsageError("a PyTorch model needs --manifest, or --labels and --size (plus --mean/--std/--channels as trained)")
    if given.layout not in (None, "NCHW"):
        raise UsageError("PyTorch models take NCHW input")
    w, h = given.size
    return build_manifest(given, framework="torch", height=h, width=w, channels=given.channels or 3, layout="NCHW",
                          activation=given.activation or "softmax")
