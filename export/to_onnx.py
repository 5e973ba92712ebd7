"""PyTorch or Keras model -> one self-contained ONNX file carrying its manifest, checked on real images.

    export_torch(ScreeningCNN(...), "model.onnx", manifest, images=xray_paths)
    export_torch("model.pt", "model.onnx", manifest, architecture="screening_cnn", arch_kwargs={...})
    export_keras("tutorial_cnn.h5", "model.onnx", labels=["Normal", "Abnormal"], images=xray_paths)  # export.from_keras

Sources: an ``nn.Module``; a state dict (``torch.save``; loaded with ``weights_only=True`` only)
plus an architecture from :data:`export.models.ARCHITECTURES`; a TorchScript archive; a
``torch.export`` ExportedProgram (``.pt2``); a Keras 3 ``.keras`` or legacy ``.h5`` file.

Modules and TorchScript go through the TorchScript-based exporter (``dynamo=False``): in torch 2.13
it needs no extra package, exports a dynamic batch axis cleanly and folds BatchNorm into the
convolutions. ExportedPrograms can only go through the dynamo exporter (needs ``onnxscript``; opset
>= 18). Keras models run on Keras 3's torch backend, where a model *is* an ``nn.Module``, so they
take the same exporter and need no TensorFlow.

The graph outputs logits: the manifest's ``activation`` (softmax/sigmoid) is applied by
:mod:`edgedx.postprocess`, so a Keras model's final softmax/sigmoid is removed before export.

Every export is then compared with its source framework on the given images, through edgedx's
own decoding and preprocessing, and fails with :class:`ExportMismatch` past the tolerance.
"""

from __future__ import annotations

import logging
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from edgedx import decode, postprocess, preprocess
from edgedx.errors import BackendUnavailable, ModelError, UsageError, first_line
from edgedx.manifest import METADATA_KEY, Manifest
from edgedx.preprocess import PreprocessSpec

from export.quiet import quiet

log = logging.getLogger("edgedx")

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INSTALL_HINT = "pip install 'edgedx[export]'"
ImageSource = Union[str, Path, np.ndarray]


class ExportMismatch(ModelError):
    """The exported ONNX model does not reproduce its source model within the tolerance."""


@dataclass(frozen=True)
class Tolerance:
    """How closely ONNX Runtime must reproduce the source: probabilities and top-1 decisions."""

    atol: float = 1e-4
    min_agreement: float = 1.0


def require(module: str, what: str = INSTALL_HINT):
    """Import ``module`` or raise :class:`BackendUnavailable` saying what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendUnavailable(f"{module} is not installed: {what}") from None


# -- PyTorch -----------------------------------------------------------------------------------


def load_torch_source(source: Any, architecture: str | None = None, arch_kwargs: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The model to export and its kind: module, state_dict, torchscript or exported_program.

    Raises:
        UsageError: a state dict without a known architecture.
        ModelError: the file cannot be loaded as any of the supported sources.
    """
    torch = require("torch")
    if isinstance(source, torch.nn.Module):
        return source, "module"
    if isinstance(source, torch.export.ExportedProgram):
        return source, "exported_program"
    path = Path(source)
    if not path.is_file():
        raise ModelError(f"model not found: {path}")
    entries = _zip_entries(path)
    try:
        if path.suffix == ".pt2" or any(e.endswith("/archive_format") for e in entries):
            return torch.export.load(str(path)), "exported_program"
        if any("/code/" in e for e in entries):
            return torch.jit.load(str(path), map_location="cpu"), "torchscript"
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"cannot load {path} (state dict, TorchScript or .pt2 ExportedProgram): {first_line(exc)}") from None
    except Exception as exc:  # weights_only refuses pickled code with UnpicklingError
        raise ModelError(f"{path.name} holds pickled Python objects (a whole model saved with torch.save(model)?), which edgedx does not "
                         f"unpickle (torch.load weights_only=True refused it: {type(exc).__name__}). In Python, where the class is importable: "
                         "torch.save(model.state_dict(), 'weights.pt'), then `edgedx export onnx weights.pt --arch path/to/file.py:ClassName`") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state dict")
    from export import arch

    if architecture is None:
        raise UsageError(f"{path.name} is a state dict (weights only): name its architecture, the class to load it into, with --arch: "
                         + arch.ARCH_HELP.format(names=", ".join(arch.names())))
    module = arch.build(architecture, state, arch_kwargs)
    return module, "state_dict"


