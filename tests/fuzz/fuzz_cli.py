"""Target ``cli``: the command line's option parsing and the model loader, end to end in-process.

The input bytes choose a command, then options and their values from lists that mix valid and
hostile values (huge counts, NaN, negative, empty, newlines and escapes, odd sizes), output and
audit targets (a fresh file, an input, /dev/full, a missing folder, a FIFO nobody reads) and the
model: a good one, one without a manifest, bad graphs (no outputs, int64 input, one column, a
batch-ignoring output, NaN outputs) and hostile folders (a FIFO, /dev/zero or an oversized file as
the sidecar), or the model's bytes mutated by the input's tail. ``edgedx.cli.main`` runs with its
standard streams captured.

Properties beyond "no exception escapes main": the exit code is a documented one (0-5); standard
error holds only ``edgedx:`` lines (or click's usage block), never a traceback; JSON output is
strict JSON (no NaN) with one of the three statuses per record; no input file is ever changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from tests.fuzz.common import Finding, Take

_ROOT = Path(tempfile.mkdtemp(prefix="edgedx-fuzz-cli-"))
_EXITS = {0, 1, 2, 3, 4, 5}
_USAGE_LINES = ("Usage:", "Try '", "Error:", "edgedx:")


def _setup() -> tuple[dict[str, Path], dict[str, Path], dict[str, bytes]]:
    from tests import bad_models
    from tests.factories import frame, manifest_dict, tiny_cnn
    from tests.fuzz.fuzz_jpeg import corrupted_scans

    inputs = _ROOT / "inputs"
    inputs.mkdir()
    jpg = cv2.imencode(".jpg", frame(40, 40, seed=1))[1].tobytes()
    (inputs / "ok.png").write_bytes(cv2.imencode(".png", frame(40, 40))[1].tobytes())
    (inputs / "ok.jpg").write_bytes(jpg)
    (inputs / "corrupt.jpg").write_bytes(corrupted_scans(jpg, 0)[0])
    (inputs / "dark.png").write_bytes(cv2.imencode(".png", np.full((40, 40), 3, np.uint8) + frame(40, 40) // 40)[1].tobytes())
    (inputs / "new\nline.png").write_bytes((inputs / "ok.png").read_bytes())
    os.link(inputs / "ok.png", _ROOT / "hardlink.json")
    models = _ROOT / "models"
    models.mkdir()
    good = tiny_cnn(models / "good.onnx", size=32, manifest=manifest_dict())
    m = {
        "good": good,
        "bare": tiny_cnn(models / "bare.onnx", size=32),
        "nan": bad_models.scaled(models / "nan.onnx", float("nan")),
        "dark_nan": bad_models.nan_for_dark_inputs(models / "dark_nan.onnx"),
        "no_outputs": bad_models.no_outputs(models / "no_outputs.onnx"),
        "int64": bad_models.int64_input(models / "int64.onnx"),
        "one_column": bad_models.single_column(models / "one_column.onnx"),
        "batch": bad_models.ignores_batch(models / "batch.onnx"),
        "jpeg": inputs / "ok.jpg",
        "missing": models / "missing.onnx",
        "mutated": models / "mutated.onnx",
    }
    for name, make in (("fifo", os.mkfifo), ("zero", lambda p: os.symlink("/dev/zero", p)),
                       ("huge", lambda p: Path(p).write_text(" " * (2 << 20)))):  # fmt: skip
        folder = models / name
        folder.mkdir()
        copy = folder / "m.onnx"
        copy.write_bytes(good.read_bytes())
        make(folder / "m.onnx.json")
        m[f"sidecar_{name}"] = copy
    os.mkfifo(_ROOT / "audit.fifo")
    (_ROOT / "out").mkdir()
    snapshot = {str(p): p.read_bytes() for p in inputs.iterdir()}
    return {p.name: p for p in inputs.iterdir()}, m, snapshot


def _cache_click_command() -> None:
    """Typer rebuilds the click command tree from the signatures on every call (130 ms of a 170 ms
    run here); build it once per process, as a one-shot CLI process does anyway."""
    import typer.main

    build, cache = typer.main.get_command, {}

    def cached(app):  # type: ignore[no-untyped-def]
        if id(app) not in cache:
            cache[id(app)] = build(app)
        return cache[id(app)]

    typer.main.get_command = cached


_cache_click_command()
_INPUTS, _MODELS, _SNAPSHOT = _setup()
_GOOD_BYTES = _MODELS["good"].read_bytes()

_COUNTS = ["0", "1", "2", "3", "8", "64", "256", "257", "1024", "1025", "100000", "-1", "nan", "", "1e3", "2\n3"]
_TARGETS = ["out", "input", "hardlink", "full", "missing_dir", "fifo", "devnull", "dir"]
OPTIONS: dict[str, list[str]] = {
    "--batch-size": _COUNTS,
    "--workers": _COUNTS,
    "--threads": _COUNTS,
    "--top-k": _COUNTS,
    "--threshold": ["0", "0.5", "1", "1.5", "-0", "nan", "inf", "1e-400", "x"],
    "--format": ["table", "json", "csv", "xml", ""],
    "--window": ["40,400", "40,0", "nan,1", "1,inf", "1,2,3", "a,b", "", "1e308,1e308"],
    "--max-pixels": ["1", "100", "1600", "100000000", "0", "-5", "1e9", "99999999999999999999"],
    "--max-file-size": ["1", "1K", "2K", "256M", "0", "-1", "1x", "9" * 30, "1T"],
    "--labels": ["a,b", "a", "a,a", "", "x\ny,z", "\x1b[31m,b"],
    "--mean": ["0.5", "0.5,0.5,0.5", "nan", "1e300", "", "a"],
    "--std": ["0.25", "0", "1e-320", "-1", "inf", ""],
    "--scale": ["0.0039", "0", "nan", "-1", "1e300"],
    "--resize": ["stretch", "letterbox", "center_crop", "zoom", ""],
    "--activation": ["softmax", "sigmoid", "none", "relu", ""],
    "--iterations": ["1", "2", "0", "-3", "10000001", "x"],
    "--warmup": ["0", "1", "-1", "100001"],
    "--duration": ["0.1", "0.05", "-1", "nan", "1e9", ""],
    "--output": _TARGETS,
    "--audit": _TARGETS,
    "--model": list(_MODELS),
    "--backend": ["auto", "onnxruntime", "tensorrt", "openvino", ""],
}
FLAGS = ["--json", "--quiet", "--all-frames", "--no-gate", "--no-cuda-graph", "--trust-engine", "--help", "--bogus"]
COMMANDS = ["classify", "classify", "classify", "info", "bench", "models", "nope"]


def _target(name: str, run_dir: Path) -> str:
    return {
        "out": str(run_dir / "out.jsonl"),
        "input": str(_INPUTS["ok.png"]),
        "hardlink": str(_ROOT / "hardlink.json"),
        "full": "/dev/full",
        "missing_dir": str(_ROOT / "no" / "such" / "x.json"),
        "fifo": str(_ROOT / "audit.fifo"),
        "devnull": os.devnull,
        "dir": str(_ROOT / "out"),
    }[name]


def argv_for(data: bytes, run_dir: Path) -> list[str]:
    take = Take(data)
    command = take.choice(COMMANDS)
    argv = [command]
    if command in ("info",):
        argv.append(str(_MODELS[take.choice(list(_MODELS))]))
    if command == "classify":
        names = sorted(_INPUTS)
        argv += [str(_INPUTS[take.choice(names)]) for _ in range(1 + take.below(4))]
        if take.flag():
            argv.append(str(_ROOT / "inputs"))
    if command == "bench" and take.flag():
        argv += ["--images", str(_ROOT / "inputs")]
    for _ in range(take.below(7)):
        if take.below(4) == 0:
            argv.append(take.choice(FLAGS))
            continue
        option = take.choice(list(OPTIONS))
        value = take.choice(OPTIONS[option])
        if option in ("--output", "--audit"):
            value = _target(value, run_dir)
        elif option == "--model":
            value = str(_MODELS[value])
        argv += [option, value]
    if command == "bench" and "--iterations" not in argv and "--duration" not in argv:
        argv += ["--iterations", "3", "--warmup", "0"]
    if "--model" in argv or "-m" in argv:
        tail = take.rest()
        if tail and argv[argv.index("--model") + 1] == str(_MODELS["mutated"]):
            _MODELS["mutated"].write_bytes(_mutated_model(tail))
    elif command in ("classify", "bench"):
        argv += ["--model", str(_MODELS["good"])]
    return argv


def _mutated_model(tail: bytes) -> bytes:
    """The good model with bytes of the input's tail written over it at positions it also picks."""
    buf = bytearray(_GOOD_BYTES)
    take = Take(tail)
    for _ in range(1 + take.below(8)):
        pos = take.below(len(buf))
        chunk = take.raw(1 + take.below(8))
        buf[pos : pos + len(chunk)] = chunk
    if take.flag():
        del buf[take.below(len(buf)) :]
    return bytes(buf)


