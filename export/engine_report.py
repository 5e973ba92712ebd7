"""What ``edgedx export engine`` wrote: the sidecar's ``engine`` section and the build report.

Both state only what the builder did: the targets the plan runs on (the build host's GPU for
TensorRT, the compute-capability list for TensorRT-RTX), whether a timing cache was really loaded
or TensorRT replaced an unreadable one, and compatibility levels only where the builder kept them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from export.engine_flags import BuildFlags

SIDECAR_FORMAT = 1


class CacheState(str, Enum):
    """What happened to ``--timing-cache``'s file in one build."""

    LOADED = "loaded"  # TensorRT took its timings
    REPLACED = "replaced"  # unreadable, or from another device/version: TensorRT started an empty cache
    NEW = "new"  # no file yet: an empty cache was started


def engine_section(
    *,
    builder: str,
    tensorrt_version: str,
    gpu_name: str | None,
    compute_capability: str | None,
    compute_capabilities: list[str],
    targets_from: str,
    precision: str,
    profile: dict[str, Any] | None,
    build: dict[str, Any],
    engine_sha256: str,
    engine_path: Path,
    onnx_path: Path,
    onnx_sha256: str,
    version_compatible: bool,
    exclude_lean_runtime: bool,
    hardware_compatible: bool,
) -> dict[str, Any]:
    """The sidecar's ``engine`` section: what TensorRTSession's guard checks and describe() reports.

    Args:
        builder: ``tensorrt`` or ``tensorrt-rtx`` (the runtime imports the matching module).
        gpu_name, compute_capability: the build host's GPU (TensorRT); None for TensorRT-RTX.
        compute_capabilities: every compute capability the plan runs on.
        targets_from: where that list came from ("build host GPU", "--compute-capability",
            "TensorRT-RTX default").
    """
    try:
        source = Path(os.path.relpath(onnx_path.resolve(), engine_path.resolve().parent)).as_posix()
    except ValueError:  # another drive (Windows)
        source = str(onnx_path.resolve())
    return {
        "format": SIDECAR_FORMAT,
        "builder": builder,
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "compute_capabilities": list(compute_capabilities),
        "targets_from": targets_from,
        "precision": precision,
        "profile": profile,
        "build": build,
        "version_compatible": version_compatible,
        "exclude_lean_runtime": exclude_lean_runtime,
        "hardware_compatible": hardware_compatible,
        "sha256": engine_sha256,
        "source_onnx": source,
        "source_onnx_sha256": onnx_sha256,
    }


@dataclass(frozen=True)
class EngineReport:
    """What was built, with which builder, for which GPUs, and how."""

    engine: Path
    sidecar: Path
    precision: str
    tensorrt_version: str
    gpu_name: str | None
    compute_capability: str | None
    profile: dict[str, Any] | None
    flags: BuildFlags
    size_bytes: int
    seconds: float
    sha256: str
    builder: str = "tensorrt"
    compute_capabilities: tuple[str, ...] = ()
    timing_cache: Path | None = None
    timing_cache_state: CacheState | None = None
    timing_cache_saved: bool = False
    onnx_fp16_fraction: float = 0.0

    @property
    def timing_cache_loaded(self) -> bool:
        return self.timing_cache_state is CacheState.LOADED

    def summary(self) -> str:
        batch = "static" if self.profile is None else "x".join(str(s[0]) for s in (self.profile["min"], self.profile["opt"], self.profile["max"]))
        if self.builder == "tensorrt-rtx":
            where = f"TensorRT-RTX {self.tensorrt_version} for compute capability {', '.join(self.compute_capabilities)}"
        else:
            where = f"TensorRT {self.tensorrt_version} on {self.gpu_name} (sm {self.compute_capability})"
        cache = ""
        if self.timing_cache_state is CacheState.REPLACED:
            cache = f"; timing cache {self.timing_cache} was unreadable here, TensorRT started an empty one"
        elif self.timing_cache_state is CacheState.LOADED:
            cache = f"; timing cache {self.timing_cache} loaded"
        return (
            f"built {self.engine} ({self.size_bytes / 1e6:.1f} MB, {self.precision}, batch {batch}) with {where} "
            f"in {self.seconds:.1f}s; sidecar {self.sidecar.name}{cache}"
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(engine=str(self.engine), sidecar=str(self.sidecar), timing_cache=str(self.timing_cache) if self.timing_cache else None,
                   timing_cache_state=self.timing_cache_state.value if self.timing_cache_state else None,
                   timing_cache_loaded=self.timing_cache_loaded, compute_capabilities=list(self.compute_capabilities))
        return out
