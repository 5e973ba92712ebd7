"""The TensorRT engine guard: may this engine load on this machine?

Steps 1 and 3 of opening an engine (see :mod:`edgedx.backends.tensorrt`): :func:`file_problems`
judges the sidecar and the plan's hash, :func:`runtime_problems` compares the sidecar's ``engine``
section with what this machine offers (:class:`RuntimeFacts`). Both are pure; the file reads they
need are :func:`read_sidecar` and :func:`sha256_file`. Nothing here imports TensorRT or touches a
GPU. :class:`EngineGuardError` carries ``fallback_onnx`` for ``backend="auto"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedx.errors import ModelError, file_sha256
from edgedx.files import read_regular
from edgedx.limits import MAX_MANIFEST_SIZE

#: Hardware-compatible engines (AMPERE_PLUS) run on compute capability 8.0 and newer.
HARDWARE_COMPATIBLE_MIN_MAJOR = 8


class EngineGuardError(ModelError):
    """The engine cannot be used here (sidecar, hash, version, GPU, trust or deserialization).

    ``fallback_onnx`` is the engine's source ONNX when the sidecar names one that exists.
    """

    def __init__(self, message: str, fallback_onnx: Path | None = None) -> None:
        super().__init__(message)
        self.fallback_onnx = fallback_onnx


@dataclass(frozen=True)
class RuntimeFacts:
    """What this machine offers an engine: the TensorRT that loads it and the GPU it runs on."""

    tensorrt_version: str
    lean: bool
    compute_capability: str  # "8.7"
    device_name: str
    builder: str = "tensorrt"  # the runtime family: "tensorrt" (incl. lean) or "tensorrt-rtx"


# -- guard: pure functions over the sidecar and runtime facts ----------------------------------


def file_problems(sidecar: Mapping[str, Any] | None, engine_sha256: str, sidecar_name: str) -> list[str]:
    """Problems found from files alone: missing sidecar or engine section, hash mismatch."""
    rebuild = "rebuild it with: edgedx export engine MODEL.onnx"
    if sidecar is None:
        return [f"no sidecar {sidecar_name} next to the engine: edgedx needs it to trust and describe the engine; {rebuild}"]
    built = sidecar.get("engine")
    if not isinstance(built, Mapping) or not built:
        return [f"{sidecar_name} has no engine section (is it an ONNX manifest?); {rebuild}"]
    if built.get("sha256") != engine_sha256:
        return [f"the engine file does not match {sidecar_name} (sha256 differs): it was rebuilt or altered after its sidecar; {rebuild}"]
    return []


def engine_builder(built: Mapping[str, Any]) -> str:
    """``tensorrt`` or ``tensorrt-rtx``: who built the engine (sidecars before TensorRT-RTX say nothing: TensorRT)."""
    return str(built.get("builder") or "tensorrt")


def runtime_problems(built: Mapping[str, Any], facts: RuntimeFacts, trust_engine: bool) -> list[str]:
    """Problems between the engine's build facts (the sidecar's ``engine`` section) and this machine."""
    if engine_builder(built) == "tensorrt-rtx" or facts.builder == "tensorrt-rtx":
        return _rtx_problems(built, facts)
    problems = []
    version = str(built.get("tensorrt_version", "?"))
    vc = bool(built.get("version_compatible"))
    if facts.lean and not vc:
        problems.append(
            "tensorrt_lean runs only version-compatible engines and this one was built without --version-compatible: "
            "install tensorrt, or rebuild with --version-compatible"
        )
    if not vc and facts.tensorrt_version != version:
        problems.append(
            f"engine built with TensorRT {version}, this machine has {facts.tensorrt_version}: "
            "rebuild it here, or build it with --version-compatible"
        )
    if vc and _version_tuple(facts.tensorrt_version) < _version_tuple(version):
        problems.append(f"version-compatible engine built with TensorRT {version} needs {version} or newer, this machine has {facts.tensorrt_version}")
    if vc and built.get("exclude_lean_runtime") and facts.tensorrt_version != version:
        problems.append(f"engine built without its lean runtime (--exclude-lean-runtime) runs only on TensorRT {version}, this machine has {facts.tensorrt_version}")
    cc = str(built.get("compute_capability", "?"))
    where = f"{built.get('gpu_name', 'unknown GPU')}, compute capability {cc}"
    if built.get("hardware_compatible"):
        if _version_tuple(facts.compute_capability)[:1] < (HARDWARE_COMPATIBLE_MIN_MAJOR,):
            problems.append(f"hardware-compatible engine needs compute capability 8.0+, this GPU ({facts.device_name}) is {facts.compute_capability}")
    elif facts.compute_capability != cc:
        problems.append(
            f"engine built for {where}; this GPU ({facts.device_name}) is {facts.compute_capability}: "
            "rebuild it here, or build it with --hardware-compatible (Ampere and newer)"
        )
    if vc and not trust_engine:
        problems.append(
            "engine is version-compatible, so it carries host code TensorRT would run: "
            "pass --trust-engine (SessionOptions(trust_engine=True)) if you trust where it came from"
        )
    return problems


def _rtx_problems(built: Mapping[str, Any], facts: RuntimeFacts) -> list[str]:
    """A TensorRT-RTX plan runs under TensorRT-RTX of its build version, on any GPU it targets."""
    if engine_builder(built) != facts.builder:
        return [f"engine built with {engine_builder(built)}, this runtime is {facts.builder}: rebuild it with edgedx export engine --builder {facts.builder}"]
    problems = []
    version = str(built.get("tensorrt_version", "?"))
    if facts.tensorrt_version != version:
        problems.append(
            f"engine built with TensorRT-RTX {version}, this machine has {facts.tensorrt_version}: "
            "rebuild it with edgedx export engine --builder tensorrt-rtx (no GPU needed)"
        )
    targets = [str(t) for t in built.get("compute_capabilities") or ()]
    if facts.compute_capability not in targets:
        problems.append(
            f"engine built for compute capability {', '.join(targets) or '?'}; this GPU ({facts.device_name}) is "
            f"{facts.compute_capability}: rebuild it with --compute-capability {facts.compute_capability}"
        )
    return problems


#: TensorRT-RTX's ``EngineInvalidityDiagnostics`` member -> what to tell the user.
VALIDITY_DIAGNOSTICS = {
    "VERSION_MISMATCH": "built with another TensorRT-RTX version",
    "UNSUPPORTED_CC": "not built for this GPU's compute capability",
    "OLD_CUDA_DRIVER": "the NVIDIA driver is too old for it",
    "OLD_CUDA_RUNTIME": "the CUDA runtime is too old for it",
    "INSUFFICIENT_GPU_MEMORY": "not enough free GPU memory",
    "MALFORMED_ENGINE": "the plan is malformed (truncated or not a plan)",
    "CUDA_ERROR": "a CUDA error while checking it",
}


def validity_problems(validity: str, diagnostics: int, flags: Mapping[str, int]) -> list[str]:
    """Problems from ``Runtime.get_engine_validity`` (``validity``: the ``EngineValidity`` member
    name; ``diagnostics``: its bit set; ``flags``: ``EngineInvalidityDiagnostics`` name -> bit).
    Empty for VALID and SUBOPTIMAL (which still runs)."""
    if validity != "INVALID":
        return []
    found = [VALIDITY_DIAGNOSTICS.get(name, name.lower()) for name, bit in sorted(flags.items(), key=lambda kv: kv[1]) if bit and diagnostics & bit]
    return ["TensorRT-RTX says the engine cannot run here: " + ("; ".join(found) if found else "no diagnostic given")]


def fallback_onnx(engine_path: Path, sidecar: Mapping[str, Any] | None) -> Path | None:
    """The sidecar's source ONNX (relative paths are relative to the engine's folder), if it exists."""
    built = sidecar.get("engine") if isinstance(sidecar, Mapping) else None
    source = built.get("source_onnx") if isinstance(built, Mapping) else None
    if not isinstance(source, str) or not source:
        return None
    path = Path(source)
    path = path if path.is_absolute() else engine_path.parent / path
    return path if path.is_file() else None


def sha256_file(path: Path) -> str:
    """The hex sha256 of ``path`` (the engine plan, or the ONNX it was built from)."""
    try:
        return file_sha256(path)
    except OSError as exc:
        raise ModelError(f"cannot read engine {path}: {exc.strerror or exc}") from None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:4]) or (0,)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The engine's sidecar as a dict (``{}`` when not an object); None when there is none.

    Raises:
        EngineGuardError: the sidecar exists but cannot be read as JSON.
    """
    if not path.exists():
        return None
    try:
        data = json.loads(read_regular(path, MAX_MANIFEST_SIZE).decode("utf-8"))  # no FIFO, no /dev/zero
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise EngineGuardError(f"cannot read engine sidecar {path.name}: {exc}") from None
    return data if isinstance(data, dict) else {}