def seeds() -> list[bytes]:
    def enc(*choices: int) -> bytes:
        return bytes(choices)

    return [
        enc(0, 0, 1, 0),  # classify one file, default model
        enc(0, 3, 0, 2, 1, 1, 0, 0),
        enc(1, 0, 3, 0),
        enc(2, 1, 1, 0, 0, 6, 3, 1, 1, 18, 0),
        enc(3, 2, 0, 0),
        enc(4, 1, 1, 1, 2, 1, 20, 9),
        enc(5),
        enc(0, 2, 0, 1, 1, 5, 1, 19, 1, 1, 20, 10, 1, 2, 3, 4, 5, 6, 7, 8),
    ]


def one_input(data: bytes) -> None:
    from edgedx import cli

    with tempfile.TemporaryDirectory(dir=_ROOT) as tmp:
        argv = argv_for(data, Path(tmp))
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(argv)
        except SystemExit as exc:
            raise Finding(f"SystemExit({exc.code}) escaped main for {argv!r}"[:500]) from exc
        except Exception as exc:
            raise Finding(f"{type(exc).__name__} escaped main for {argv!r}: {exc}"[:500]) from exc
        _check(argv, code, out.getvalue(), err.getvalue())
    for path, before in _SNAPSHOT.items():
        if Path(path).read_bytes() != before:
            Path(path).write_bytes(before)
            raise Finding(f"input {path} was changed by {argv!r}"[:500])


