"""The ``edgedx`` command line: parse options, call the library, render. No logic of its own.

Results go to stdout; logs, warnings and progress to stderr. A mistake the user can fix prints one
line and exits with the code documented in :mod:`edgedx.errors`.
"""

from __future__ import annotations

import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from edgedx import interrupt
from edgedx.console import VERBOSITY, Backend, export_package, log_to_stderr, model_name, number, usage_error_types
from edgedx.errors import EXIT_INPUT_FAILED, EXIT_OK, EdgedxError, UsageError
from edgedx.examples import add_examples
from edgedx.examples import epilog as examples_epilog
from edgedx.outputs import OutputClosed, say, silence_stdout
from edgedx.progress import RunProgress
from edgedx.text import printable

app = typer.Typer(
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("edgedx")


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    parquet = "parquet"


ModelOpt = typer.Option(None, "--model", "-m", callback=model_name, help="ONNX model, TensorRT engine, or a bundled model's name (see `edgedx models`; default: the bundled screening model).")
BackendOpt = typer.Option(Backend.auto, "--backend", "-b", help="auto picks TensorRT for .engine/.plan/.trt files, ONNX Runtime otherwise; openvino runs ONNX files on OpenVINO.")


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    """Comma-separated numbers or fractions; None passes through."""
    if text is None:
        return None
    return tuple(number(x, what) for x in text.split(","))


PrecisionOpt = typer.Option(None, "--precision", help="OpenVINO inference precision: f32 (default) or bf16; refused where the CPU cannot run it.")


def _session_options(threads: int | None, cuda_graph: bool, trust_engine: bool, precision: str | None = None):
    from edgedx.backends import SessionOptions

    return SessionOptions(threads=threads, cuda_graph=cuda_graph, trust_engine=trust_engine, precision=precision)


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def _print_version(value: bool) -> None:
    if value:
        from edgedx import machine

        found = machine.versions()
        say(f"edgedx {found['edgedx']}")
        say(", ".join(f"{k} {found[k]}" for k in machine.RUNTIME_KEYS if k != "edgedx" and found.get(k)))
        raise typer.Exit(EXIT_OK)


@app.callback()
def _global_options(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the versions of edgedx and its runtime libraries, and exit."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output on stderr: -v info, -vv debug."),
    log_level: Optional[LogLevel] = typer.Option(None, "--log-level", help="Log level on stderr (overrides -v and -q)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Settings for classify and bench (default: ./edgedx.toml or $EDGEDX_CONFIG); see `edgedx info --config`."),
) -> None:
    """Edge inference for medical-image screening: classify scans, inspect and benchmark models.

    Examples:

        edgedx classify scans/ --json > results.ndjson
        edgedx -v bench --compare chest_xray_cnn_fp32 chest_xray_cnn_int8 --images labelled/
        edgedx --version
    """
    VERBOSITY["level"] = getattr(logging, log_level.value.upper()) if log_level else None
    VERBOSITY["verbose"] = verbose
    ctx.obj = {"config": config}
    from edgedx import config as config_mod

    if ctx.invoked_subcommand in config_mod.COMMANDS:
        ctx.default_map = config_mod.load(config).default_map()


@app.command()
def classify(
    paths: Optional[List[Path]] = typer.Argument(None, help="Image or DICOM files, or folders (walked recursively, sorted, streamed)."),
    model: Optional[Path] = ModelOpt,
    backend: Backend = BackendOpt,
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per inference call."),
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Operating threshold for binary models (default: the manifest's)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, max=1000, help="Also report the K best labels."),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="Output format."),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json: NDJSON, one object per input."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write results to FILE instead of stdout (line by line, flushed)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or warnings on stderr."),
    window: Optional[str] = typer.Option(None, help="DICOM window override as CENTER,WIDTH."),
    all_frames: bool = typer.Option(False, "--all-frames", help="Every frame of a multi-frame DICOM as its own record."),
    max_pixels: int = typer.Option(100_000_000, "--max-pixels", min=1, help="Refuse images with more pixels than this (decompression bombs)."),
    max_file_size: str = typer.Option("256M", "--max-file-size", help="Refuse input files larger than this, before reading them (bytes; K, M, G suffixes)."),
    labels: Optional[str] = typer.Option(None, help="Comma-separated labels, for a model without a manifest."),
    mean: Optional[str] = typer.Option(None, help="Per-channel mean (after scale), for a model without a manifest."),
    std: Optional[str] = typer.Option(None, help="Per-channel std, for a model without a manifest."),
    scale: Optional[str] = typer.Option(None, help="Pixel scale before mean/std (default 1/255; a number or fraction), for a model without a manifest."),
    resize: Optional[str] = typer.Option(None, help="stretch, letterbox or center_crop, for a model without a manifest."),
    activation: Optional[str] = typer.Option(None, help="softmax, sigmoid or none, for a model without a manifest."),
    workers: Optional[int] = typer.Option(None, min=0, help="Decode/preprocess threads (default: the usable cores; 0: none)."),
    no_gate: bool = typer.Option(False, "--no-gate", help="Do not abstain on inputs the model does not accept."),
    audit: Optional[Path] = typer.Option(None, help="Append one JSON line per answer to FILE (the audit trail)."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU inference threads (default: the usable cores)."),
    no_cuda_graph: bool = typer.Option(False, "--no-cuda-graph", help="TensorRT: do not capture CUDA graphs."),
    trust_engine: bool = typer.Option(False, "--trust-engine", help="TensorRT: allow engines that carry host code."),
    precision: Optional[str] = PrecisionOpt,
    triton: Optional[str] = typer.Option(None, "--triton", help="Classify on a Triton server: http://HOST:PORT or grpc://HOST:PORT with an optional /MODEL (see edgedx export triton)."),
    files_from: Optional[str] = typer.Option(None, "--files-from", help="Also classify the paths listed in FILE, one per line ('-': stdin)."),
    null: bool = typer.Option(False, "-0", "--null", help="--files-from entries are NUL-separated (find -print0)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Skip inputs that have a final record in this NDJSON file; append the others to it."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Only shard K of N (K/N, 0-based): a stable hash of each path."),
    dicom_uids: bool = typer.Option(False, "--dicom-uids", help="Add DICOM Study/Series/SOP Instance UIDs to records."),
    ray: bool = typer.Option(False, "--ray", help="Run on Ray (the ray extra): a local cluster, or --ray-address."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (auto, ray://HOST:10001); implies --ray."),
    ray_workers: int = typer.Option(1, "--ray-workers", min=1, help="Ray actors, each with its own model."),
    ray_cpus: Optional[float] = typer.Option(None, "--ray-cpus", help="CPUs per Ray actor (default 1; less beside a read stage)."),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus", min=0.0, help="GPUs per Ray actor (fractions allowed)."),
    heatmap: Optional[Path] = typer.Option(None, "--heatmap", help="Write a class-activation heatmap PNG per answer into DIR (the record's `heatmap`)."),
) -> None:
    """Classify scans. Exit code 0 when every input got an answer (ok or rejected), 1 when any failed."""
    from edgedx import api, decode, inputs, limits, outputs, report

    log_to_stderr(quiet)
    if as_json:
        fmt = Format.json
    center_width = _floats(window, "--window")
    if center_width is not None and len(center_width) != 2:
        raise UsageError("--window must be CENTER,WIDTH")
    overrides = api.ManifestOverrides(
        labels=labels.split(",") if labels else None,
        mean=_floats(mean, "--mean"),
        std=_floats(std, "--std"),
        scale=None if scale is None else number(scale, "--scale"),
        resize=resize,
        activation=activation,
    )
    ray = ray or ray_address is not None
    if resume is not None:
        if output is not None and output != resume:
            raise UsageError("--resume appends to its own file; leave out --output or give the same file")
        if fmt not in (Format.json, Format.table):
            raise UsageError("--resume writes NDJSON (--json)")
        fmt, output = Format.json, resume
    if fmt == Format.parquet and output is None:
        raise UsageError("--format parquet needs --output FILE")
    if ray and (shard or audit or triton):
        raise UsageError("--shard, --audit and --triton are for plain runs; leave them out with --ray")
    if not paths and files_from is None:
        raise UsageError("Missing argument 'PATHS...': give files or folders, or --files-from FILE")
    part = inputs.Shard.parse(shard) if shard else None
    # Never write over an input: the paths given, and any existing scan (walked or listed files).
    outputs.check_targets(outputs.Inputs(paths or []), output, audit)
    settings = dict(
        backend=backend.value,
        threshold=threshold,
        batch_size=batch_size,
        workers=workers,
        use_gate=not no_gate,
        decode_options=decode.DecodeOptions(window=center_width, all_frames=all_frames, max_pixels=max_pixels,
                                            max_file_size=limits.parse_size(max_file_size)),
        session_options=_session_options(threads, not no_cuda_graph, trust_engine, precision),
        overrides=overrides,
        dicom_uids=dicom_uids,
        heatmap=heatmap,
    )
    if triton is not None:
        from edgedx.serving import client as triton_client

        triton_client.refuse_local_options({
            "--model": model is not None, "--backend": backend is not Backend.auto, "--window": window is not None,
            "--all-frames": all_frames, "--max-pixels": max_pixels != 100_000_000, "--labels": labels is not None,
            "--mean": mean is not None, "--std": std is not None, "--scale": scale is not None, "--resize": resize is not None,
            "--activation": activation is not None, "--no-gate": no_gate, "--audit": audit is not None,
            "--threads": threads is not None, "--no-cuda-graph": no_cuda_graph, "--trust-engine": trust_engine,
            "--precision": precision is not None, "--dicom-uids": dicom_uids, "--heatmap": heatmap is not None,
        })
        clf = triton_client.TritonClassifier(triton, batch_size=batch_size, concurrency=workers or 4, threshold=threshold)
    else:
        clf = api.Classifier(model, audit=audit, **settings)
    skip: set[str] = set()
    if resume is not None:
        from edgedx import resume as resume_mod

        try:
            skip = resume_mod.prepare(resume, str(getattr(clf, "model_path", "")) or None).done
        except BaseException:
            clf.close()
            raise
    progress = RunProgress(None, quiet=quiet, output=output)  # a streamed walk: the total is known at its end
    files = inputs.Counted(inputs.select(inputs.gather(paths or [], files_from, null), part, skip), on_end=progress.set_total)
    results = clf.classify_many(files)
    if ray:
        from edgedx import ray as ray_mod

        options = ray_mod.RayOptions(ray_address, ray_workers, ray_cpus, ray_gpus, batch_size)
        results = ray_mod.classify(files, {**settings, **ray_mod.actor_settings(options, settings["session_options"], workers), "model": str(clf.model_path)}, options)
    if fmt == Format.parquet:
        stream = None
    elif resume is not None:
        stream = outputs.open_sink(resume, append=True, what="results")  # whole records; exit 5 on a failed write
    else:
        stream = outputs.open_results(output)  # whole records; a failed write is one line, exit 5
    try:
        if fmt == Format.parquet:
            from edgedx.parquet import ParquetWriter

            writer: report.Writer = ParquetWriter(output, clf.manifest.labels, top_k)
        else:
            writer = report.make_writer(fmt.value, stream, clf.manifest.labels, top_k)
        with clf, progress, interrupt.sigterm_as_interrupt():
            try:
                for result in results:
                    writer.write(result)
                    progress.advance(result.status)
            except KeyboardInterrupt:
                progress.interrupted = True
        writer.close()
    finally:
        if stream is not None:
            stream.close()
    progress.set_total(files.count)
    if files.count == 0 and resume is None:
        raise UsageError("no image or DICOM files found in the given paths")
    progress.print_summary()
    if progress.interrupted:
        raise typer.Exit(130)
    raise typer.Exit(EXIT_INPUT_FAILED if progress.counts["error"] else EXIT_OK)


@app.command()
def info(
    model: Optional[Path] = typer.Argument(None, callback=model_name, help="ONNX model, TensorRT engine or bundled model name (default: the bundled model)."),
    backend: Backend = BackendOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    versions: bool = typer.Option(False, "--versions", help="Instead: every runtime library, CUDA driver/runtime, ONNX Runtime providers, backends here."),
    show_config: bool = typer.Option(False, "--config", help="Instead: the settings classify and bench get from edgedx.toml and EDGEDX_* variables."),
) -> None:
    """Show a model's manifest, inputs and outputs, file hash, and which backends can run it here."""
    from edgedx import api
    from edgedx.backends import available_backends

    log_to_stderr(False)
    if versions or show_config:
        from edgedx import info_views

        root = click_root()
        text, data = info_views.versions() if versions else info_views.settings(root.obj and root.obj.get("config"), root.command)
        say(json.dumps(data, indent=2) if as_json else text)
        return
    with api.Classifier(model, backend.value) as clf:
        data = clf.info()
    data["backends_here"] = {k: (v or "available") for k, v in available_backends().items()}
    if as_json:
        say(json.dumps(data, indent=2))
        return
    m = data["manifest"]
    p, i = m["preprocess"], m["input"]
    lines = [
        f"model      {data['model']}",
        f"sha256     {data['sha256']}",
        f"backend    {data['backend']}",
        f"labels     {', '.join(m['labels'])}",
        f"input      {i['name'] or data['inputs'][0]['name']} {i['layout']} {i['channels']}x{i['height']}x{i['width']} ({'gray' if i['channels'] == 1 else 'RGB'})",
        f"preprocess resize {p['resize']} ({p.get('interpolation', 'area')}{', antialiased' if p.get('antialias') else ''}), "
        f"scale {p['scale']:.6g}, mean {p['mean']}, std {p['std']}",
        f"output     {m['output']['activation']} over {data['outputs'][0]['shape']}",
        f"precision  {m['precision']}",
    ]
    if m["positive_label"]:
        lines.append(f"decision   {m['positive_label']} when its probability >= {m['threshold']:.4f}")
    if m.get("calibration"):
        cal = m["calibration"]
        fit = f"a={cal['a']:.4g}, b={cal['b']:.4g}" if cal["method"] == "platt" else f"T={cal['temperature']:.4g}"
        lines.append(f"calibrated {cal['method']} ({fit}), fitted on {cal.get('fitted_on', '?')}")
    for key, value in (m.get("provenance") or {}).items():
        lines.append(f"provenance {key}: {json.dumps(value) if not isinstance(value, str) else value}")
    lines.append("backends   " + ", ".join(f"{k}: {v}" for k, v in data["backends_here"].items()))
    say("\n".join(lines))


@app.command()
def bench(
    ctx: typer.Context,
    artifacts: Optional[List[str]] = typer.Argument(None, help="With --compare: model files or bundled names, each optionally @BACKEND (model.onnx@openvino)."),
    compare: bool = typer.Option(False, "--compare", help="Compare the ARTIFACTS side by side in one run on the same inputs (one table)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="With --compare: at most N images of --images (evenly spread)."),
    markdown: bool = typer.Option(False, "--markdown", help="With --compare: print the table as markdown."),
    model: Optional[Path] = ModelOpt,
    engine: Optional[Path] = typer.Option(None, "--engine", "-e", help="A TensorRT engine (same as --model with an engine file)."),
    backend: Backend = BackendOpt,
    batch_size: int = typer.Option(1, "--batch-size", min=1),
    iterations: Optional[int] = typer.Option(None, min=1, max=10_000_000, help="Timed runs (default 200 unless --duration is given)."),
    warmup: int = typer.Option(10, min=0, max=100_000, help="Untimed runs first."),
    duration: Optional[float] = typer.Option(None, min=0.1, max=86_400, help="Time for S seconds instead of a run count."),
    images: Optional[Path] = typer.Option(None, help="Time end to end on the real files in DIR (decode to result)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU inference threads."),
    no_cuda_graph: bool = typer.Option(False, "--no-cuda-graph"),
    trust_engine: bool = typer.Option(False, "--trust-engine"),
    precision: Optional[str] = PrecisionOpt,
) -> None:
    """Measure latency percentiles and throughput, model-only or end to end (--images); or compare
    several artifacts of one model side by side (--compare), with accuracy when DIR holds class folders.
    """
    from edgedx import api
    from edgedx import bench as benchmod

    log_to_stderr(as_json)
    if compare or artifacts:
        _bench_compare(ctx, artifacts or [], compare, images, limit, batch_size, iterations, warmup, as_json, markdown,
                       _session_options(threads, not no_cuda_graph, trust_engine))
        return
    if model and engine:
        raise UsageError("give --model or --engine, not both")
    from edgedx import limits

    limits.check_number("--duration", duration, limits.DURATION)  # NaN passes click's range check
    if iterations is None and duration is None:
        iterations = 200
    # Model-only timing runs no decode threads: inference gets the cores to itself, as in a bare session.
    with api.Classifier(engine or model, backend.value, batch_size=batch_size, workers=None if images else 0,
                        session_options=_session_options(threads, not no_cuda_graph, trust_engine, precision)) as clf:
        if images is not None:
            files = api.expand_paths([images])
            result = benchmod.bench_files(clf, files)
        else:
            result = benchmod.bench_model(clf, batch_size=batch_size, iterations=iterations, warmup=warmup, duration_s=duration)
    for w in result.warnings:
        log.warning("%s", w)
    if as_json:
        from edgedx.device_info import jetson_facts

        result.platform = jetson_facts()
        say(json.dumps(result.to_dict()))
        return
    lat = result.latency_ms
    say(f"model       {result.model}")
    say(f"backend     {result.backend} {result.backend_detail}")
    say(f"precision   {result.precision}   batch {result.batch_size}   {result.mode}   {result.iterations} timed runs")
    say("latency ms  " + "  ".join(f"{k} {v:.3f}" for k, v in lat.items()))
    say(f"throughput  {result.throughput_ips:.1f} images/s")
    if result.stages_ms:
        say("stages ms   " + "  ".join(f"{k} {v:.3f}" for k, v in result.stages_ms.items()))


def _bench_compare(ctx: typer.Context, artifacts: List[str], compare: bool, images: Optional[Path], limit: Optional[int],
                   batch_size: int, iterations: Optional[int], warmup: int, as_json: bool, markdown: bool, options: object) -> None:
    """``bench --compare``: checks the flags, then edgedx.compare measures and renders."""
    import click

    from edgedx import compare as comparemod

    if not compare:
        raise UsageError("model files as arguments are compared with --compare (or give one with --model)")
    given = [f"--{p}" for p in ("model", "engine", "duration") if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
    if given:
        raise UsageError(f"--compare takes the artifacts as arguments; {', '.join(given)} does not apply")
    report = comparemod.compare(artifacts, images, batch_size=batch_size, iterations=iterations or 200, warmup=warmup,
                                limit=limit, session_options=options)
    if as_json:
        say(json.dumps(report, default=str))
    elif markdown:
        say(comparemod.render_markdown(report))
    else:
        say(comparemod.render_text(report))


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the bundled models: name (for --model NAME), precision, input, labels, decision threshold
    and the validation metrics recorded in each manifest. The default model is marked with *.
    """
    from edgedx import bundled, tables

    rows = bundled.catalog()
    if as_json:
        say(json.dumps(rows, indent=2))
        return
    header = ["name", "precision", "input", "labels", "threshold", *(f"val {k}" for k in bundled.VALIDATION_KEYS)]
    body = [[("* " if r["default"] else "  ") + r["name"], r["precision"], r["input"], ", ".join(r["labels"] or []),
             r["threshold"], *(r["validation"].get(k) for k in bundled.VALIDATION_KEYS)] for r in rows]
    header[0] = "  name"
    say(tables.text_table(header, body, right=[False] * 4 + [True] * 6))


def click_root():
    """The root click context of the running command (global options live in its ``obj``)."""
    import click

    return click.get_current_context().find_root()


_mounted = False


def mount_export() -> None:
    """Register ``edgedx export ...`` and ``edgedx eval`` (export/cli.py; heavy imports inside commands), once.

    The export stage is imported from its install location, never from a user's ``export.py``.
    """
    global _mounted
    if _mounted or export_package() is None:  # a runtime-only install has no export stage
        return
    from export import cli as export_cli
    from export.engine_cli import engine_command
    from export.triton_cli import triton_command

    export_cli.app.command("engine")(engine_command)
    export_cli.app.command("triton")(triton_command)
    add_examples(export_cli.app, "export ")
    app.add_typer(export_cli.app, name="export", help="Workstation side: ONNX export, quantization, engines, verification.")
    app.command("eval", epilog=examples_epilog("eval"))(export_cli.eval_command)
    _mounted = True


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app and map errors to one line and an exit code."""
    import os

    # OpenCV prints its own multi-line reports for every broken file; edgedx reports those files itself.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    # File names need not be UTF-8: write them escaped rather than crash on the first odd one.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    mount_export()
    add_examples(app)
    handlers = interrupt.install_running()
    try:
        # Without standalone mode, typer returns a command's Exit code instead of raising it.
        code = app(args=argv, prog_name="edgedx", standalone_mode=False)
        if code == 130:  # typer returns Ctrl-C as a silent 130 (and a run stopped by one, after its summary)
            print("edgedx: interrupted", file=sys.stderr)
        return code if isinstance(code, int) else EXIT_OK
    except typer.Exit as exc:
        if interrupt.caused_by_interrupt(exc):  # typer's own Exit(130) for Ctrl-C says nothing
            print("edgedx: interrupted", file=sys.stderr)
        return exc.exit_code
    except usage_error_types() as exc:  # typer shows the usage line and the problem
        exc.show(file=sys.stderr)
        return exc.exit_code
    except typer.Abort:
        print("edgedx: interrupted", file=sys.stderr)
        return 130
    except EdgedxError as exc:
        print(f"edgedx: error: {printable(exc, 2000)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgedx: interrupted", file=sys.stderr)
        return 130
    except (BrokenPipeError, OutputClosed):  # `edgedx classify ... | head`: the reader has all it wanted
        silence_stdout()
        return EXIT_OK
    except Exception as exc:
        if not interrupt.caused_by_interrupt(exc):  # e.g. ImportError from a C extension's interrupted init
            raise
        print("edgedx: interrupted", file=sys.stderr)
        return 130
    finally:
        interrupt.restore(handlers)



if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