def export_torch(
    source: Any,
    output: str | Path,
    manifest: Manifest,
    *,
    images: Sequence[ImageSource] | None = None,
    architecture: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    opset: int = 17,
    simplify: bool = False,
    dynamic_batch: bool = True,
    tolerance: Tolerance = Tolerance(),
    explain: bool = False,
    flip_tta: bool = False,
) -> dict[str, Any]:
    """Export a PyTorch model to ``output`` and check it against the source on ``images``.

    Args:
        source: an ``nn.Module``, ``ExportedProgram``, or a path to a state dict, TorchScript
            archive or ``.pt2`` file.
        manifest: the model's contract (labels, preprocessing, activation, threshold); embedded.
        images: files or decoded images to compare on; real scans, please (synthetic noise when None).
        architecture, arch_kwargs: for a state dict: a name in ``export.models.ARCHITECTURES``.
        opset: ONNX opset (ExportedPrograms get at least 18).
        simplify: run onnxslim (or onnx-simplifier) on the graph.
        dynamic_batch: a dynamic batch axis; otherwise batch 1.
        explain: add the ``features`` and ``cam`` outputs (models with global average pooling and
            one linear head, see :mod:`export.explain`); the export log says why when it cannot.
        flip_tta: average the model over the image and its mirror image, inside the graph.

    Returns:
        A summary: output, sha256, opset, comparison results, manifest.

    Raises:
        ExportMismatch: ONNX Runtime does not reproduce the source within ``tolerance``.
    """
    torch = require("torch")
    model, kind = load_torch_source(source, architecture, arch_kwargs)
    spec = manifest.preprocess
    decoded = load_images(images, spec)
    fixed_batch = None  # an ExportedProgram may only take the batch size it was exported with
    if kind == "exported_program":
        fixed_batch = _program_batch(model)
        fn = model.module()
    else:
        fn = model.eval()
    output_names = [OUTPUT_NAME]
    if explain and kind == "exported_program":
        log.warning("no class-activation map or feature output: a torch.export program is exported as it is")
    example = torch.from_numpy(preprocess.apply_batch(_cycle(decoded, fixed_batch or (2 if dynamic_batch else 1)), spec))
    if (explain or flip_tta) and kind != "exported_program":
        from export.explain import explainable

        fn, names, why_not = explainable(fn, flip_tta, example)
        model = fn
        if explain:
            output_names = names
            if why_not:
                log.warning("no class-activation map or feature output: %s", why_not)

    def run_source(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = fn(torch.from_numpy(batch))
            return (out[0] if isinstance(out, (tuple, list)) else out).float().numpy()

    with tempfile.TemporaryDirectory(prefix="edgedx-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        if kind == "exported_program":
            opset = _export_program(model, example, raw, opset)
        else:
            export_legacy(model, example, raw, opset, dynamic_batch, output_names)
        info = {"from": kind, "exporter": f"torch {torch.__version__}" + (" dynamo" if kind == "exported_program" else " torchscript")}
        return finish_export(raw, output, manifest, decoded, run_source, info, opset=opset, simplify=simplify, tolerance=tolerance,
                             source_batch=fixed_batch)


def _program_batch(program: Any) -> int | None:
    """The fixed batch size of an ExportedProgram's image input; None when it is dynamic."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            dim = node.meta["val"].shape[0]
            return dim if isinstance(dim, int) else None
    return None


def _cycle(images: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Exactly ``n`` images, repeating the list as needed."""
    return [images[i % len(images)] for i in range(n)]


def export_legacy(model: Any, example: Any, path: Path, opset: int, dynamic_batch: bool,
                  output_names: Sequence[str] = (OUTPUT_NAME,)) -> None:
    """Export ``model`` with the TorchScript-based exporter (``dynamo=False``), quietly; the input
    and output names of every edgedx export. Used where ``torch.export`` cannot trace the model."""
    torch = require("torch")
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *output_names)} if dynamic_batch else None
    try:
        with quiet():
            torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=list(output_names),
                              opset_version=opset, dynamic_axes=axes, do_constant_folding=True, dynamo=False)
    except Exception as exc:
        raise ModelError(f"torch.onnx.export failed: {first_line(exc)}") from exc


def _export_program(program: Any, example: Any, path: Path, opset: int) -> int:
    """ExportedProgram -> ONNX with the dynamo exporter; its batch axis is what the program declared."""
    torch = require("torch")
    require("onnxscript", "pip install onnxscript (the dynamo ONNX exporter that .pt2 ExportedPrograms need)")
    if opset < 18:
        log.warning("ExportedProgram: the dynamo exporter writes opset >= 18; using 18 instead of %d", opset)
        opset = 18
    try:
        with quiet():
            onnx_program = torch.onnx.export(program, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                             opset_version=opset, dynamo=True)
            onnx_program.save(str(path))
    except Exception as exc:
        raise ModelError(f"torch.onnx.export (dynamo) failed on the ExportedProgram: {first_line(exc)}") from exc
    onnx = require("onnx")
    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):  # dynamo names the batch axis s0, s77, ...
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].dim_param = "batch"
    onnx.save(model, str(path))
    return opset


# -- shared: finish, embed, check, compare -------------------------------------------------------


