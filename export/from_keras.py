"""Keras 3 ``.keras`` / legacy ``.h5`` -> ONNX, without TensorFlow (Keras's torch backend).

On that backend a Keras model *is* an ``nn.Module``, so it takes :mod:`export.to_onnx`'s exporter,
embedding and comparison; this module only reads the model, refuses heads edgedx cannot score, and
moves the final softmax/sigmoid into the manifest.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgedx import preprocess
from edgedx.errors import BackendUnavailable, ModelError, UsageError, first_line
from edgedx.manifest import Manifest, from_dict
from edgedx.preprocess import PreprocessSpec
from export.contract import Given, build_manifest, refuse_same_file
from export.quiet import quiet
from export.to_onnx import ImageSource, Tolerance, export_legacy, finish_export, load_images, require

log = logging.getLogger("edgedx")


def export_keras(
    path: str | Path,
    output: str | Path,
    labels: Sequence[str],
    *,
    positive_label: str | None = None,
    threshold: float | None = None,
    spec: PreprocessSpec | None = None,
    given: Given | None = None,
    provenance: Mapping[str, Any] | None = None,
    images: Sequence[ImageSource] | None = None,
    opset: int = 17,
    simplify: bool = False,
    tolerance: Tolerance = Tolerance(),
    explain: bool = False,
) -> dict[str, Any]:
    """Export a Keras 3 ``.keras`` or legacy ``.h5`` model (no TensorFlow: Keras's torch backend).

    The input stays NHWC, as Keras trained it (the manifest says ``layout: NHWC``); ONNX Runtime and
    TensorRT remove the layout transposes themselves. The model's final sigmoid/softmax is
    moved into the manifest. Preprocessing defaults to the model's input size, nearest-neighbour
    resizing (``flow_from_directory``'s) and ``scale`` 1/255, mean 0, std 1 (the tutorials'
    ``ImageDataGenerator(rescale=1./255)``); when the model has its own ``Rescaling`` or
    ``Normalization`` layer, edgedx feeds it 0..255 pixels instead (scale 1), and refuses a
    ``given.scale``/``mean``/``std`` on top unless ``given.force_scale``.

    Args:
        labels: in the model's output order (Keras ``flow_from_directory``: sorted folder names).
        positive_label, threshold: binary models; a one-unit sigmoid head scores ``labels[1]``
            (the default positive label) and decides at 0.5 unless told otherwise.
        spec: the whole preprocessing, as is (overrides ``given``'s preprocessing options).
        given: command-line options (size, scale, interpolation, accepts, ...); the labels,
            positive label and threshold above win over its own.
        explain: add the ``features`` and ``cam`` outputs (:mod:`export.explain_onnx`) when the
            model ends in global average pooling and one Dense layer; the log says why not.

    Raises:
        ModelError: a one-unit softmax head (always 1.0), a head without softmax/sigmoid, or a
            label count that does not match the output.
        UsageError: a scale/mean/std on top of the model's own Rescaling/Normalization layer.
    """
    os.environ["KERAS_BACKEND"] = "torch"  # Keras reads this once, at its first import
    with quiet():
        keras = require("keras")
        torch = require("torch")
    if keras.backend.backend() != "torch":
        raise BackendUnavailable(f"Keras was imported with the {keras.backend.backend()} backend; export needs KERAS_BACKEND=torch set before keras is imported")
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model not found: {path}")
    refuse_same_file(path, Path(output))
    try:
        with quiet():
            model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        raise ModelError(f"Keras cannot load {path}: {first_line(exc)}") from None
    head, activation = _keras_head(model)
    width = int(model.outputs[0].shape[-1])
    labels = list(labels)
    if activation == "sigmoid" and width == 1:
        if len(labels) != 2:
            raise ModelError(f"a one-unit sigmoid model scores one label against another: give two labels, got {labels}")
        positive_label = positive_label or labels[1]
        threshold = 0.5 if threshold is None else threshold
    elif width != len(labels):
        raise ModelError(f"the model outputs {width} values but {len(labels)} labels were given: {labels}")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]) or shape[3] not in (1, 3):
        raise ModelError(f"{path.name} has input shape {shape}: expected a fixed-size NHWC image input with 1 or 3 channels")
    own = scaling_layers(model)
    given = replace(given or Given(), labels=tuple(labels), positive_label=positive_label, threshold=threshold, activation=activation,
                    provenance={"source_model": path.name, **dict(provenance or {}), **dict((given.provenance if given else {}) or {}),
                                **({"scaling_layers": [d for _, d in own]} if own else {})})
    if spec is None:
        _check_scaling(own, given)
        if given.size is not None and given.size != (shape[2], shape[1]):
            raise UsageError(f"--size {given.size[0]}x{given.size[1]} but {path.name} takes {shape[2]}x{shape[1]}")
        if given.channels is not None and given.channels != shape[3]:
            raise UsageError(f"--channels {given.channels} but {path.name} takes {shape[3]}")
        if own:
            log.warning("%s scales its own input (%s): edgedx feeds it 0..255 pixels", path.name, "; ".join(d for _, d in own))
        manifest = build_manifest(given, framework="keras", height=shape[1], width=shape[2], channels=shape[3], layout="NHWC",
                                  activation=activation, scale=1.0 if own else 1 / 255)
        spec = manifest.preprocess
    else:
        if spec.sample_shape() != shape[1:] or spec.layout.value != "NHWC":
            raise UsageError(f"the preprocessing gives {spec.layout.value} {spec.sample_shape()} but {path.name} takes NHWC {shape[1:]}")
        manifest = from_dict({
            "schema_version": 1, "labels": labels,
            "input": {"layout": spec.layout.value, "height": spec.height, "width": spec.width, "channels": spec.channels},
            "preprocess": {"resize": spec.resize.value, "scale": spec.scale, "mean": list(spec.mean), "std": list(spec.std),
                           "pad_value": spec.pad_value, "interpolation": spec.interpolation.value, "antialias": spec.antialias},
            "output": {"activation": activation},
            "positive_label": positive_label, "threshold": threshold, "accepts": dict(given.accepts or {}),
            "provenance": dict(given.provenance),
        }, "export_keras")
    decoded = load_images(images, spec)

    def keras_probs(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch), training=False).detach().cpu().numpy().astype(np.float64)

    # The source's own probabilities, with its own activation, before the head is changed.
    source_probs = _label_order(keras_probs(preprocess.apply_batch(decoded, spec)), manifest)
    head.activation = keras.activations.linear
    model.eval()
    example = torch.from_numpy(preprocess.apply_batch(decoded[:2], spec))
    with tempfile.TemporaryDirectory(prefix="edgedx-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        export_legacy(model, example, raw, opset, dynamic_batch=True)
        if explain:
            from export.explain_onnx import example_batch, explain_file

            why = explain_file(raw, example_batch(example.numpy()))
            if why is not None:
                log.warning("no class-activation map or feature output: %s", why)
        info = {"from": f"keras {path.suffix.lstrip('.')}", "exporter": f"keras {keras.__version__} (torch backend), torch {torch.__version__} torchscript"}
        return finish_export(raw, output, manifest, decoded, None, info, opset=opset, simplify=simplify,
                             tolerance=tolerance, source_probs=source_probs)


def scaling_layers(model: Any) -> list[tuple[str, str]]:
    """The model's own ``Rescaling`` and ``Normalization`` layers (nested models too): (kind, description)."""
    found: list[tuple[str, str]] = []
    for layer in getattr(model, "layers", []):
        kind = type(layer).__name__
        if kind == "Rescaling":
            found.append(("scale", f"layer {layer.name!r}: Rescaling(scale={_short(layer.scale)}, offset={_short(layer.offset)})"))
        elif kind == "Normalization":
            found.append(("normalize", f"layer {layer.name!r}: Normalization(mean={_short(getattr(layer, 'mean', None))}, "
                                       f"variance={_short(getattr(layer, 'variance', None))})"))
        elif hasattr(layer, "layers"):
            found.extend(scaling_layers(layer))
    return found


def _check_scaling(own: list[tuple[str, str]], given: Given) -> None:
    """Refuse a scale/mean/std given on top of the model's own scaling layer (unless forced)."""
    if not own or given.force_scale:
        return
    options = [name for name, value in (("--scale", given.scale), ("--mean", given.mean), ("--std", given.std)) if value is not None]
    if options:
        raise UsageError(f"the model already scales its input ({own[0][1]}); {'/'.join(options)} on top would scale twice. "
                         "Drop it (edgedx then feeds 0..255 pixels), or give --force-scale if the model really expects scaled input")


def _short(value: Any) -> str:
    if value is None:
        return "None"
    arr = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, np.float64).reshape(-1)
    text = ", ".join(f"{v:.6g}" for v in arr[:3]) + (", ..." if arr.size > 3 else "")
    return text if arr.size == 1 else f"[{text}]"


def _keras_head(model: Any) -> tuple[Any, str]:
    """The last layer and its activation name, refusing heads edgedx cannot score."""
    head = model.layers[-1]
    fn = getattr(head, "activation", None)
    name = getattr(fn, "__name__", None) if fn is not None else None
    if name not in ("softmax", "sigmoid"):
        raise ModelError(f"the last layer {head.name} ({type(head).__name__}) has activation {name!r}; "
                         "edgedx exports Keras models whose last layer ends in softmax or sigmoid")
    units = int(model.outputs[0].shape[-1])
    if name == "softmax" and units == 1:
        raise ModelError(f"the last layer {head.name} is Dense(1, activation='softmax'): softmax over one value is always 1.0, "
                         "so this model predicts the same class for every image. Retrain with Dense(1, activation='sigmoid') "
                         "(binary) or Dense(2, activation='softmax')")
    return head, name


def _label_order(probs: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Source probabilities (N, K) -> (N, len(labels)) as edgedx reports them (one-unit sigmoid: two columns)."""
    if probs.shape[1] == 1 and len(manifest.labels) == 2:
        pos = manifest.positive_index if manifest.positive_index is not None else 1
        out = np.empty((len(probs), 2))
        out[:, pos], out[:, 1 - pos] = probs[:, 0], 1.0 - probs[:, 0]
        return out
    return probs
