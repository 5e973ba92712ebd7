"""``edgedx export triton``: the Typer command over :mod:`export.triton`.

Importing this module imports neither tritonclient nor onnx; the command imports them when it runs.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from edgedx.errors import UsageError


class Variant(str, Enum):
    auto = "auto"
    python = "python"


def triton_command(
    model: Optional[Path] = typer.Argument(None, help="MODEL.onnx with its edgedx manifest, or an engine with its sidecar."),
    repo: Optional[Path] = typer.Option(None, "--repo", help="The Triton model repository to write into (created if missing)."),
    check: Optional[Path] = typer.Option(None, "--check", help="Re-validate the edgedx ensemble in repository DIR instead of writing one."),
    name: Optional[str] = typer.Option(None, "--name", help="The ensemble's name (default edgedx; what clients ask for); its steps are NAME_preprocess, NAME_model, NAME_postprocess. With --check: which ensemble."),
    backend: Variant = typer.Option(Variant.auto, "--backend", help="auto: Triton's onnxruntime_onnx / tensorrt_plan; python: edgedx's own session in the Python backend."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", min=1, help="max_batch_size (default 8; engines: the profile's max)."),
    instances: int = typer.Option(1, "--instances", min=1, help="Instances of each step (instance_group count)."),
    preferred_batch: Optional[List[int]] = typer.Option(None, "--preferred-batch", min=1, help="Dynamic batching preferred batch size (repeat for several)."),
    max_queue_delay_us: int = typer.Option(100, "--max-queue-delay-us", min=0, help="How long the dynamic batcher may wait to fill a batch."),
    no_gate: bool = typer.Option(False, "--no-gate", help="Serve without edgedx's input gate (no rejected records)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Write a Triton model repository (preprocess -> model -> postprocess ensemble) whose answers match `edgedx classify`."""
    from export import triton

    if check is not None:
        if model is not None or repo is not None:
            raise UsageError("--check DIR takes no MODEL or --repo")
        report = triton.check(check, name)
        verb = "checked"
    else:
        if model is None or repo is None:
            raise UsageError("give MODEL and --repo DIR (or --check DIR)")
        options = triton.TritonOptions(name=name or "edgedx", variant=backend.value, max_batch=max_batch, instances=instances,
                                       preferred_batch=tuple(preferred_batch or ()), max_queue_delay_us=max_queue_delay_us, gate=not no_gate)
        report = triton.write_repository(model, repo, options)
        verb = "wrote"
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    i, o = report.input, report.output
    typer.echo(f"{verb} ensemble {report.ensemble} in {report.repository}")
    for step, platform in report.steps.items():
        typer.echo(f"  {step:32} {platform}")
    typer.echo(f"  model {report.model_file}: {i['name']} {i['data_type']} {i['dims']} -> {o['name']} {o['data_type']} {o['dims']}, max_batch_size {report.max_batch_size}")
    typer.echo(f"  labels {', '.join(report.labels)}")