def finish_export(
    raw: Path,
    output: str | Path,
    manifest: Manifest,
    images: list[np.ndarray],
    run_source: Callable[[np.ndarray], np.ndarray] | None,
    info: dict[str, Any],
    *,
    opset: int,
    simplify: bool,
    tolerance: Tolerance,
    source_probs: np.ndarray | None = None,
    source_batch: int | None = None,
) -> dict[str, Any]:
    """Check, optionally simplify, embed the manifest, save self-contained, then compare with the source."""
    onnx = require("onnx")
    output = Path(output)
    model = onnx.load(str(raw))
    if simplify:
        model = simplify_model(model)
        info["simplified"] = True
    initializers = {t.name for t in model.graph.initializer}
    outputs = [o.name for o in model.graph.output]
    manifest = manifest.with_changes(
        input_name=next(i.name for i in model.graph.input if i.name not in initializers),
        output_name=outputs[0],
        features_output="features" if "features" in outputs else None,
        cam_output="cam" if "cam" in outputs else None,
        precision="fp32",
        provenance={**dict(manifest.provenance), "export": {**info, "opset": opset, "date": time.strftime("%Y-%m-%d")}},
    )
    if source_probs is None:
        assert run_source is not None
        source_probs = _source_probabilities(run_source, images, manifest, source_batch)
    from export.contract import staged

    with staged(output) as tmp:  # a failed check leaves nothing at ``output``
        save_with_manifest(model, tmp, manifest)
        comparison = compare(tmp, images, source_probs, tolerance)
    from edgedx.api import file_sha256

    return {"output": str(output), "sha256": file_sha256(output), "bytes": output.stat().st_size, "opset": opset,
            **info, "comparison": comparison, "manifest": manifest.to_dict()}


def save_with_manifest(model: Any, output: str | Path, manifest: Manifest) -> None:
    """Embed ``manifest`` as metadata, check the model and write it as one self-contained file.

    Raises:
        ModelError: the model fails ``onnx.checker`` or would need external data (> 2 GB).
    """
    onnx = require("onnx")
    output = Path(output)
    props = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=METADATA_KEY, value=manifest.to_json())
    external = [t.name for t in _all_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ModelError(f"the model keeps {len(external)} tensors in external data ({external[0]}, ...); edgedx ships one self-contained file")
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"the exported model fails onnx.checker: {first_line(exc)}") from None
    if model.ByteSize() >= 2**31:
        raise ModelError("the model is over 2 GB, the limit of a self-contained ONNX file")
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(output), save_as_external_data=False)


def _all_tensors(graph: Any):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def simplify_model(model: Any) -> Any:
    """onnxslim, or onnx-simplifier where onnxslim is absent.

    Raises:
        BackendUnavailable: neither is installed.
    """
    try:
        import onnxslim
    except ImportError:
        onnxslim = None
    if onnxslim is not None:
        return onnxslim.slim(model)
    try:
        import onnxsim
    except ImportError:
        raise BackendUnavailable("--simplify needs onnxslim (pip install onnxslim) or onnx-simplifier") from None
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise ModelError("onnx-simplifier could not validate the simplified model")
    return simplified


def _source_probabilities(run_source: Callable[[np.ndarray], np.ndarray], images: list[np.ndarray], manifest: Manifest,
                          fixed_batch: int | None = None) -> np.ndarray:
    chunk = fixed_batch or 16
    out = []
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk]
        batch = preprocess.apply_batch(_cycle(part, fixed_batch) if fixed_batch else part, manifest.preprocess)
        out.append(postprocess.probabilities(run_source(batch), manifest)[: len(part)])
    return np.concatenate(out)


def compare(onnx_path: str | Path, images: list[np.ndarray], source_probs: np.ndarray, tolerance: Tolerance) -> dict[str, Any]:
    """Run the ONNX file through :class:`edgedx.api.Classifier` and compare with the source's probabilities.

    Raises:
        ExportMismatch: past ``tolerance``.
    """
    from edgedx.api import Classifier

    with Classifier(onnx_path, "onnxruntime", batch_size=8) as clf:
        probs = clf.predict_proba(images)
    err = float(np.abs(probs - source_probs).max())
    agreement = float((probs.argmax(1) == source_probs.argmax(1)).mean())
    result = {"images": len(images), "max_abs_error": err, "top1_agreement": agreement, "atol": tolerance.atol,
              "min_agreement": tolerance.min_agreement}
    if err > tolerance.atol or agreement < tolerance.min_agreement:
        raise ExportMismatch(f"ONNX Runtime differs from the source model on {len(images)} images: max abs probability "
                             f"error {err:.3g} (tolerance {tolerance.atol:g}), top-1 agreement {agreement:.3f} "
                             f"(required {tolerance.min_agreement:g}); nothing was written")
    return result


def load_images(images: Sequence[ImageSource] | None, spec: PreprocessSpec, synthetic: int = 4) -> list[np.ndarray]:
    """Decode files (arrays pass through); None gives a few synthetic images, with a warning."""
    if images is None or len(images) == 0:
        log.warning("no images given: comparing the export on %d synthetic images; pass real scans to check it on real data", synthetic)
        rng = np.random.default_rng(0)
        shape = (spec.height, spec.width) if spec.channels == 1 else (spec.height, spec.width, 3)
        ramp = np.linspace(0, 255, spec.width, dtype=np.float32)
        return [np.clip(rng.normal(128, 40, shape) + (ramp if spec.channels == 1 else ramp[:, None]) * 0.3 * i, 0, 255).astype(np.uint8)
                for i in range(synthetic)]
    return [im if isinstance(im, np.ndarray) else decode.decode_file(im)[0].image for im in images]


def _zip_entries(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []

