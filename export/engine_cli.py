"""``edgedx export engine``: the Typer command over :func:`export.engine.build_engine`.

Importing this module imports neither TensorRT, onnx nor torch; the command imports
``export.engine`` when it runs. Errors are edgedx exceptions; the CLI prints them as one line with
their exit code.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer


class EngineBuilder(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    tensorrt_rtx = "tensorrt-rtx"


class EnginePrecision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


def engine_command(
    model: Path = typer.Argument(..., help="MODEL.onnx: FP32, FP16 (e.g. ModelOpt AutoCast) or symmetric int8 Q/DQ, with an edgedx manifest."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Engine plan to write (default: MODEL.engine beside the ONNX); the sidecar is OUTPUT.json."),
    precision: EnginePrecision = typer.Option(..., "--precision", "-p", help="What the ONNX is and the engine will be; a mismatch is refused, never converted."),
    batch: Optional[str] = typer.Option(None, "--batch", help="MIN,OPT,MAX batch sizes of the optimization profile, or N for 1,N,N (default: 1,8,16; the ONNX's own batch when it fixes one)."),
    builder: EngineBuilder = typer.Option(EngineBuilder.auto, "--builder", help="tensorrt (builds on and for this machine's GPU) or tensorrt-rtx (no GPU needed; runs on the --compute-capability GPUs under TensorRT-RTX). auto: tensorrt where it imports, else tensorrt-rtx."),
    compute_capability: Optional[str] = typer.Option(None, "--compute-capability", help="TensorRT-RTX: GPUs to build for, e.g. 8.6,8.9,12.0 (TensorRT-RTX's default when omitted)."),
    workspace: Optional[int] = typer.Option(None, "--workspace", min=1, help="Workspace pool limit in MB (default: TensorRT's)."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Load tactic timings from FILE when it exists; save them back after the build."),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", min=0, help="Build for DLA core N (Jetson); needs fp16/int8 and a fixed batch."),
    gpu_fallback: bool = typer.Option(False, "--gpu-fallback", help="With --dla-core: run layers DLA cannot on the GPU."),
    version_compatible: bool = typer.Option(False, "--version-compatible", help="Run on later TensorRT versions; the engine carries host code, so loading it needs --trust-engine."),
    exclude_lean_runtime: bool = typer.Option(False, "--exclude-lean-runtime", help="With --version-compatible: leave the lean runtime out (smaller; runs only on this TensorRT version)."),
    hardware_compatible: bool = typer.Option(False, "--hardware-compatible", help="TensorRT: run on any Ampere or newer GPU (may be slower)."),
    as_json: bool = typer.Option(False, "--json", help="Print the build report as JSON."),
) -> None:
    """Build a TensorRT or TensorRT-RTX engine from MODEL.onnx, with its sidecar manifest."""
    from export.engine import build_engine, parse_batch, parse_compute_capabilities

    report = build_engine(
        model,
        output,
        precision=precision.value,
        batch=parse_batch(batch) if batch is not None else None,
        workspace_mb=workspace,
        timing_cache=timing_cache,
        dla_core=dla_core,
        gpu_fallback=gpu_fallback,
        version_compatible=version_compatible,
        hardware_compatible=hardware_compatible,
        exclude_lean_runtime=exclude_lean_runtime,
        builder=builder.value,
        compute_capabilities=parse_compute_capabilities(compute_capability),
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), default=str))
    else:
        typer.echo(report.summary())
