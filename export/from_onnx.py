"""An ONNX model the user already has -> one self-contained edgedx ONNX file with its manifest.

    import_onnx("resnet.onnx", "resnet_edgedx.onnx", Given(labels=("NORMAL", "PNEUMONIA")), images=scans)

The graph is checked (opset, one 4-D float image input, a static or dynamic batch, one output whose
width matches the labels), its external weights (``model.onnx.data`` beside it, what torch 2.13's
default exporter writes) are folded in, read only from the model's own folder; a batch fixed at 1 is
made dynamic when the graph runs and agrees at batch 2, and kept (with a warning) otherwise. Size,
channels and layout come from the graph. The outputs are taken as logits unless ``activation``
says otherwise; a final Softmax/Sigmoid node is moved into the manifest (calibration then works
on logits). The result is compared with the source graph on ONNX Runtime over ``images``.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np

from edgedx import postprocess, preprocess
from edgedx.errors import ModelError, UsageError, first_line
from edgedx.manifest import Activation, Manifest
from export.contract import Given, build_manifest, refuse_same_file
from export.quiet import quiet
from export.to_onnx import ImageSource, Tolerance, finish_export, load_images, require

log = logging.getLogger("edgedx")

#: Opsets ONNX Runtime reads (ai.onnx domain).
MIN_OPSET = 7
FINAL_ACTIVATIONS = {"Softmax": "softmax", "Sigmoid": "sigmoid"}


def import_onnx(
    path: str | Path,
    output: str | Path,
    given: Given,
    *,
    images: Sequence[ImageSource] | None = None,
    static_batch: bool = False,
    simplify: bool = False,
    tolerance: Tolerance = Tolerance(),
    explain: bool = False,
) -> dict[str, Any]:
    """Check an existing ONNX model, attach its manifest and write it self-contained to ``output``.

    Args:
        given: labels, preprocessing and decision options; what is left None comes from the graph
            (size, channels, layout) or the defaults (scale 1/255, mean 0, std 1, area resize).
        images: real scans to compare the result with the source graph on.
        static_batch: keep a batch axis fixed at 1 instead of trying to make it dynamic.
        explain: add the ``features`` and ``cam`` outputs (:mod:`export.explain_onnx`) when the
            graph ends in global average pooling and one linear layer; the log says why not.

    Returns:
        A summary as :func:`export.to_onnx.finish_export` gives it, with ``batch`` and
        ``external_data`` (the folded files).

    Raises:
        ModelError: the graph is not an image classifier edgedx can run, or external data lies
            outside the model's folder.
        UsageError: the options contradict the graph.
        ExportMismatch: the written model does not reproduce the source on ``images``.
    """
    onnx = require("onnx")
    path, output = Path(path), Path(output)
    if not path.is_file():
        raise ModelError(f"model not found: {path}")
    refuse_same_file(path, output)
    model, folded = load_self_contained(path)
    opset = _opset(model, path)
    image_input = _image_input(model, path)
    dims = _dims(image_input)
    layout, channels, height, width = _geometry(dims, given, path)
    out_value = _single_output(model, path)
    _check_width(model, given, path)
    fixed = _fixed_batch(dims)
    if fixed is not None and fixed != 1:
        raise ModelError(f"{path.name} has a batch axis fixed at {fixed}; export it with batch 1 or a dynamic batch")
    source_bytes = model.SerializeToString()

    # A final Softmax/Sigmoid leaves the graph (the manifest applies it) unless --activation says otherwise.
    final = _final_activation(model)
    stripped = None
    if final is not None and given.activation in (None, final):
        stripped = _strip_final_activation(model)
    elif final is not None and given.activation != "none":
        log.warning("%s ends in %s and --activation %s applies on top of it", path.name, final.capitalize(), given.activation)
    activation = stripped or given.activation or "logits"
    given = replace(given, provenance={"source_model": path.name, **dict(given.provenance)})
    manifest = build_manifest(given, framework="onnx", height=height, width=width, channels=channels, layout=layout,
                              activation="softmax" if activation == "logits" else activation)
    if activation == "logits":
        log.warning("%s: outputs taken as logits, %s applied by edgedx (--activation to change)", path.name, manifest.activation.value)
    elif stripped:
        log.warning("%s ends in %s: moved into the manifest, so the graph outputs logits", path.name, stripped.capitalize())
    spec = manifest.preprocess
    decoded = load_images(images, spec)
    try:
        with quiet():
            raw_source = _run(source_bytes, preprocess.apply_batch(decoded, spec), batch_one=fixed == 1)
    except Exception as exc:  # ORT's own errors: unsupported operators, bad graphs
        raise ModelError(f"ONNX Runtime cannot run {path.name}: {first_line(exc)}") from None
    width_out = raw_source.reshape(len(decoded), -1).shape[1]
    postprocess.check_output(manifest, width_out)
    source_probs = _source_probabilities(raw_source, manifest, already_probabilities=stripped is not None)

    batch = "dynamic"
    if fixed == 1:
        batch = "static 1 (--static-batch)" if static_batch else _make_batch_dynamic(model, spec, decoded)
    info = {"from": "onnx", "source_opset": opset, "batch": batch, "external_data": folded,
            "exporter": f"onnx {onnx.__version__} (graph brought by the user)"}
    if explain:
        from export.explain_onnx import add_trust_outputs, example_batch

        why = add_trust_outputs(model, example_batch(preprocess.apply_batch(decoded[:2], spec)))
        if why is not None:
            log.warning("no class-activation map or feature output: %s", why)
    with tempfile.TemporaryDirectory(prefix="edgedx-import-") as tmp:
        raw = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(raw), save_as_external_data=False)
        result = finish_export(raw, output, manifest, decoded, None, info, opset=opset, simplify=simplify,
                               tolerance=tolerance, source_probs=source_probs)
    result["output_name"] = out_value
    return result


def load_self_contained(path: Path) -> tuple[Any, list[str]]:
    """The model with every external tensor read in; external files only from the model's folder.

    Returns:
        The model and the external data files folded in (names relative to the folder).

    Raises:
        ModelError: a location that is absolute, climbs out of the folder (``..``, a symlink) or is missing.
    """
    onnx = require("onnx")
    from onnx import external_data_helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"{path} is not an ONNX model: {first_line(exc)}") from None
    folder = path.parent.resolve()
    files: list[str] = []
    for tensor in external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        rel = PurePosixPath(location.replace("\\", "/"))
        target = (folder / Path(*rel.parts)).resolve() if location and not rel.is_absolute() else None
        if target is None or ".." in rel.parts or not target.is_relative_to(folder):
            raise ModelError(f"{path.name}: tensor {tensor.name} keeps its data at {location!r}, outside the model's folder; "
                             "edgedx reads external data only from files beside the model")
        if not target.is_file():
            raise ModelError(f"{path.name}: external data file {location} is missing (expected beside the model, in {folder})")
        if location not in files:
            files.append(location)
    if files:
        try:
            external_data_helper.load_external_data_for_model(model, str(folder))
        except Exception as exc:
            raise ModelError(f"{path.name}: cannot read external data {files}: {first_line(exc)}") from None
        log.warning("%s: folded its external data (%s) into the output", path.name, ", ".join(files))
    return model, files


def _opset(model: Any, path: Path) -> int:
    onnx = require("onnx")
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    newest = onnx.defs.onnx_opset_version()
    if version is None or not MIN_OPSET <= version <= newest:
        raise ModelError(f"{path.name} uses opset {version}; edgedx reads opsets {MIN_OPSET}..{newest} of the ai.onnx domain")
    return int(version)


def _image_input(model: Any, path: Path) -> Any:
    onnx = require("onnx")
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"{path.name} has {len(inputs)} inputs {[i.name for i in inputs]}; edgedx feeds one image tensor")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(f"{path.name}: input {inputs[0].name} is {onnx.TensorProto.DataType.Name(tensor.elem_type)}; "
                         "edgedx feeds float32 (wrap a float16 or uint8 input with a Cast first)")
    if not tensor.HasField("shape") or len(tensor.shape.dim) != 4:
        rank = len(tensor.shape.dim) if tensor.HasField("shape") else "unknown"
        raise ModelError(f"{path.name}: input {inputs[0].name} has rank {rank}; edgedx feeds 4-D images (NCHW or NHWC)")
    return inputs[0]


def _dims(value: Any) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def _fixed_batch(dims: list[int | None]) -> int | None:
    return dims[0]


def _geometry(dims: list[int | None], given: Given, path: Path) -> tuple[str, int, int, int]:
    """Layout, channels, height, width: from the graph, checked against what the user gave."""
    _, a, b, c = dims
    layout = given.layout
    if layout is None:
        nchw, nhwc = a in (1, 3), c in (1, 3)
        if nchw == nhwc and given.channels is not None:
            nchw, nhwc = a == given.channels, c == given.channels
        if nchw == nhwc:
            raise UsageError(f"{path.name}: cannot tell the layout from input shape {dims}; give --layout NCHW or NHWC")
        layout = "NCHW" if nchw else "NHWC"
    channels, height, width = (a, b, c) if layout == "NCHW" else (c, a, b)
    if channels is None:
        channels = given.channels or 3
    elif given.channels is not None and given.channels != channels:
        raise UsageError(f"--channels {given.channels} but {path.name} takes {channels} channels ({layout} {dims})")
    if given.size is not None:
        w, h = given.size
        if (width not in (None, w)) or (height not in (None, h)):
            raise UsageError(f"--size {w}x{h} but {path.name} takes {width}x{height}")
        width, height = w, h
    if width is None or height is None:
        raise UsageError(f"{path.name} has a dynamic image size {dims}: give --size W or WxH (what it was trained at)")
    return layout, channels, height, width


def _single_output(model: Any, path: Path) -> str:
    outputs = list(model.graph.output)
    if len(outputs) != 1:
        raise ModelError(f"{path.name} has {len(outputs)} outputs {[o.name for o in outputs]}; edgedx scores a graph with one "
                         "(N, classes) output: remove the others (onnx.utils.extract_model)")
    return outputs[0].name


def _check_width(model: Any, given: Given, path: Path) -> None:
    """A static class axis must fit the labels (one sigmoid unit scores two), before anything else is said."""
    dims = _dims(model.graph.output[0]) if model.graph.output[0].type.tensor_type.HasField("shape") else []
    width = dims[-1] if dims else None
    n = len(given.labels or ())
    if width is None or not n or width == n or (width == 1 and n == 2):
        return
    raise ModelError(f"{path.name} outputs {width} values but {n} labels were given: {list(given.labels or ())}")


def _final_node(model: Any) -> Any | None:
    """The graph's final Softmax (over the class axis of a 2-D output) or Sigmoid node, or None."""
    out = model.graph.output[0]
    producer = next((n for n in model.graph.node if out.name in n.output), None)
    if producer is None or producer.op_type not in FINAL_ACTIVATIONS:
        return None
    rank = len(out.type.tensor_type.shape.dim) if out.type.tensor_type.HasField("shape") else 0
    axis = next((a.i for a in producer.attribute if a.name == "axis"), -1 if producer.op_type == "Softmax" else None)
    if producer.op_type == "Softmax" and not (rank == 2 and axis in (1, -1)):
        return None
    if producer.input[0] in {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}:
        return None
    return producer


