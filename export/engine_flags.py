"""The per-TensorRT-version builder flag table: which flags build the precision the ONNX already has.

TensorRT 11 networks are always strongly typed and it has no FP16/INT8 builder flags or
calibrators. TensorRT 10 (JetPack 6 on Orin) gets (see :func:`select_flags`):

- fp16: a strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``), so every layer
  keeps the ONNX's types as TensorRT 11 would; on DLA, which TensorRT 10 drives in weakly typed
  mode, ``BuilderFlag.FP16`` instead.
- int8: ``BuilderFlag.INT8``, which TensorRT 10 needs to build explicit Q/DQ quantization; layers
  outside Q/DQ stay in the ONNX's float type (no FP16 flag is added).
- fp32: no precision flag.

TensorRT-RTX (``builder="tensorrt-rtx"``, versions 1.x) is strongly typed like TensorRT 11 and sets
no precision flag; it cannot build version- or hardware-compatible plans (its plans are portable
across the compute capabilities they target instead) and has no DLA, so those options are refused.

Names are ``Enum.MEMBER`` strings, resolved on the TensorRT module only at build time; tests check
every name the table can pick against NVIDIA's documented API for that version.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgedx.errors import BackendUnavailable, UsageError

PRECISIONS = ("fp32", "fp16", "int8")
SUPPORTED_MAJORS = (10, 11)
#: Options TensorRT-RTX cannot honour, with why (option name -> reason).
RTX_REFUSED = {
    "version_compatible": "--version-compatible: TensorRT-RTX plans carry no lean runtime; rebuild with each TensorRT-RTX version instead",
    "exclude_lean_runtime": "--exclude-lean-runtime: TensorRT-RTX plans carry no lean runtime",
    "hardware_compatible": "--hardware-compatible: TensorRT-RTX ignores hardware-compatibility levels; give --compute-capability with the GPUs to run on",
    "dla_core": "--dla-core: TensorRT-RTX has no DLA (Jetson); build with --builder tensorrt on the Jetson",
    "gpu_fallback": "--gpu-fallback: TensorRT-RTX has no DLA",
}


@dataclass(frozen=True)
class BuildFlags:
    """TensorRT names to set for one build (``Enum.MEMBER`` strings, resolved on the module)."""

    network_flags: tuple[str, ...] = ()
    builder_flags: tuple[str, ...] = ()
    hardware_compatibility_level: str | None = None
    device_type: str | None = None

    def names(self) -> tuple[str, ...]:
        extra = (self.hardware_compatibility_level, self.device_type)
        return (*self.network_flags, *self.builder_flags, *(x for x in extra if x))


def select_flags(
    major: int,
    precision: str,
    *,
    dla_core: int | None = None,
    gpu_fallback: bool = False,
    version_compatible: bool = False,
    exclude_lean_runtime: bool = False,
    hardware_compatible: bool = False,
    builder: str = "tensorrt",
) -> BuildFlags:
    """The network-creation and builder flags for TensorRT ``major`` (the per-version table).

    Args:
        major: the builder's major version (10 or 11 for ``tensorrt``; any for ``tensorrt-rtx``).
        builder: ``tensorrt`` or ``tensorrt-rtx``.

    Raises:
        BackendUnavailable: a TensorRT major version edgedx does not build with.
        UsageError: an option combination the builder cannot build or honour.
    """
    if builder == "tensorrt-rtx":
        asked = {"version_compatible": version_compatible, "exclude_lean_runtime": exclude_lean_runtime,
                 "hardware_compatible": hardware_compatible, "dla_core": dla_core is not None, "gpu_fallback": gpu_fallback}
        refused = [RTX_REFUSED[k] for k, on in asked.items() if on]
        if refused:
            raise UsageError("TensorRT-RTX cannot honour " + "; ".join(refused))
        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
        return BuildFlags()
    if major not in SUPPORTED_MAJORS:
        raise BackendUnavailable(f"TensorRT {major}.x is not supported: edgedx builds engines with TensorRT 10 or 11")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if gpu_fallback and dla_core is None:
        raise UsageError("--gpu-fallback applies only with --dla-core")
    if dla_core is not None and precision == "fp32":
        raise UsageError("DLA runs FP16 and INT8 only: give an FP16 or INT8 ONNX and --precision fp16/int8, or drop --dla-core")
    if dla_core is not None and hardware_compatible:
        raise UsageError("--hardware-compatible engines run on GPUs only; drop --dla-core or --hardware-compatible")
    if exclude_lean_runtime and not version_compatible:
        raise UsageError("--exclude-lean-runtime applies only with --version-compatible")
    network_flags: list[str] = []
    builder_flags: list[str] = []
    if major == 10:
        if precision == "fp16":
            if dla_core is None:
                network_flags.append("NetworkDefinitionCreationFlag.STRONGLY_TYPED")
            else:
                builder_flags.append("BuilderFlag.FP16")
        elif precision == "int8":
            builder_flags.append("BuilderFlag.INT8")
    if gpu_fallback:
        builder_flags.append("BuilderFlag.GPU_FALLBACK")
    if version_compatible:
        builder_flags.append("BuilderFlag.VERSION_COMPATIBLE")
    if exclude_lean_runtime:
        builder_flags.append("BuilderFlag.EXCLUDE_LEAN_RUNTIME")
    return BuildFlags(
        network_flags=tuple(network_flags),
        builder_flags=tuple(builder_flags),
        hardware_compatibility_level="HardwareCompatibilityLevel.AMPERE_PLUS" if hardware_compatible else None,
        device_type="DeviceType.DLA" if dla_core is not None else None,
    )
