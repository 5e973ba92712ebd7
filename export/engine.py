"""ONNX -> TensorRT engine plan + sidecar ``<engine>.json``, with NVIDIA TensorRT or TensorRT-RTX.

Precision comes from the ONNX, never from a builder switch that could quietly build something else:
an FP16 ONNX (FP16 weights, e.g. from ModelOpt AutoCast) for ``fp16``, a symmetric int8 Q/DQ ONNX
with float biases (``edgedx export quantize --target tensorrt``) for ``int8``, an FP32 ONNX for
``fp32``. :func:`check_precision` (:mod:`export.onnx_precision`) refuses a mismatch;
:func:`select_flags` (:mod:`export.engine_flags`) is the per-version table of network and builder
flags; :func:`choose_builder` (:mod:`export.engine_builders`) picks TensorRT (builds on and for
this machine's GPU) or TensorRT-RTX (builds with no GPU for a list of compute capabilities).

Every TensorRT name this module touches is in :data:`BUILDER_NAMES` (common to both versions and
TensorRT-RTX), :data:`RTX_BUILDER_NAMES` or picked from :func:`select_flags`'s table; tests check
them against NVIDIA's documented API and the real ``tensorrt_rtx``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgedx.errors import BackendError, BackendUnavailable, ModelError, UsageError
from export.contract import require_manifest
from export.engine_builders import RTX_DEFAULT_TARGETS, Builder, choose_builder, parse_compute_capabilities, set_targets  # noqa: F401  (re-exported)
from export.engine_flags import PRECISIONS, SUPPORTED_MAJORS, BuildFlags, select_flags  # noqa: F401  (re-exported)
from export.engine_report import SIDECAR_FORMAT, CacheState, EngineReport, engine_section  # noqa: F401  (re-exported)
from export.onnx_precision import OnnxPrecision, check_precision, inspect_onnx, load_onnx  # noqa: F401  (re-exported)

log = logging.getLogger("edgedx")

#: The optimization profile when ``--batch`` is not given and the ONNX's batch axis is dynamic.
DEFAULT_BATCH = (1, 8, 16)

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
#: TensorRT-RTX names build_engine uses on top of :data:`BUILDER_NAMES` (checked against the real module).
RTX_BUILDER_NAMES: tuple[str, ...] = (
    "IBuilderConfig.num_compute_capabilities",
    "IBuilderConfig.set_compute_capability",
    "ComputeCapability",
)


# -- pure decisions ------------------------------------------------------------------------------


def parse_batch(text: str) -> tuple[int, int, int]:
    """``"1,8,32"`` -> (1, 8, 32); ``"8"`` -> (1, 8, 8): every batch up to 8 runs, so a folder's tail
    batch gets its answers (give ``"8,8,8"`` for a fixed batch, as DLA needs).

    Raises:
        UsageError: not one or three positive integers with min <= opt <= max.
    """
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"--batch must be MIN,OPT,MAX or N (integers), got {text!r}") from None
    if len(values) == 1:
        values = (1, values[0], values[0])
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise UsageError(f"--batch must be MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {text!r}")
    return values  # type: ignore[return-value]


def profile_shapes(
    input_dims: Sequence[int | str | None], batch: tuple[int, int, int] | None, spatial: Sequence[int] | None = None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(min, opt, max) input shapes for the optimization profile; None for a fully static input.

    Args:
        input_dims: the ONNX input's dims, None or a name where dynamic.
        batch: (min, opt, max) batch sizes; None for the ONNX's fixed batch, or
            :data:`DEFAULT_BATCH` where the batch axis is dynamic.
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
        batch = batch or (first, first, first)
        if batch != (first, first, first):
            raise UsageError(f"the ONNX fixes batch size {first}; --batch {','.join(map(str, batch))} needs an ONNX exported with a dynamic batch axis")
        if all(isinstance(d, int) and d > 0 for d in input_dims):
            return None
    return tuple((b, *rest) for b in batch or DEFAULT_BATCH)  # type: ignore[return-value]


# -- the build ---

def build_engine(
    onnx_path: str | Path,
    output: str | Path | None = None,
    precision: str = "fp32",
    batch: tuple[int, int, int] | None = None,
    workspace_mb: int | None = None,
    timing_cache: str | Path | None = None,
    dla_core: int | None = None,
    gpu_fallback: bool = False,
    version_compatible: bool = False,
    hardware_compatible: bool = False,
    exclude_lean_runtime: bool = False,
    cuda_binding: str = "auto",
    builder: str = "auto",
    compute_capabilities: Sequence[str] | None = None,
) -> EngineReport:
    """Build a TensorRT or TensorRT-RTX engine from ``onnx_path`` and write it with its sidecar.

    Args:
        output: the plan file; ``<onnx stem>.engine`` beside the ONNX when omitted.
        precision: what the ONNX is and the engine must be: fp32, fp16 or int8 (never changed).
        batch: (min, opt, max) batch sizes of the optimization profile; None: the ONNX's fixed
            batch, or :data:`DEFAULT_BATCH` (1, 8, 16) where its batch axis is dynamic.
        workspace_mb: TensorRT's workspace pool limit; TensorRT's default when None.
        timing_cache: a file to load tactic timings from (when it exists) and save them to.
        dla_core: build for this DLA core (Jetson); ``gpu_fallback`` lets unsupported layers run on the GPU.
        version_compatible: runs on later TensorRT versions; carries host code (the runtime must trust it).
        hardware_compatible: runs on any Ampere or newer GPU (AMPERE_PLUS); refused when the
            builder does not keep the level.
        exclude_lean_runtime: with ``version_compatible``, leave the lean runtime out of the plan.
        builder: ``tensorrt``, ``tensorrt-rtx`` or ``auto`` (TensorRT where it imports, else TensorRT-RTX).
        compute_capabilities: TensorRT-RTX only: the GPUs to build for (``("8.6", "12.0")``);
            None for TensorRT-RTX's default (8.6, 8.9, 12.0).

    Raises:
        UsageError: inconsistent options, an option the builder cannot honour, or a precision the
            ONNX does not have.
        ModelError: the ONNX is unreadable, has no manifest, or TensorRT cannot parse it.
        BackendUnavailable: the builder, a CUDA binding or (TensorRT) a CUDA device or DLA is missing.
        BackendError: TensorRT failed to build, or ignored an option it was given.
    """
    from edgedx import manifest as manifest_mod
    from edgedx.backends.trt_guard import sha256_file
    from edgedx.backends.trt_runtime import make_logger

    onnx_path = Path(onnx_path)
    engine_path = Path(output) if output is not None else onnx_path.with_suffix(".engine")
    if engine_path.resolve() == onnx_path.resolve():
        raise UsageError("--output must differ from the ONNX file")
    if workspace_mb is not None and workspace_mb <= 0:
        raise UsageError(f"--workspace must be a positive number of MB, got {workspace_mb}")
    manifest = require_manifest(onnx_path)
    model = load_onnx(onnx_path)
    info = inspect_onnx(model)
    check_precision(precision, info, onnx_path.name)
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in model.graph.input[0].type.tensor_type.shape.dim]
    spatial = _spatial(manifest, len(dims))
    shapes = profile_shapes(dims, None if batch is None else tuple(batch), spatial)  # type: ignore[arg-type]
    if dla_core is not None and shapes is not None and len({s[0] for s in shapes}) != 1:
        raise UsageError("DLA needs a fixed batch: give --batch N,N,N (min = opt = max)")
    chosen = _import_builder(builder)
    if compute_capabilities and chosen.needs_gpu:
        raise UsageError("--compute-capability applies to --builder tensorrt-rtx: TensorRT builds for this machine's GPU")
    if timing_cache is not None and not chosen.needs_gpu:
        raise UsageError("TensorRT-RTX cannot honour --timing-cache: it keeps no timing cache (its timing-cache calls are no-ops since 1.2)")
    trt, version = chosen.module, chosen.version
    flags = select_flags(
        chosen.major, precision, dla_core=dla_core, gpu_fallback=gpu_fallback, version_compatible=version_compatible,
        exclude_lean_runtime=exclude_lean_runtime, hardware_compatible=hardware_compatible, builder=chosen.name,
    )
    device = _build_device(cuda_binding) if chosen.needs_gpu else None
    if device is not None:
        targets, targets_from = [device.sm], "build host GPU"
    elif compute_capabilities:
        targets, targets_from = list(compute_capabilities), "--compute-capability"
    else:
        targets, targets_from = list(RTX_DEFAULT_TARGETS), "TensorRT-RTX default"

    started = time.perf_counter()
    logger = make_logger(trt)
    trt_builder = _call(chosen, "Builder", lambda: trt.Builder(logger))
    network = trt_builder.create_network(_flag_bits(trt, flags.network_flags))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(f"{chosen.label} {version} cannot parse {onnx_path.name}: {errors[0] if errors else 'no detail'}")
    if network.num_inputs != 1:
        raise ModelError(f"{onnx_path.name} has {network.num_inputs} inputs; edgedx serves single-input image models")
    input_name = network.get_input(0).name

    config = trt_builder.create_builder_config()
    for name in flags.builder_flags:
        config.set_flag(_resolve(trt, name))
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if flags.hardware_compatibility_level:
        level = _resolve(trt, flags.hardware_compatibility_level)
        config.hardware_compatibility_level = level
        if config.hardware_compatibility_level != level:
            raise BackendError(f"{chosen.label} {version} did not keep --hardware-compatible (the level reads back as "
                               f"{config.hardware_compatibility_level}): drop --hardware-compatible and build on each GPU model")
    if compute_capabilities:
        set_targets(trt, config, compute_capabilities)
    if dla_core is not None:
        cores = trt_builder.num_DLA_cores
        if not 0 <= dla_core < cores:
            raise BackendUnavailable(f"DLA core {dla_core} does not exist here ({cores} DLA cores)")
        config.default_device_type = _resolve(trt, flags.device_type)
        config.DLA_core = dla_core
    profile_info = None
    if shapes is not None:
        profile = trt_builder.create_optimization_profile()
        profile.set_shape(input_name, *shapes)
        config.add_optimization_profile(profile)
        profile_info = {"input": input_name, "min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])}

    cache_path = Path(timing_cache) if timing_cache is not None else None
    blob = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache_state = _set_timing_cache(config, blob) if cache_path is not None else None
    if cache_state is CacheState.REPLACED:
        log.warning("timing cache %s is unreadable by %s %s here (another device or version?); TensorRT started an empty one",
                    cache_path, chosen.label, version)

    serialized = trt_builder.build_serialized_network(network, config)
    if serialized is None:
        detail = logger.errors[-1] if logger.errors else "no detail from TensorRT"
        raise BackendError(f"{chosen.label} {version} could not build {onnx_path.name}: {detail}")
    plan = bytes(memoryview(serialized))
    saved = False
    if cache_path is not None:
        _write_atomic(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
        saved = True
    seconds = time.perf_counter() - started

    _write_atomic(engine_path, plan)  # the plan exactly as TensorRT made it: trtexec --loadEngine reads it
    digest = hashlib.sha256(plan).hexdigest()
    section = engine_section(
        builder=chosen.name,
        tensorrt_version=version,
        gpu_name=device.name if device else None,
        compute_capability=device.sm if device else None,
        compute_capabilities=targets,
        targets_from=targets_from,
        precision=precision,
        profile=profile_info,
        build={
            "workspace_mb": workspace_mb,
            "timing_cache": str(cache_path) if cache_path else None,
            "timing_cache_state": cache_state.value if cache_state else None,
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
        engine=engine_path, sidecar=sidecar, precision=precision, tensorrt_version=version, gpu_name=section["gpu_name"],
        compute_capability=section["compute_capability"], profile=profile_info, flags=flags, size_bytes=len(plan), seconds=seconds,
        sha256=digest, builder=chosen.name, compute_capabilities=tuple(targets), timing_cache=cache_path,
        timing_cache_state=cache_state, timing_cache_saved=saved, onnx_fp16_fraction=info.fp16_fraction,
    )


def _import_builder(requested: str) -> Builder:
    """The builder module (a seam for tests; see :func:`choose_builder`)."""
    return choose_builder(requested)


def _build_device(cuda_binding: str) -> Any:
    """This machine's first CUDA device, checked before any TensorRT object exists (TensorRT builds for it)."""
    from edgedx.cuda import open_driver

    with open_driver(cuda_binding) as cuda:
        count, why = cuda.probe()
        if count == 0:
            raise BackendUnavailable(
                f"no CUDA device ({why}): TensorRT builds on the machine (or same GPU model) that will run it; "
                "TensorRT-RTX builds without a GPU (--builder tensorrt-rtx, pip install 'edgedx[rtx]')"
            )
        return cuda.device_info(0)