def _final_activation(model: Any) -> str | None:
    node = _final_node(model)
    return None if node is None else FINAL_ACTIVATIONS[node.op_type]


def _strip_final_activation(model: Any) -> str | None:
    """Remove a final Softmax/Sigmoid over the class axis; return its activation name, or None."""
    producer = _final_node(model)
    if producer is None:
        return None
    out = model.graph.output[0]
    logits = producer.input[0]
    model.graph.node.remove(producer)
    for node in model.graph.node:  # the logits tensor takes the output's name
        for i, name in enumerate(node.output):
            if name == logits:
                node.output[i] = out.name
        for i, name in enumerate(node.input):
            if name == logits:
                node.input[i] = out.name
    for value in list(model.graph.value_info):
        if value.name == logits:
            model.graph.value_info.remove(value)
    return FINAL_ACTIVATIONS[producer.op_type]


def _run(model_bytes: bytes, batch: np.ndarray, batch_one: bool = False) -> np.ndarray:
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    if batch_one:
        return np.concatenate([session.run(None, {name: batch[i : i + 1]})[0] for i in range(len(batch))])
    return session.run(None, {name: batch})[0]


def _source_probabilities(raw: np.ndarray, manifest: Manifest, already_probabilities: bool) -> np.ndarray:
    """The source graph's probabilities in label order (its own final activation, when it had one)."""
    raw = np.asarray(raw, np.float64).reshape(raw.shape[0], -1)
    if not already_probabilities:
        return postprocess.probabilities(raw, manifest)
    if raw.shape[1] == 1 and len(manifest.labels) == 2:
        return postprocess.probabilities(np.log(raw) - np.log1p(-raw), manifest.with_changes(activation=Activation.SIGMOID))
    return raw


