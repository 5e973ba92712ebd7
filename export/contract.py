"""The manifest of a model brought from elsewhere: what the user states, completed from the model.

Every source (an ONNX file, a PyTorch model, a Keras model) fills the same :class:`Given` from the
command line, and :func:`build_manifest` completes it with what the model itself says (input size,
channels, layout) and the source framework's usual loader defaults, logging each default it takes
in one line. Nothing here imports torch, onnx or keras.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from edgedx.errors import ModelError, UsageError
from edgedx.manifest import SCHEMA_VERSION, Manifest, from_dict

log = logging.getLogger("edgedx")

#: The resize each source framework's usual loader applies, and the line that says so.
FRAMEWORK_INTERPOLATION = {
    "keras": ("nearest", False, "Keras flow_from_directory's default (nearest neighbour)"),
    "torch": ("linear", True, "torchvision Resize's default (bilinear with antialiasing)"),
    "onnx": ("area", False, "edgedx's default (area averaging); an ONNX file does not say how it was trained"),
}


@dataclass(frozen=True)
class Given:
    """What the user stated on the command line; None means "from the model, or the default"."""

    labels: tuple[str, ...] | None = None
    positive_label: str | None = None
    threshold: float | None = None
    size: tuple[int, int] | None = None
    channels: int | None = None
    layout: str | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str | None = None
    interpolation: str | None = None
    antialias: bool | None = None
    activation: str | None = None
    accepts: Mapping[str, Any] | None = None
    force_scale: bool = False
    provenance: Mapping[str, Any] = field(default_factory=dict)


def number(text: str, what: str) -> float:
    """A number or a fraction: ``0.5``, ``1/255``, ``-0.485/0.229`` (the runtime CLI's parser).

    Raises:
        UsageError: naming the option.
    """
    from edgedx.console import number as parse

    return parse(text.strip(), what)


def numbers(text: str | None, what: str) -> tuple[float, ...] | None:
    """Comma-separated numbers or fractions (``0.485,0.456,0.406`` or ``1/2``); None passes through."""
    if text is None:
        return None
    return tuple(number(x, what) for x in text.split(","))


def parse_accepts(text: str | None) -> dict[str, Any] | None:
    """``--accepts`` as JSON (``'{"modalities": ["CR", "DX"], "min_size": 64}'``), validated.

    Raises:
        UsageError: not JSON, not an object, or an unknown/ill-typed key.
    """
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--accepts is not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise UsageError('--accepts must be a JSON object, e.g. \'{"modalities": ["CR", "DX"], "min_size": 64}\'')
    from edgedx.gate import validate_accepts

    problems = validate_accepts(value)
    if problems:
        raise UsageError("--accepts: " + "; ".join(problems))
    return value


def interpolation_for(given: Given, framework: str) -> tuple[str, bool]:
    """The resize interpolation: the user's, else the framework's loader default (logged once)."""
    if given.interpolation is not None:
        antialias = bool(given.antialias) if given.antialias is not None else given.interpolation in ("linear", "cubic") and framework == "torch"
        return given.interpolation, antialias
    name, antialias, why = FRAMEWORK_INTERPOLATION[framework]
    if given.antialias is not None:
        antialias = given.antialias and name in ("linear", "cubic")
    log.warning("resize interpolation: %s%s, %s; set --interpolation to what the model was trained with",
                name, " with antialiasing" if antialias else "", why)
    return name, antialias


def build_manifest(
    given: Given,
    *,
    framework: str,
    height: int,
    width: int,
    channels: int,
    layout: str,
    activation: str,
    scale: float = 1 / 255,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    source: str = "command-line options",
) -> Manifest:
    """The validated manifest: ``given`` over the model's own facts and the defaults passed in.

    Raises:
        UsageError: the options make an invalid manifest (each problem named).
    """
    if not given.labels:
        raise UsageError("give --labels: the model's class names in its output order")
    interpolation, antialias = interpolation_for(given, framework)
    positive, threshold = given.positive_label, given.threshold
    if positive is not None and threshold is None:
        threshold = 0.5
    if activation == "sigmoid" and len(given.labels) == 2 and positive is None:
        positive, threshold = given.labels[1], 0.5 if threshold is None else threshold
    data = {
        "schema_version": SCHEMA_VERSION,
        "labels": list(given.labels),
        "input": {"layout": layout, "height": height, "width": width, "channels": channels},
        "preprocess": {
            "resize": given.resize or "stretch",
            "scale": scale if given.scale is None else given.scale,
            "mean": list(mean if given.mean is None else given.mean),
            "std": list(std if given.std is None else given.std),
            "interpolation": interpolation,
            "antialias": antialias,
        },
        "output": {"activation": activation},
        "positive_label": positive,
        "threshold": threshold,
        "accepts": dict(given.accepts or {}),
        "provenance": dict(given.provenance),
    }
    try:
        return from_dict(data, source)
    except ModelError as exc:
        raise UsageError(str(exc).replace(f"invalid manifest in {source}: ", "")) from None


def refuse_same_file(source: Path, output: Path) -> None:
    """Never write over an input.

    Raises:
        UsageError: ``output`` is ``source``.
    """
    try:
        same = output.exists() and os.path.samefile(source, output)
    except OSError:
        same = False
    if same or Path(os.path.abspath(source)) == Path(os.path.abspath(output)):
        raise UsageError(f"--out {output} is the input model; write the result to another file")


def require_manifest(model: Path) -> Manifest:
    """The manifest of an edgedx model a step reads.

    Raises:
        ModelError: the model is missing or carries no edgedx manifest.
    """
    from edgedx import manifest as manifest_mod

    if not model.is_file():
        raise ModelError(f"model not found: {model}")
    found = manifest_mod.load(model)
    if found is None:
        raise ModelError(f"{model.name} carries no edgedx manifest: bring it in with "
                         f"`edgedx export onnx {model.name} --labels ... -o OUT.onnx` first (it takes an existing ONNX too)")
    return found


def manifest_of_model(model: Path, output: Path) -> Manifest:
    """The manifest of an edgedx model that a step reads and writes anew to ``output``.

    Raises:
        UsageError: ``output`` is ``model``.
        ModelError: the model is missing or carries no edgedx manifest.
    """
    refuse_same_file(model, output)
    return require_manifest(model)


@contextmanager
def staged(output: str | Path) -> Iterator[Path]:
    """A temporary path beside ``output``, renamed onto it when the block succeeds, removed otherwise.

    A failed export leaves nothing at ``output`` (and an existing file there untouched).
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial" + output.suffix, dir=output.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp's 0600 would make the model private
    try:
        yield tmp_path
        os.replace(tmp_path, output)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
