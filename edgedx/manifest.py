"""The model's contract: labels, input, preprocessing, output activation, threshold, provenance.

Stored as JSON in one ONNX metadata entry (key ``edgedx.manifest``) and, for TensorRT engines, in a
sidecar ``<engine>.json`` (which adds an ``engine`` section). Loading validates everything and
reports every problem at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from edgedx.errors import ModelError
from edgedx.limits import MAX_MANIFEST_SIZE
from edgedx.text import printable
from edgedx.preprocess import PreprocessSpec, ResizePolicy

SCHEMA = "edgedx.manifest"
SCHEMA_VERSION = 1
METADATA_KEY = "edgedx.manifest"
PRECISIONS = ("fp32", "fp16", "int8", "mixed")


class Activation(str, Enum):
    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"
    NONE = "none"


@dataclass(frozen=True)
class Manifest:
    """A validated model contract.

    ``positive_label`` and ``threshold`` are set together, for binary screening models: the
    decision is positive when the positive label's probability is at least ``threshold``.
    """

    labels: tuple[str, ...]
    preprocess: PreprocessSpec
    activation: Activation = Activation.SOFTMAX
    input_name: str | None = None
    output_name: str | None = None
    positive_label: str | None = None
    threshold: float | None = None
    precision: str = "fp32"
    provenance: Mapping[str, Any] = field(default_factory=dict)
    accepts: Mapping[str, Any] = field(default_factory=dict)
    engine: Mapping[str, Any] = field(default_factory=dict)
    calibration: Mapping[str, Any] = field(default_factory=dict)
    #: Extra graph outputs: pooled penultimate features (N, C) and class-activation maps (N, K, h, w).
    features_output: str | None = None
    cam_output: str | None = None
    #: Out-of-distribution score parameters (see :mod:`edgedx.ood`), fitted at export.
    ood: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_binary(self) -> bool:
        return self.positive_label is not None

    @property
    def positive_index(self) -> int | None:
        return None if self.positive_label is None else self.labels.index(self.positive_label)

    def to_dict(self) -> dict[str, Any]:
        p = self.preprocess
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "labels": list(self.labels),
            "input": {
                "name": self.input_name,
                "layout": p.layout.value,
                "height": p.height,
                "width": p.width,
                "channels": p.channels,
            },
            "preprocess": {
                "resize": p.resize.value,
                "scale": p.scale,
                "mean": list(p.mean),
                "std": list(p.std),
                "pad_value": p.pad_value,
                "interpolation": p.interpolation.value,
                "antialias": p.antialias,
            },
            "output": {"name": self.output_name, "activation": self.activation.value,
                       **{k: v for k, v in (("features", self.features_output), ("cam", self.cam_output)) if v}},
            "positive_label": self.positive_label,
            "threshold": self.threshold,
            "precision": self.precision,
            "provenance": dict(self.provenance),
        }
        if self.accepts:
            out["accepts"] = dict(self.accepts)
        if self.engine:
            out["engine"] = dict(self.engine)
        if self.calibration:
            out["calibration"] = dict(self.calibration)
        if self.ood:
            out["ood"] = dict(self.ood)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    def with_changes(self, **changes: Any) -> Manifest:
        data = {**self.__dict__, **changes}
        return Manifest(**data)


def from_dict(data: Any, source: str = "manifest") -> Manifest:
    """Validate ``data`` and build a :class:`Manifest`.

    Raises:
        ModelError: naming every missing or wrong field.
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ModelError(f"invalid manifest in {source}: expected a JSON object")
    if data.get("schema", SCHEMA) != SCHEMA:
        problems.append(f"schema: expected {SCHEMA!r}, got {data.get('schema')!r}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        problems.append(f"schema_version: this edgedx reads version {SCHEMA_VERSION}, got {version!r}")

    labels = data.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        problems.append("labels: must be a non-empty list of non-empty strings")
        labels = []
    elif len(set(labels)) != len(labels):
        problems.append("labels: must be unique")

    inp = _section(data, "input", problems)
    pre = _section(data, "preprocess", problems)
    out = _section(data, "output", problems)
    spec = None
    try:
        spec = PreprocessSpec(
            width=_required(inp, "input.width", problems),
            height=_required(inp, "input.height", problems),
            channels=_required(inp, "input.channels", problems),
            layout=inp.get("layout", "NCHW"),
            resize=pre.get("resize", ResizePolicy.STRETCH.value),
            scale=pre.get("scale", 1.0 / 255.0),
            mean=tuple(pre.get("mean", (0.0,))) if isinstance(pre.get("mean", ()), (list, tuple)) else pre.get("mean"),
            std=tuple(pre.get("std", (1.0,))) if isinstance(pre.get("std", ()), (list, tuple)) else pre.get("std"),
            pad_value=pre.get("pad_value", 0.0),
            interpolation=pre.get("interpolation", "area"),
            antialias=pre.get("antialias", False),
        )
    except (ValueError, TypeError) as exc:
        problems.extend(f"preprocess/input {p}" for p in str(exc).split("; "))

    activation = out.get("activation", "softmax")
    if not isinstance(activation, str) or activation not in {a.value for a in Activation}:
        problems.append(f"output.activation: must be softmax, sigmoid or none, got {activation!r}")
        activation = "none"

    positive, threshold = data.get("positive_label"), data.get("threshold")
    if (positive is None) != (threshold is None):
        problems.append("positive_label and threshold: give both (binary screening model) or neither")
    if positive is not None and not isinstance(positive, str):
        problems.append("positive_label: must be a string")
        positive = None
    if positive is not None and labels and positive not in labels:
        problems.append(f"positive_label: {positive!r} is not one of the labels {labels}")
    if positive is not None and len(labels) != 2:
        problems.append("positive_label: only binary models (two labels) have a positive label")
    if threshold is not None and (isinstance(threshold, bool) or not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0)):
        problems.append(f"threshold: must be a number in [0, 1], got {threshold!r}")
    if activation == "sigmoid" and len(labels) == 2 and positive is None:
        problems.append("positive_label: a sigmoid model with two labels needs the label its output scores")

    precision = data.get("precision", "fp32")
    if not isinstance(precision, str) or precision not in PRECISIONS:
        problems.append(f"precision: must be one of {list(PRECISIONS)}, got {precision!r}")
    for key in ("features", "cam"):
        if key in out and not (isinstance(out[key], str) and out[key]):
            problems.append(f"output.{key}: must be the name of a graph output")
    if "ood" in data:
        from edgedx.ood import validate as validate_ood

        problems.extend(validate_ood(data["ood"], out.get("features")))
    for name in ("provenance", "accepts", "engine", "calibration"):
        if not isinstance(data.get(name, {}), Mapping):
            problems.append(f"{name}: must be an object")
    if isinstance(data.get("accepts", {}), Mapping):
        from edgedx.gate import validate_accepts

        problems.extend(validate_accepts(data.get("accepts", {})))

    if isinstance(data.get("calibration", {}), Mapping) and data.get("calibration"):
        from edgedx.calibration import validate as validate_calibration

        problems.extend(validate_calibration(data["calibration"], labels, positive, activation))

    if problems or spec is None:
        raise ModelError(f"invalid manifest in {source}: " + "; ".join(problems))
    return Manifest(
        labels=tuple(labels),
        preprocess=spec,
        activation=Activation(activation),
        input_name=inp.get("name"),
        output_name=out.get("name"),
        positive_label=positive,
        threshold=None if threshold is None else float(threshold),
        precision=precision,
        provenance=dict(data.get("provenance", {})),
        accepts=dict(data.get("accepts", {})),
        engine=dict(data.get("engine", {})),
        calibration=dict(data.get("calibration") or {}),
        features_output=out.get("features"),
        cam_output=out.get("cam"),
        ood=dict(data.get("ood", {})),
    )


