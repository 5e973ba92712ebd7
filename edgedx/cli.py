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
from edgedx.errors import EXIT_INPUT_FAILED, EXIT_OK, EdgedxError, UsageError
from edgedx.outputs import OutputClosed
from edgedx.text import OneLineFormatter, printable

app = typer.Typer(
    help="Edge inference for medical-image screening: classify scans, inspect and benchmark models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("edgedx")


class Backend(str, Enum):
    auto = "auto"
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


ModelOpt = typer.Option(None, "--model", "-m", help="ONNX model or TensorRT engine (default: the bundled screening model).")
BackendOpt = typer.Option(Backend.auto, "--backend", "-b", help="auto picks TensorRT for .engine/.plan/.trt files, ONNX Runtime otherwise.")


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _session_options(threads: int | None, cuda_graph: bool, trust_engine: bool):
    from edgedx.backends import SessionOptions

    return SessionOptions(threads=threads, cuda_graph=cuda_graph, trust_engine=trust_engine)


@app.command()
def classify(
    paths: List[Path] = typer.Argument(..., help="Image or DICOM files, or folders (walked recursively, sorted)."),
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
    scale: Optional[float] = typer.Option(None, help="Pixel scale before mean/std (default 1/255), for a model without a manifest."),
    resize: Optional[str] = typer.Option(None, help="stretch, letterbox or center_crop, for a model without a manifest."),
    activation: Optional[str] = typer.Option(None, help="softmax, sigmoid or none, for a model without a manifest."),
    workers: Optional[int] = typer.Option(None, min=0, help="Decode/preprocess threads (default: the usable cores; 0: none)."),
    no_gate: bool = typer.Option(False, "--no-gate", help="Do not abstain on inputs the model does not accept."),
    audit: Optional[Path] = typer.Option(None, help="Append one JSON line per answer to FILE (the audit trail)."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU inference threads (default: the usable cores)."),
    no_cuda_graph: bool = typer.Option(False, "--no-cuda-graph", help="TensorRT: do not capture CUDA graphs."),
    trust_engine: bool = typer.Option(False, "--trust-engine", help="TensorRT: allow engines that carry host code."),
) -> None:
    """Classify scans. Exit code 0 when every input got an answer (ok or rejected), 1 when any failed."""
    from edgedx import api, decode, limits, outputs, report

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
        scale=scale,
        resize=resize,
        activation=activation,
    )
    files = api.expand_paths(paths)
    if not files:
        raise UsageError("no image or DICOM files found in the given paths")
    outputs.check_targets(outputs.Inputs(files), output, audit)  # never write over an input
    clf = api.Classifier(
        model,
        backend.value,
        threshold=threshold,
        batch_size=batch_size,
        workers=workers,
        use_gate=not no_gate,
        audit=audit,
        decode_options=decode.DecodeOptions(window=center_width, all_frames=all_frames, max_pixels=max_pixels,
                                            max_file_size=limits.parse_size(max_file_size)),
        session_options=_session_options(threads, not no_cuda_graph, trust_engine),
        overrides=overrides,
    )
    counts = {"ok": 0, "rejected": 0, "error": 0}
    stream = outputs.open_results(output)  # whole records; a failed write is one line, exit 5
    interrupted = False
    try:
        writer = report.make_writer(fmt.value, stream, clf.manifest.labels, top_k)
        with clf, _progress(len(files), quiet) as advance, _stop_on_sigterm():
            try:
                for result in clf.classify_many(files):
                    counts[result.status] += 1
                    writer.write(result)
                    advance()
            except KeyboardInterrupt:
                interrupted = True
        writer.close()
    finally:
        stream.close()
    done = sum(counts.values())
    if interrupted or counts["error"] or counts["rejected"]:
        summary = f"{done} answers for {len(files)} inputs: {counts['ok']} ok, {counts['rejected']} rejected, {counts['error']} failed"
        log.warning("%s%s", "interrupted after " if interrupted else "", summary)
    if interrupted:
        raise typer.Exit(130)
    raise typer.Exit(EXIT_INPUT_FAILED if counts["error"] else EXIT_OK)


@app.command()
def info(
    model: Optional[Path] = typer.Argument(None, help="ONNX model or TensorRT engine (default: the bundled model)."),
    backend: Backend = BackendOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show a model's manifest, inputs and outputs, file hash, and which backends can run it here."""
    from edgedx import api
    from edgedx.backends import available_backends

    log_to_stderr(False)
    with api.Classifier(model, backend.value) as clf:
        data = clf.info()
    data["backends_here"] = {k: (v or "available") for k, v in available_backends().items()}
    if as_json:
        print(json.dumps(data, indent=2))
        return
    m = data["manifest"]
    p, i = m["preprocess"], m["input"]
    lines = [
        f"model      {data['model']}",
        f"sha256     {data['sha256']}",
        f"backend    {data['backend']}",
        f"labels     {', '.join(m['labels'])}",
        f"input      {i['name'] or data['inputs'][0]['name']} {i['layout']} {i['channels']}x{i['height']}x{i['width']} ({'gray' if i['channels'] == 1 else 'RGB'})",
        f"preprocess resize {p['resize']}, scale {p['scale']:.6g}, mean {p['mean']}, std {p['std']}",
        f"output     {m['output']['activation']} over {data['outputs'][0]['shape']}",
        f"precision  {m['precision']}",
    ]
    if m["positive_label"]:
        lines.append(f"decision   {m['positive_label']} when its probability >= {m['threshold']:.4f}")
    for key, value in (m.get("provenance") or {}).items():
        lines.append(f"provenance {key}: {json.dumps(value) if not isinstance(value, str) else value}")
    lines.append("backends   " + ", ".join(f"{k}: {v}" for k, v in data["backends_here"].items()))
    print("\n".join(lines))


@app.command()
def bench(
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
) -> None:
    """Measure latency percentiles and throughput, model-only or end to end (--images)."""
    from edgedx import api
    from edgedx import bench as benchmod

    log_to_stderr(as_json)
    if model and engine:
        raise UsageError("give --model or --engine, not both")
    from edgedx import limits

    limits.check_number("--duration", duration, limits.DURATION)  # NaN passes click's range check
    if iterations is None and duration is None:
        iterations = 200
    # Model-only timing runs no decode threads: inference gets the cores to itself, as in a bare session.
    with api.Classifier(engine or model, backend.value, batch_size=batch_size, workers=None if images else 0,
                        session_options=_session_options(threads, not no_cuda_graph, trust_engine)) as clf:
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
        print(json.dumps(result.to_dict()))
        return
    lat = result.latency_ms
    print(f"model       {result.model}")
    print(f"backend     {result.backend} {result.backend_detail}")
    print(f"precision   {result.precision}   batch {result.batch_size}   {result.mode}   {result.iterations} timed runs")
    print("latency ms  " + "  ".join(f"{k} {v:.3f}" for k, v in lat.items()))
    print(f"throughput  {result.throughput_ips:.1f} images/s")
    if result.stages_ms:
        print("stages ms   " + "  ".join(f"{k} {v:.3f}" for k, v in result.stages_ms.items()))


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the bundled models with their precision, input and labels."""
    from edgedx import bundled, manifest

    rows = []
    for path in bundled.bundled_models():
        m = manifest.load(path)
        p = m.preprocess if m else None
        rows.append({
            "name": path.name,
            "path": str(path),
            "precision": m.precision if m else None,
            "input": f"{p.channels}x{p.height}x{p.width} {p.layout.value}" if p else None,
            "labels": list(m.labels) if m else None,
            "default": path == bundled.default_model(),
        })
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "*" if r["default"] else " "
        print(f"{mark} {r['name']:32} {r['precision'] or '?':5} {r['input'] or '?':16} {', '.join(r['labels'] or [])}")


_export_mounted = False


def _mount_export() -> None:
    """``edgedx export ...`` and ``edgedx eval`` live in export/cli.py (heavy imports inside commands).

    Once per process: ``main`` may run many times in one process (tests, embedding programs).
    """
    global _export_mounted
    if _export_mounted:
        return
    _export_mounted = True
    try:
        from export import cli as export_cli
    except ImportError:  # a runtime-only install without the export package
        return
    from export.engine_cli import engine_command

    export_cli.app.command("engine")(engine_command)
    app.add_typer(export_cli.app, name="export", help="Workstation side: ONNX export, quantization, engines, verification.")
    app.command("eval")(export_cli.eval_command)


def log_to_stderr(quiet: bool = False) -> None:
    """Warnings of the ``edgedx`` logger to the current stderr (never stdout), once per run."""
    for handler in [h for h in log.handlers if getattr(h, "_edgedx_cli", False)]:
        log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("edgedx: %(levelname)s: %(message)s"))
    handler._edgedx_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.ERROR if quiet else logging.WARNING)
    log.propagate = False


class _stop_on_sigterm:
    """Turn SIGTERM into KeyboardInterrupt while classifying, so both stop the same clean way."""

    def __enter__(self) -> None:
        import signal
        import threading

        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._raise)

    @staticmethod
    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            import signal

            signal.signal(signal.SIGTERM, self._old)


class _progress:
    """A progress bar on stderr for long runs when stderr is a terminal; a no-op otherwise."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.enabled = not quiet and total >= 20 and sys.stderr.isatty()
        self.total = total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self._p = Progress(transient=True, console=None)
        self._p.console.file = sys.stderr
        self._p.start()
        task = self._p.add_task("classifying", total=self.total)
        return lambda: self._p.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._p.stop()


def _usage_error_types() -> tuple[type[Exception], ...]:
    """The exception class typer raises for usage errors: click's, or typer's own vendored copy (>= 0.26)."""
    try:
        from typer.exceptions import TyperException

        return (TyperException,)
    except ImportError:
        import click

        return (click.ClickException,)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app and map errors to one line and an exit code."""
    import os

    # OpenCV prints its own multi-line reports for every broken file; edgedx reports those files itself.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    # File names need not be UTF-8: write them escaped rather than crash on the first odd one.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    _mount_export()
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
    except _usage_error_types() as exc:  # typer shows the usage line and the problem
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
        _silence_stdout()
        return EXIT_OK
    except Exception as exc:
        if not interrupt.caused_by_interrupt(exc):  # e.g. ImportError from a C extension's interrupted init
            raise
        print("edgedx: interrupted", file=sys.stderr)
        return 130
    finally:
        interrupt.restore(handlers)


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so that Python's flush at exit does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