def _check(argv: list[str], code: object, stdout: str, stderr: str) -> None:
    if code not in _EXITS:
        raise Finding(f"exit code {code!r} for {argv!r}"[:500])
    if "Traceback" in stderr:
        raise Finding(f"traceback on stderr for {argv!r}: {stderr[-300:]}"[:600])
    for line in stderr.splitlines():
        if line.strip() and not line.startswith(_USAGE_LINES):
            raise Finding(f"stderr line not from edgedx for {argv!r}: {line[:200]!r}"[:500])
    formats = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--format"]
    if "--json" in argv or (formats and formats[-1] == "json"):
        if argv[0] != "classify" or "--help" in argv:
            return
        for line in stdout.splitlines():
            try:
                record = json.loads(line, parse_constant=_refuse)
            except ValueError as exc:
                raise Finding(f"stdout line is not strict JSON for {argv!r}: {line[:200]!r}") from exc
            if record.get("status") not in ("ok", "rejected", "error"):
                raise Finding(f"record without a status for {argv!r}: {line[:200]!r}")


def _refuse(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def fingerprint() -> str:
    """What the inputs look like now (for the smoke test)."""
    return hashlib.sha256(b"".join(Path(p).read_bytes() for p in sorted(_SNAPSHOT))).hexdigest()
