"""Which TensorRT builds the engine: NVIDIA TensorRT (10/11) or TensorRT for RTX, and for which GPUs.

- ``tensorrt`` builds for the GPU of the machine it runs on, and needs that GPU (a CUDA device must
  exist before any TensorRT object does).
- ``tensorrt-rtx`` (``pip install 'edgedx[rtx]'``, ``import tensorrt_rtx``) builds ahead of time
  with no GPU, for a list of target compute capabilities; its plans run only under TensorRT-RTX's
  own runtime on those GPUs (RTX workstations and GeForce cards, not Hopper or Jetson).

:func:`choose_builder` imports the module on first use; :func:`parse_compute_capabilities` and
:func:`set_targets` handle ``--compute-capability``. Nothing here imports TensorRT at module import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edgedx.errors import BackendUnavailable, UsageError

#: builder name -> (Python module, install hint)
BUILDERS: dict[str, tuple[str, str]] = {
    "tensorrt": ("tensorrt", "pip install 'edgedx[trt]' (the full TensorRT: the lean runtime cannot build), or use JetPack's"),
    "tensorrt-rtx": ("tensorrt_rtx", "pip install 'edgedx[rtx]' (tensorrt-rtx-cu13, Linux x86_64 and Windows)"),
}
#: ``auto`` tries these in order.
PREFERENCE = ("tensorrt", "tensorrt-rtx")
#: Compute capabilities TensorRT-RTX 1.x can target (its ``ComputeCapability`` enum, less CURRENT/NONE).
RTX_TARGETS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
#: What TensorRT-RTX builds for when no target is set (its support matrix: "portable across devices
#: with compute capabilities 8.6, 8.9 and 12.0"); recorded in the sidecar as the engine's targets.
RTX_DEFAULT_TARGETS = ("8.6", "8.9", "12.0")


@dataclass(frozen=True)
class Builder:
    """The TensorRT module that builds, by edgedx's name for it."""

    name: str  # "tensorrt" or "tensorrt-rtx"
    module: Any
    version: str

    @property
    def needs_gpu(self) -> bool:
        """True when the build host's GPU is the target (TensorRT); False for ahead-of-time RTX builds."""
        return self.name == "tensorrt"

    @property
    def label(self) -> str:
        return "TensorRT-RTX" if self.name == "tensorrt-rtx" else "TensorRT"

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            raise BackendUnavailable(f"cannot read {self.label}'s version {self.version!r}") from None


def choose_builder(requested: str = "auto", importer: Callable[[str], Any] = importlib.import_module) -> Builder:
    """Import the builder ``requested``: ``tensorrt``, ``tensorrt-rtx`` or ``auto`` (TensorRT where it
    imports, else TensorRT-RTX).

    Raises:
        UsageError: an unknown builder name.
        BackendUnavailable: the builder (for ``auto``: either) is not installed or has no version.
    """
    if requested != "auto" and requested not in BUILDERS:
        raise UsageError(f"unknown builder {requested!r}: choose auto, {', '.join(BUILDERS)}")
    names = PREFERENCE if requested == "auto" else (requested,)
    reasons = []
    for name in names:
        module_name, hint = BUILDERS[name]
        try:
            module = importer(module_name)
        except ImportError as exc:
            reasons.append(f"{name} is not installed ({hint})" if exc.name == module_name else f"{name} does not import ({exc}): {hint}")
            continue
        version = getattr(module, "__version__", None)
        if not isinstance(version, str) or not version:
            reasons.append(f"{module_name} has no __version__: a broken install? {hint}")
            continue
        return Builder(name, module, version)
    raise BackendUnavailable("building engines needs TensorRT or TensorRT-RTX: " + "; ".join(reasons))


def parse_compute_capabilities(text: str | None) -> tuple[str, ...] | None:
    """``"8.6,8.9,12.0"`` -> ("8.6", "8.9", "12.0") (sorted, deduplicated); None for TensorRT-RTX's default.

    Raises:
        UsageError: a value that is not a compute capability TensorRT-RTX can target.
    """
    if text is None or not text.strip():
        return None
    out = set()
    for part in text.split(","):
        value = part.strip()
        if value not in RTX_TARGETS:
            raise UsageError(f"--compute-capability {value!r} is not one TensorRT-RTX can target: choose from {', '.join(RTX_TARGETS)}")
        out.add(value)
    return tuple(sorted(out, key=lambda v: tuple(int(x) for x in v.split("."))))


def set_targets(trt: Any, config: Any, targets: Sequence[str]) -> None:
    """Set TensorRT-RTX's target compute capabilities on ``config`` (``"8.6"`` -> ``ComputeCapability.SM86``).

    Raises:
        BackendUnavailable: this TensorRT-RTX lacks the target or refuses it.
    """
    config.num_compute_capabilities = len(targets)
    for index, target in enumerate(targets):
        member = "SM" + target.replace(".", "")
        value = getattr(trt.ComputeCapability, member, None)
        if value is None or not config.set_compute_capability(value, index):
            raise BackendUnavailable(f"TensorRT-RTX {trt.__version__} cannot target compute capability {target}")