def _free_reshapes(model: Any) -> int:
    """Reshape targets written at batch 1 (``[1, 512]``, what torch's exporter bakes in) get -1 there.

    Only constant targets whose first entry is 1 and which have no -1 yet; the caller checks the
    result against batch-1 runs, so a wrong guess is caught and discarded.
    """
    onnx = require("onnx")
    from onnx import numpy_helper

    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        tensor = constants[node.input[1]]
        target = numpy_helper.to_array(tensor)
        if target.ndim != 1 or len(target) < 2 or target[0] != 1 or (target == -1).any():
            continue
        target = target.copy()
        target[0] = -1
        tensor.CopyFrom(onnx.numpy_helper.from_array(target.astype(np.int64), tensor.name))
        changed += 1
    return changed


def _make_batch_dynamic(model: Any, spec: preprocess.PreprocessSpec, images: list[np.ndarray]) -> str:
    """Give the input and output a dynamic batch axis if the graph then runs and agrees at batch 2.

    Returns:
        ``dynamic`` or why the batch stays at 1 (the model is left unchanged then).
    """
    onnx = require("onnx")
    trial = onnx.ModelProto()
    trial.CopyFrom(model)
    del trial.graph.value_info[:]  # intermediate shapes recorded at batch 1
    for value in (*trial.graph.input, *trial.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    patched = _free_reshapes(trial)
    pair = preprocess.apply_batch([images[0], images[-1]], spec)
    try:
        with quiet():
            both = _run(trial.SerializeToString(), pair)
            single = _run(model.SerializeToString(), pair, batch_one=True)
    except Exception as exc:
        why = f"static 1: the graph does not run at batch 2 ({first_line(exc)[:120]})"
    else:
        if both.shape == single.shape and np.allclose(both, single, rtol=1e-4, atol=1e-5):
            model.CopyFrom(trial)
            return "dynamic" + (f" ({patched} Reshape target(s) 1 -> -1 on the batch axis)" if patched else "")
        why = "static 1: at batch 2 the graph's results differ from batch 1 (a reshape fixes the batch)"
    log.warning("the batch axis stays at 1 (%s); edgedx runs one image per call", why.split(": ", 1)[1])
    return why