def from_json(text: str, source: str = "manifest") -> Manifest:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"invalid manifest in {source}: not JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise ModelError(f"invalid manifest in {source}: JSON nested too deeply") from None
    return from_dict(data, source)


def sidecar_path(model_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def load(model_path: str | Path, metadata: Mapping[str, str] | None = None) -> Manifest | None:
    """The manifest of the model at ``model_path``, or None when it carries none.

    ONNX files carry it in their metadata; other files (TensorRT engines) in a sidecar.

    Args:
        metadata: the ONNX file's metadata when the caller already read it (a backend at open),
            so the file is not read twice.

    Raises:
        ModelError: the manifest exists but is invalid, or the model cannot be read.
    """
    model_path = Path(model_path)
    sidecar = sidecar_path(model_path)
    if os.path.lexists(sidecar):  # a dangling link or a FIFO is a bad sidecar, not a missing one
        return from_json(_read_text(sidecar), str(sidecar))
    if metadata is not None or _looks_like_onnx(model_path):
        from edgedx import onnxfile

        text = (onnxfile.read_metadata(model_path) if metadata is None else metadata).get(METADATA_KEY)
        return None if text is None else from_json(text, str(model_path))
    return None


def assumed(
    *,
    input_shape: tuple,
    layout: str | None = None,
    labels: list[str] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    scale: float | None = None,
    resize: str | None = None,
    activation: str | None = None,
    num_outputs: int | None = None,
    positive_label: str | None = None,
    threshold: float | None = None,
) -> tuple[Manifest, list[str]]:
    """Build a manifest for a model that carries none, from its input shape and the user's options.

    Returns:
        The manifest and a list of what was assumed rather than given (for one warning).
    """
    assumed_items: list[str] = []
    dims = list(input_shape)[1:]
    if len(dims) != 3:
        raise ModelError(f"cannot infer preprocessing for input shape {input_shape}: expected 4-D image input")
    if layout is None:
        layout = "NHWC" if isinstance(dims[2], int) and dims[2] in (1, 3) and not (isinstance(dims[0], int) and dims[0] in (1, 3)) else "NCHW"
        assumed_items.append(f"layout {layout}")
    c, h, w = (dims[0], dims[1], dims[2]) if layout == "NCHW" else (dims[2], dims[0], dims[1])
    if not all(isinstance(x, int) and x > 0 for x in (c, h, w)):
        raise ModelError(f"the model's input shape {input_shape} has dynamic spatial dimensions; give a manifest")
    if labels is None:
        n = num_outputs or 1
        labels = [f"class_{i}" for i in range(max(n, 2) if n == 1 else n)]
        assumed_items.append(f"labels {labels}")
    if mean is None:
        mean = (0.0,)
        assumed_items.append("mean 0")
    if std is None:
        std = (1.0,)
        assumed_items.append("std 1")
    if scale is None:
        scale = 1.0 / 255.0
        assumed_items.append("scale 1/255")
    if resize is None:
        resize = "stretch"
        assumed_items.append("resize stretch")
    if activation is None:
        activation = "sigmoid" if num_outputs == 1 else "softmax"
        assumed_items.append(f"activation {activation}")
    if activation == "sigmoid" and len(labels) == 2 and positive_label is None:
        positive_label = labels[1]
        assumed_items.append(f"positive label {positive_label!r}")
    if positive_label is not None and threshold is None:
        threshold = 0.5
        assumed_items.append("threshold 0.5")
    data = {
        "schema_version": SCHEMA_VERSION,
        "labels": list(labels),
        "input": {"layout": layout, "height": h, "width": w, "channels": c},
        "preprocess": {"resize": resize, "scale": scale, "mean": list(mean), "std": list(std)},
        "output": {"activation": activation},
        "positive_label": positive_label,
        "threshold": threshold,
        "provenance": {"note": "assumed at run time: the model carries no manifest"},
    }
    return from_dict(data, "command-line options"), assumed_items


def _looks_like_onnx(path: Path) -> bool:
    return path.suffix.lower() == ".onnx"


def _read_text(path: Path) -> str:
    """A sidecar's text: a regular file of at most :data:`~edgedx.limits.MAX_MANIFEST_SIZE` bytes
    (a FIFO named like the sidecar would block a plain read, a link to /dev/zero never ends)."""
    from edgedx.files import read_regular, reason

    try:
        return read_regular(path, MAX_MANIFEST_SIZE).decode("utf-8")
    except OSError as exc:
        raise ModelError(f"cannot read {printable(path)}: {reason(exc)}") from None
    except UnicodeDecodeError:
        raise ModelError(f"cannot read {printable(path)}: not UTF-8 text") from None


def _section(data: Mapping, name: str, problems: list[str]) -> Mapping:
    value = data.get(name)
    if value is None:
        problems.append(f"{name}: missing")
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{name}: must be an object")
        return {}
    return value


def _required(section: Mapping, name: str, problems: list[str]) -> Any:
    value = section.get(name.split(".")[-1])
    if value is None:
        problems.append(f"{name}: missing")
        return 1  # placeholder so the spec can still report its own problems
    return value

