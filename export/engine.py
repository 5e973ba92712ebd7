"""ONNX -> TensorRT engine plan + sidecar ``<engine>.json``, on the machine that will run it.

Precision comes from the ONNX, never from a builder switch that could quietly build something else:
an FP16 ONNX (FP16 weights, e.g. from ModelOpt AutoCast) for ``fp16``, a symmetric int8 Q/DQ ONNX
for ``int8``, an FP32 ONNX for ``fp32``. :func:`check_precision` (:mod:`export.onnx_precision`)
refuses a mismatch; :func:`select_flags` (:mod:`export.engine_flags`) is the per-TensorRT-version
table of network and builder flags. Both are importable from here too.

Every TensorRT name this module touches is in :data:`BUILDER_NAMES` (common to both versions) or
picked from :func:`select_flags`'s table; tests check both against NVIDIA's documented API.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgedx.errors import BackendError, BackendUnavailable, ModelError, UsageError
from export.engine_flags import PRECISIONS, SUPPORTED_MAJORS, BuildFlags, select_flags  # noqa: F401  (re-exported)
from export.onnx_precision import OnnxPrecision, check_precision, inspect_onnx, load_onnx  # noqa: F401  (re-exported)

log = logging.getLogger("edgedx")

SIDECAR_FORMAT = 1

#: TensorRT names build_engine uses directly, in every supported version (``Class.member``).
BUILDER_NAMES: tuple[str, ...] = (
    "__version__",
    "ILogger",
    "Builder",
    "Builder.create_network",
    "Builder.create_builder_config",
    "Builder.create_optimization_profile",
    "Builder.build_serialized_network",
    "Builder.num_DLA_cores",
    "OnnxParser",
    "OnnxParser.parse_from_file",
    "OnnxParser.num_errors",
    "OnnxParser.get_error",
    "INetworkDefinition.num_inputs",
    "INetworkDefinition.get_input",
    "ITensor.name",
    "IBuilderConfig.set_flag",
    "IBuilderConfig.set_memory_pool_limit",
    "IBuilderConfig.add_optimization_profile",
    "IBuilderConfig.create_timing_cache",
    "IBuilderConfig.set_timing_cache",
    "IBuilderConfig.get_timing_cache",
    "IBuilderConfig.default_device_type",
    "IBuilderConfig.DLA_core",
    "IBuilderConfig.hardware_compatibility_level",
    "IOptimizationProfile.set_shape",
    "ITimingCache.serialize",
    "MemoryPoolType.WORKSPACE",
)


# -- pure decisions ------------------------------------------------------------------------------


def parse_batch(text: str) -> tuple[int, int, int]:
    """``"1,8,32"`` -> (1, 8, 32); ``"8"`` -> (8, 8, 8).

    Raises:
        UsageError: not one or three positive integers with min <= opt <= max.
    """
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"--batch must be MIN,OPT,MAX or N (integers), got {text!r}") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise UsageError(f"--batch must be MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {text!r}")
    return values  # type: ignore[return-value]


def profile_shapes(
    input_dims: Sequence[int | str | None], batch: tuple[int, int, int], spatial: Sequence[int] | None = None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(min, opt, max) input shapes for the optimization profile; None for a fully static input.

    Args:
        input_dims: the ONNX input's dims, None or a name where dynamic.
        batch: (min, opt, max) batch sizes.
        spatial: the non-batch dims to use where the ONNX leaves them dynamic (from the manifest).

    Raises:
        UsageError: the ONNX fixes a batch size other than the one asked for.
        ModelError: a non-batch dim is dynamic and the manifest does not give it.
    """
    first, rest = input_dims[0], list(input_dims[1:])
    for i, d in enumerate(rest):
        if not isinstance(d, int) or d <= 0:
            if spatial is None or len(spatial) != len(rest):
                raise ModelError(f"ONNX input dim {i + 1} is dynamic and the manifest does not fix it")
            rest[i] = int(spatial[i])
    if isinstance(first, int) and first > 0:
        if batch != (first, first, first):
            raise UsageError(f"the ONNX fixes batch size {first}; --batch {','.join(map(str, batch))} needs an ONNX exported with a dynamic batch axis")
        if all(isinstance(d, int) and d > 0 for d in input_dims):
            return None
    return tuple((b, *rest) for b in batch)  # type: ignore[return-value]