def _call(builder: Builder, what: str, make: Any) -> Any:
    """``make()``, with TensorRT's refusal to create ``what`` (no GPU, broken install) as one clean line."""
    try:
        obj = make()
    except (RuntimeError, TypeError) as exc:
        raise BackendUnavailable(f"{builder.label} {builder.version} could not create its {what}: {exc}") from None
    if obj is None:
        raise BackendUnavailable(f"{builder.label} {builder.version} could not create its {what}")
    return obj

def _set_timing_cache(config: Any, blob: bytes) -> CacheState:
    """Install a timing cache made from ``blob`` and say what TensorRT really did with it.

    TensorRT answers an unreadable or foreign cache with a warning and an *empty* cache, not an
    error: a cache is "loaded" only when it serializes differently from a fresh empty one.
    """
    fresh = config.create_timing_cache(b"")
    if blob:
        try:
            cache = config.create_timing_cache(blob)
            if cache is not None and bytes(memoryview(cache.serialize())) != bytes(memoryview(fresh.serialize())):
                if config.set_timing_cache(cache, False):
                    return CacheState.LOADED
        except Exception as exc:  # noqa: BLE001 (TensorRT's own type for a corrupt cache)
            log.debug("timing cache refused: %s", exc)
    config.set_timing_cache(fresh, False)
    return CacheState.REPLACED if blob else CacheState.NEW


def _resolve(trt: Any, dotted: str) -> Any:
    """``"BuilderFlag.FP16"`` -> ``trt.BuilderFlag.FP16``.

    Raises:
        BackendUnavailable: this TensorRT lacks the name (a version edgedx's table does not know).
    """
    obj = trt
    for part in dotted.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BackendUnavailable(f"TensorRT {getattr(trt, '__version__', '?')} has no {dotted}, which this build needs") from None
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
