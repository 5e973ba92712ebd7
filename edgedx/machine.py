"""What this machine is: CPU (model, cores, SIMD features on x86-64 and aarch64), GPU, and the
versions of every runtime library edgedx can use.

For ``edgedx --version``, ``edgedx info --versions``, the machine header of ``edgedx bench
--compare`` and the benchmark scripts. Library versions come from package metadata (no import);
only :func:`cuda_versions` and :func:`gpu_name` load a CUDA binding, and only when called.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

#: SIMD features that matter for inference, as x86-64 kernels name them in /proc/cpuinfo ``flags``.
X86_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
#: The same for aarch64 (Jetson, Graviton, Apple under Linux), from ``Features``: NEON is ``asimd``,
#: FP16 arithmetic ``asimdhp``/``fphp``, int8 dot product ``asimddp``, int8 matrix multiply ``i8mm``.
ARM_FEATURES = ("asimd", "asimdhp", "fphp", "asimddp", "i8mm", "bf16", "sve", "sve2")

#: (implementer, part) from /proc/cpuinfo -> core name, for the aarch64 CPUs edgedx meets most.
ARM_PARTS = {
    ("0x41", "0xd07"): "ARM Cortex-A57",  # Jetson Nano, TX1, TX2
    ("0x4e", "0x004"): "NVIDIA Carmel",  # Jetson Xavier
    ("0x41", "0xd42"): "ARM Cortex-A78AE",  # Jetson Orin
    ("0x41", "0xd0c"): "ARM Neoverse-N1",
    ("0x41", "0xd40"): "ARM Neoverse-V1",
    ("0x41", "0xd4f"): "ARM Neoverse-V2",  # NVIDIA Grace
}
#: Report key -> distributions that provide it (the first installed one wins).
LIBRARIES: dict[str, tuple[str, ...]] = {
    "edgedx": ("edgedx",),
    "numpy": ("numpy",),
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    "openvino": ("openvino",),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13", "tensorrt_cu12"),
    "tensorrt-lean": ("tensorrt-lean", "tensorrt_lean", "tensorrt-lean-cu13", "tensorrt_lean_cu13", "tensorrt-lean-cu12"),
    "tensorrt-rtx": ("tensorrt-rtx", "tensorrt_rtx", "tensorrt-rtx-cu13", "tensorrt_rtx_cu13", "tensorrt-rtx-cu12"),
    "cuda-python": ("cuda-python", "cuda-bindings"),
    "pycuda": ("pycuda",),
    "pydicom": ("pydicom",),
    "pillow": ("pillow",),
    "tritonclient": ("tritonclient",),
    "ray": ("ray",),
    "onnx": ("onnx",),
    "torch": ("torch",),
    "typer": ("typer",),
    "rich": ("rich",),
}


def dist_version(*names: str) -> str | None:
    """The version of the first installed distribution among ``names``, or None."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict[str, str | None]:
    """Library -> installed version (None when absent), from package metadata only.

    edgedx itself falls back to ``edgedx.__version__`` when run from a source tree; OpenCV to
    ``cv2.__version__`` for a source build (which has no metadata) only when cv2 is already loaded.
    """
    import sys

    import edgedx

    out = {key: dist_version(*dists) for key, dists in LIBRARIES.items()}
    out["edgedx"] = out["edgedx"] or edgedx.__version__
    if out["opencv"] is None and "cv2" in sys.modules:
        out["opencv"] = getattr(sys.modules["cv2"], "__version__", None)
    out["python"] = platform.python_version()
    return out


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model, architecture, cores and SIMD features.

    Reads ``flags`` (x86-64) or ``Features`` (aarch64, whose kernels name them so) from
    ``cpuinfo``; aarch64 kernels often give no ``model name``, so the model falls back to
    ``Hardware``/``CPU part`` and then :func:`platform.processor`.
    """
    machine = platform.machine()
    fields: dict[str, str] = {}
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            key = key.strip()
            if sep and key not in fields:
                fields[key] = value.strip()
    except OSError:
        pass
    raw = fields.get("flags") or fields.get("Features") or ""
    found = set(raw.split())
    arm = "Features" in fields and "flags" not in fields or machine.lower() in ("aarch64", "arm64")
    wanted = ARM_FEATURES if arm else X86_FEATURES
    model = fields.get("model name") or fields.get("Hardware") or fields.get("Processor")
    if not model and "CPU part" in fields:
        part = (fields.get("CPU implementer", "").lower(), fields["CPU part"].lower())
        model = ARM_PARTS.get(part) or f"ARM CPU part {fields['CPU part']}"
    model = model or platform.processor()
    from edgedx.backends.base import cpu_count

    return {
        "model": model or "unknown",
        "arch": machine or ("aarch64" if arm else "unknown"),
        "logical_cpus": os.cpu_count(),
        "usable_cores": cpu_count(),
        "features": {f: f in found for f in wanted},
    }


def cuda_versions() -> dict[str, str | None]:
    """CUDA driver and runtime versions as ``major.minor`` through cuda-python, where installed.

    ``driver`` is None without an NVIDIA driver; both are None without cuda-python.
    """
    out: dict[str, str | None] = {"driver": None, "runtime": None}
    try:
        try:
            from cuda.bindings import runtime as rt
        except ImportError:
            from cuda import cudart as rt  # cuda-python < 12.6
    except Exception:  # noqa: BLE001 - absent or broken: report nothing
        return out
    for key, call in (("driver", "cudaDriverGetVersion"), ("runtime", "cudaRuntimeGetVersion")):
        try:
            err, value = getattr(rt, call)()
        except Exception:  # noqa: BLE001 - a missing libcudart raises here
            continue
        if int(err) == 0 and value:
            out[key] = f"{value // 1000}.{value % 1000 // 10}"
    return out


def gpu_name() -> str | None:
    """The first CUDA device's name and compute capability, or None (no binding, no device)."""
    try:
        from edgedx.cuda import installed_bindings, open_driver

        if not installed_bindings():
            return None
        with open_driver("auto") as cuda:
            count, _ = cuda.probe()
            if not count:
                return None
            dev = cuda.device_info(0)
            return f"{dev.name} (sm {dev.sm})"
    except Exception:  # noqa: BLE001 - a header line, never a failure
        return None