def engine_section(
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
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
    """The sidecar's ``engine`` section: what TensorRTSession's guard checks and describe() reports."""
    try:
        source = Path(os.path.relpath(onnx_path.resolve(), engine_path.resolve().parent)).as_posix()
    except ValueError:  # another drive (Windows)
        source = str(onnx_path.resolve())
    return {
        "format": SIDECAR_FORMAT,
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
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
    """What was built, where, and how."""

    engine: Path
    sidecar: Path
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    profile: dict[str, Any] | None
    flags: BuildFlags
    size_bytes: int
    seconds: float
    sha256: str
    timing_cache: Path | None = None
    timing_cache_loaded: bool = False
    timing_cache_saved: bool = False
    onnx_fp16_fraction: float = 0.0

    def summary(self) -> str:
        batch = "static" if self.profile is None else "x".join(str(s[0]) for s in (self.profile["min"], self.profile["opt"], self.profile["max"]))
        return (
            f"built {self.engine} ({self.size_bytes / 1e6:.1f} MB, {self.precision}, batch {batch}) with TensorRT "
            f"{self.tensorrt_version} on {self.gpu_name} (sm {self.compute_capability}) in {self.seconds:.1f}s; sidecar {self.sidecar.name}"
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(engine=str(self.engine), sidecar=str(self.sidecar), timing_cache=str(self.timing_cache) if self.timing_cache else None)
        return out


# -- the build -----------------------------------------------------------------------------------


def build_engine(
    onnx_path: str | Path,
    output: str | Path | None = None,
    precision: str = "fp32",
    batch: tuple[int, int, int] = (1, 1, 1),
    workspace_mb: int | None = None,
    timing_cache: str | Path | None = None,
    dla_core: int | None = None,
    gpu_fallback: bool = False,
    version_compatible: bool = False,
    hardware_compatible: bool = False,
    exclude_lean_runtime: bool = False,
    cuda_binding: str = "auto",
) -> EngineReport:
    """Build a TensorRT engine from ``onnx_path`` and write it with its sidecar.

    Args:
        output: the plan file; ``<onnx stem>.engine`` beside the ONNX when omitted.
        precision: what the ONNX is and the engine must be: fp32, fp16 or int8 (never changed).
        batch: (min, opt, max) batch sizes of the optimization profile.
        workspace_mb: TensorRT's workspace pool limit; TensorRT's default when None.
        timing_cache: a file to load tactic timings from (when it exists) and save them to.
        dla_core: build for this DLA core (Jetson); ``gpu_fallback`` lets unsupported layers run on the GPU.
        version_compatible: runs on later TensorRT versions; carries host code (the runtime must trust it).
        hardware_compatible: runs on any Ampere or newer GPU (AMPERE_PLUS).
        exclude_lean_runtime: with ``version_compatible``, leave the lean runtime out of the plan.

    Raises:
        UsageError: inconsistent options or a precision the ONNX does not have.
        ModelError: the ONNX is unreadable, has no manifest, or TensorRT cannot parse it.
        BackendUnavailable: TensorRT, a CUDA binding or a CUDA device (or DLA) is missing.
        BackendError: TensorRT failed to build.
    """
    from edgedx import manifest as manifest_mod
    from edgedx.backends.trt_guard import sha256_file
    from edgedx.backends.trt_runtime import make_logger
    from edgedx.cuda import open_driver

    onnx_path = Path(onnx_path)
    engine_path = Path(output) if output is not None else onnx_path.with_suffix(".engine")
    if engine_path.resolve() == onnx_path.resolve():
        raise UsageError("--output must differ from the ONNX file")
    manifest = manifest_mod.load(onnx_path)
    if manifest is None:
        raise ModelError(f"{onnx_path.name} carries no edgedx manifest: export it with edgedx export onnx, which embeds one")
    model = load_onnx(onnx_path)
    info = inspect_onnx(model)
    check_precision(precision, info, onnx_path.name)
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in model.graph.input[0].type.tensor_type.shape.dim]
    spatial = _spatial(manifest, len(dims))
    shapes = profile_shapes(dims, tuple(batch), spatial)  # type: ignore[arg-type]
    if dla_core is not None and shapes is not None and len({s[0] for s in shapes}) != 1:
        raise UsageError("DLA needs a fixed batch: give --batch N (min = opt = max)")
    trt = _import_tensorrt_builder()
    version = str(trt.__version__)
    major = int(version.split(".")[0])
    flags = select_flags(
        major, precision, dla_core=dla_core, gpu_fallback=gpu_fallback, version_compatible=version_compatible,
        exclude_lean_runtime=exclude_lean_runtime, hardware_compatible=hardware_compatible,
    )

    with open_driver(cuda_binding) as cuda:  # a device must exist before any TensorRT object
        count, why = cuda.probe()
        if count == 0:
            raise BackendUnavailable(f"no CUDA device ({why}): build the engine on the machine (or same GPU model) that will run it")
        device = cuda.device_info(0)

    started = time.perf_counter()
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_flag_bits(trt, flags.network_flags))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(f"TensorRT {version} cannot parse {onnx_path.name}: {errors[0] if errors else 'no detail'}")
    if network.num_inputs != 1:
        raise ModelError(f"{onnx_path.name} has {network.num_inputs} inputs; edgedx serves single-input image models")
    input_name = network.get_input(0).name

    config = builder.create_builder_config()
    for name in flags.builder_flags:
        config.set_flag(_resolve(trt, name))
    if workspace_mb is not None:
        if workspace_mb <= 0:
            raise UsageError(f"--workspace must be a positive number of MB, got {workspace_mb}")
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if flags.hardware_compatibility_level:
        config.hardware_compatibility_level = _resolve(trt, flags.hardware_compatibility_level)
    if dla_core is not None:
        cores = builder.num_DLA_cores
        if not 0 <= dla_core < cores:
            raise BackendUnavailable(f"DLA core {dla_core} does not exist here ({cores} DLA cores)")
        config.default_device_type = _resolve(trt, flags.device_type)
        config.DLA_core = dla_core
    profile_info = None
    if shapes is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, *shapes)
        config.add_optimization_profile(profile)
        profile_info = {"input": input_name, "min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])}

    cache_path = Path(timing_cache) if timing_cache is not None else None
    blob = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    loaded = _set_timing_cache(config, blob)
    if blob and not loaded:
        log.warning("timing cache %s does not match this device or TensorRT version; starting a fresh one", cache_path)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = logger.errors[-1] if logger.errors else "no detail from TensorRT"
        raise BackendError(f"TensorRT {version} could not build {onnx_path.name}: {detail}")
    plan = bytes(memoryview(serialized))
    saved = False
    if cache_path is not None:
        _write_atomic(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
        saved = True
    seconds = time.perf_counter() - started

    _write_atomic(engine_path, plan)  # the plan exactly as TensorRT made it: trtexec --loadEngine reads it
    digest = hashlib.sha256(plan).hexdigest()
    section = engine_section(
        tensorrt_version=version,
        gpu_name=device.name,
        compute_capability=device.sm,
        precision=precision,
        profile=profile_info,
        build={
            "workspace_mb": workspace_mb,
            "timing_cache": str(cache_path) if cache_path else None,
            "dla_core": dla_core,
            "gpu_fallback": gpu_fallback,
            "network_flags": list(flags.network_flags),
            "builder_flags": list(flags.builder_flags),
            "hardware_compatibility_level": flags.hardware_compatibility_level,
            "onnx_fp16_weight_fraction": round(info.fp16_fraction, 4),
        },
        engine_sha256=digest,
        engine_path=engine_path,
        onnx_path=onnx_path,
        onnx_sha256=sha256_file(onnx_path),
        version_compatible=version_compatible,
        exclude_lean_runtime=exclude_lean_runtime,
        hardware_compatible=hardware_compatible,
    )
    sidecar = manifest_mod.sidecar_path(engine_path)
    data = manifest.with_changes(engine=section, precision=precision).to_dict()
    _write_atomic(sidecar, (json.dumps(data, indent=2) + "\n").encode())
    return EngineReport(
        engine=engine_path, sidecar=sidecar, precision=precision, tensorrt_version=version, gpu_name=device.name,
        compute_capability=device.sm, profile=profile_info, flags=flags, size_bytes=len(plan), seconds=seconds,
        sha256=digest, timing_cache=cache_path, timing_cache_loaded=bool(loaded), timing_cache_saved=saved,
        onnx_fp16_fraction=info.fp16_fraction,
    )


def _set_timing_cache(config: Any, blob: bytes) -> bool:
    """Install a timing cache made from ``blob`` (empty: a fresh one); False when ``blob`` was refused."""
    if blob:
        try:
            cache = config.create_timing_cache(blob)
            if cache is not None and config.set_timing_cache(cache, False):
                return True
        except Exception as exc:  # noqa: BLE001 (TensorRT's own type for a corrupt cache)
            log.debug("timing cache refused: %s", exc)
    config.set_timing_cache(config.create_timing_cache(b""), False)
    return False


def _import_tensorrt_builder() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(
            "building engines needs the full TensorRT (the lean runtime cannot build): pip install tensorrt, or use JetPack's"
        ) from None
    return trt


def _resolve(trt: Any, dotted: str) -> Any:
    """``"BuilderFlag.FP16"`` -> ``trt.BuilderFlag.FP16``."""
    obj = trt
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _flag_bits(trt: Any, names: Sequence[str]) -> int:
    bits = 0
    for name in names:
        bits |= 1 << int(_resolve(trt, name))
    return bits



def _spatial(manifest: Any, rank: int) -> tuple[int, ...] | None:
    spec = manifest.preprocess
    if rank != 4:
        return None
    if spec.layout.value == "NCHW":
        return (spec.channels, spec.height, spec.width)
    return (spec.height, spec.width, spec.channels)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
