"""What the Triton repository writer (:mod:`export.triton`) and checker (:mod:`export.triton_check`)
share: the report, Triton's ModelConfig protobuf, reading configs and the manifest they carry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedx import manifest as manifest_mod
from edgedx.errors import BackendUnavailable, ModelError
from edgedx.manifest import Manifest
from edgedx.serving.triton_models import MANIFEST_PARAMETER


@dataclass
class RepositoryReport:
    """What was written (or checked): the ensemble, its steps and what they serve."""

    repository: Path
    ensemble: str
    steps: dict[str, str]  # model name -> platform/backend
    model_file: str
    max_batch_size: int
    input: dict[str, Any]
    output: dict[str, Any]
    labels: list[str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def model_config_pb2() -> Any:
    """Triton's ModelConfig protobuf module, as ``tritonclient`` ships it."""
    try:
        from tritonclient.grpc import model_config_pb2 as pb
    except ImportError:
        raise BackendUnavailable("Triton model repositories need tritonclient: pip install 'edgedx[triton]'") from None
    return pb


def output_labels(m: Manifest, width: int) -> list[str]:
    """One label per output index, for Triton's classification extension (a one-output sigmoid model
    scores its positive label)."""
    if width == 1 and m.positive_label is not None:
        return [m.positive_label]
    return list(m.labels)


def read_config(folder: Path) -> Any:
    """Parse ``folder/config.pbtxt`` into a ModelConfig.

    Raises:
        ModelError: missing or not valid text-format ModelConfig.
    """
    from google.protobuf import text_format

    pb = model_config_pb2()
    path = folder / "config.pbtxt"
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), pb.ModelConfig())
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    except text_format.ParseError as exc:
        raise ModelError(f"{path} is not a valid Triton model config: {exc}") from None


def manifest_of(config: Any) -> Manifest:
    """The manifest a config carries in its parameters."""
    text = config.parameters[MANIFEST_PARAMETER].string_value if MANIFEST_PARAMETER in config.parameters else ""
    if not text:
        raise ModelError(f"{config.name}: no {MANIFEST_PARAMETER} parameter")
    return manifest_mod.from_json(text, f"{config.name}/config.pbtxt")