def header(*, gpu: bool = True) -> dict[str, Any]:
    """Everything a benchmark table needs to say where it ran."""
    out: dict[str, Any] = {"cpu": cpu_info(), "platform": platform.platform()}
    out["gpu"] = gpu_name() if gpu else None
    out["cuda"] = cuda_versions() if gpu else {"driver": None, "runtime": None}
    out["versions"] = {k: v for k, v in versions().items() if v is not None}
    return out


def header_lines(facts: dict[str, Any]) -> list[str]:
    """The machine header as plain-text lines (for tables and logs)."""
    cpu = facts["cpu"]
    feats = [k for k, v in cpu["features"].items() if v]
    cuda = facts.get("cuda") or {}
    lines = [
        f"cpu      {cpu['model']} ({cpu['arch']}), {cpu['usable_cores']} usable of {cpu['logical_cpus']} logical cores"
        + (f"; {' '.join(feats)}" if feats else ""),
        f"gpu      {facts.get('gpu') or 'none'}" + "".join(
            f"; CUDA {k} {cuda[k]}" for k in ("driver", "runtime") if cuda.get(k)),
        "runtime  " + ", ".join(f"{k} {v}" for k, v in facts["versions"].items() if k in RUNTIME_KEYS),
    ]
    return lines


#: The libraries a support request needs (``edgedx --version``, machine headers).
RUNTIME_KEYS = ("edgedx", "python", "numpy", "opencv", "onnxruntime", "openvino", "tensorrt", "tensorrt-lean", "tensorrt-rtx", "cuda-python")


def runtime_report() -> dict[str, Any]:
    """``edgedx info --versions``: every library, CUDA driver/runtime, ONNX Runtime's providers and
    which backends can run here. Imports onnxruntime and a CUDA binding; call it only for that."""
    from edgedx.backends import available_backends

    out: dict[str, Any] = {"versions": versions(), "cuda": cuda_versions(), "gpu": gpu_name()}
    try:
        import onnxruntime

        out["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    except Exception:  # noqa: BLE001 - absent or broken
        out["onnxruntime_providers"] = None
    out["backends"] = {k: (v or "available") for k, v in available_backends().items()}
    out["cpu"] = cpu_info()
    out["platform"] = platform.platform()
    return out
