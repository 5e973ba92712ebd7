"""Opening a model: pick the backend, fall back only under ``auto`` (and say why), settle the contract.

:func:`open_model` returns an :class:`OpenedModel`: the session, the manifest it runs under (read
once, by the backend at open, or assumed from :class:`ManifestOverrides` for a model without one)
and, when ``auto`` had to run something other than what it chose, a typed :class:`Fallback`.
Every check that a model and its manifest agree lives here, before the first image is decoded.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from edgedx import bundled, postprocess
from edgedx import manifest as manifest_mod
from edgedx.backends import Session, SessionOptions, open_session, resolve_backend
from edgedx.errors import EdgedxError, ModelError, UsageError
from edgedx.manifest import Manifest

log = logging.getLogger("edgedx")


@dataclass(frozen=True)
class ManifestOverrides:
    """What the user supplies for a model without a manifest (and ``threshold`` for any model)."""

    labels: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    resize: str | None = None
    layout: str | None = None
    activation: str | None = None
    positive_label: str | None = None


@dataclass(frozen=True)
class Fallback:
    """Why ``auto`` ran another file on another backend than the one it chose.

    Args:
        chosen: the backend ``auto`` picked for the model.
        refused: the model file that backend could not run here.
        reason: the backend's one-line refusal.
        ran: the backend that ran instead.
        ran_model: the file it ran (the engine's source ONNX).
    """

    chosen: str
    refused: Path
    reason: str
    ran: str
    ran_model: Path

    def __str__(self) -> str:
        return f"{self.chosen} refused {self.refused.name} ({self.reason}); ran source ONNX {self.ran_model.name} on {self.ran}"


@dataclass
class OpenedModel:
    """A session and the contract it runs under. Closing it closes the session."""

    path: Path
    session: Session
    manifest: Manifest
    fallback: Fallback | None = None

    def close(self) -> None:
        self.session.close()


def open_model(
    model: str | Path | None,
    backend: str = "auto",
    *,
    options: SessionOptions | None = None,
    overrides: ManifestOverrides | None = None,
    threshold: float | None = None,
) -> OpenedModel:
    """Open ``model`` (None: the bundled default) on ``backend`` and check its contract.

    Raises:
        UsageError: an unknown backend, or a threshold for a model that is not binary.
        ModelError: the file is missing or bad, or its manifest does not match the model.
        BackendUnavailable: the requested backend cannot run here (``auto`` falls back when it can).
    """
    path = bundled.resolve(model) if model is not None else bundled.default_model(backend)
    if not path.is_file():
        raise ModelError(f"model not found: {path}")
    session, fallback = _open_session(path, backend, options or SessionOptions())
    try:
        found = session_manifest(path, session, overrides or ManifestOverrides(), threshold)
    except BaseException:
        session.close()
        raise
    return OpenedModel(path, session, found, fallback)


def _open_session(path: Path, backend: str, options: SessionOptions) -> tuple[Session, Fallback | None]:
    name = resolve_backend(path, backend)
    try:
        return open_session(path, backend, options), None
    except EdgedxError as exc:
        if backend != "auto" or exc.fallback_onnx is None:
            raise
        fallback = Fallback(name, path, str(exc), "onnxruntime", Path(exc.fallback_onnx))
    log.warning("%s", fallback)
    return open_session(fallback.ran_model, fallback.ran, options), fallback


def session_manifest(path: Path, session: Session, ov: ManifestOverrides, threshold: float | None) -> Manifest:
    """The manifest the session read at open, or one assumed from ``ov``; checked against the model.

    Raises:
        ModelError: the manifest's input or output does not match the model's tensors.
        UsageError: ``threshold`` given for a model without a positive label.
    """
    out_spec = session.outputs[0]
    width = out_spec.shape[-1] if out_spec.shape and isinstance(out_spec.shape[-1], int) else None
    found = session.manifest
    if found is None:
        found, assumed = manifest_mod.assumed(
            input_shape=session.inputs[0].shape,
            layout=ov.layout,
            labels=ov.labels,
            mean=ov.mean,
            std=ov.std,
            scale=ov.scale,
            resize=ov.resize,
            activation=ov.activation,
            num_outputs=width,
            positive_label=ov.positive_label,
            threshold=threshold,
        )
        if assumed:
            log.warning("%s has no edgedx manifest; assumed %s", path.name, ", ".join(assumed))
    if threshold is not None and found.positive_label is None:
        raise UsageError("--threshold applies to binary screening models; this model has no positive label")
    check_input(found, session)
    if width is not None:
        postprocess.check_output(found, width)
    return found


def check_input(m: Manifest, session: Session) -> None:
    """The manifest's input must match the model's real input tensor.

    Raises:
        ModelError: naming both shapes.
    """
    shape = session.inputs[0].shape
    expected = (None, *m.preprocess.sample_shape())
    if len(shape) != 4 or any(isinstance(a, int) and a != b for a, b in zip(shape[1:], expected[1:])):
        raise ModelError(
            f"manifest input {m.preprocess.layout.value} {expected[1:]} does not match the model's input "
            f"{session.inputs[0].name} {shape}"
        )


def default_spin_wait(options: SessionOptions, workers: int) -> SessionOptions:
    """Spinning inference threads would take the cores the decode workers need: off when there are workers."""
    if options.spin_wait is not None:
        return options
    return dataclasses.replace(options, spin_wait=workers == 0)
