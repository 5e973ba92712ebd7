"""Run a fuzzing campaign: ``python -m tests.fuzz.run --target decode --runs 100000``.

Engines: ``atheris`` (coverage-guided libFuzzer; used by ``auto`` when ``pip install atheris``
worked) or ``mutate`` (a seeded random mutator of the seeds, portable, reproducible with --seed).
A finding (an exception other than EdgedxError, a malformed result, an input slower than
--deadline) is recorded once per (kind, place) under WORKDIR/TARGET/findings as the input (.bin)
and its traceback (.txt), and the campaign goes on (--stop ends it at the first). Progress and
totals go to WORKDIR/TARGET/stats.json every 1000 inputs and at the end.

Limits per input: --deadline seconds (then a finding), a hard limit of 6x that (the process is
ended, the input kept as WORKDIR/TARGET/current.bin or the atheris timeout artifact), and
--max-rss-mb of resident memory, and no single input may raise the peak by more than
RSS_JUMP_MB (decoders are fuzzed with a 4 Mpx pixel limit).
"""

from __future__ import annotations

import argparse
import atexit
import faulthandler
import hashlib
import importlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")  # OpenCV's own lines for every broken input: noise here

TARGETS = {
    "decode": "tests.fuzz.fuzz_decode",
    "dicom": "tests.fuzz.fuzz_dicom",
    "manifest": "tests.fuzz.fuzz_manifest",
    "onnx": "tests.fuzz.fuzz_onnx",
    "jpeg": "tests.fuzz.fuzz_jpeg",
    "cli": "tests.fuzz.fuzz_cli",
}
#: Libraries whose Python code atheris instruments for coverage.
_INSTRUMENT = ["edgedx", "pydicom", "tests.fuzz"]
#: A single input that raises the peak resident memory by more than this is a finding: within the
#: 4 Mpx fuzzing pixel limit no decode needs it (a bomb the header checks missed would).
RSS_JUMP_MB = 256
_PRELOAD = [
    "pydicom",
    "pydicom.filereader",
    "pydicom.encaps",
    "pydicom.pixels",
    "pydicom.pixels.processing",
    "edgedx.dicom",
]


class Hang(BaseException):
    """Raised by the deadline alarm; a BaseException so that no ``except Exception`` swallows it."""


class Campaign:
    """Counts inputs, records findings once per (kind, place), writes stats."""

    def __init__(self, target: str, workdir: Path, deadline: float, max_rss_mb: int, stop: bool) -> None:
        self.target, self.dir, self.deadline, self.max_rss_mb, self.stop = target, workdir, deadline, max_rss_mb, stop
        self.findings_dir = workdir / "findings"
        self.findings_dir.mkdir(parents=True, exist_ok=True)
        self.runs, self.start, self.slowest = 0, time.monotonic(), 0.0
        self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        self.findings: dict[str, dict] = {}

    def run_one(self, one_input: Callable[[bytes], None], data: bytes) -> None:
        from tests.fuzz.common import Finding

        self.runs += 1
        t0 = time.perf_counter()
        try:
            one_input(data)
        except (Finding, Hang) as exc:
            self.record(data, exc)
            if self.stop:
                raise
        elapsed = time.perf_counter() - t0
        self.slowest = max(self.slowest, elapsed)
        if elapsed > self.deadline:
            self.record(data, None, f"slow: {elapsed:.2f} s > deadline {self.deadline} s")
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        if rss_mb - self.peak_mb > RSS_JUMP_MB and self.runs > 1:  # one input raised the peak by that much
            self.record(data, None, f"memory: one input raised peak RSS from {self.peak_mb} to {rss_mb} MB")
        self.peak_mb = max(self.peak_mb, rss_mb)
        if rss_mb > self.max_rss_mb:
            self.record(data, None, f"memory: peak RSS {rss_mb} MB > {self.max_rss_mb} MB")
            self.write_stats()
            os._exit(3)  # the peak stays high: later measurements would mean nothing
        if self.runs % 1000 == 0:
            self.write_stats()

    def record(self, data: bytes, exc: BaseException | None, what: str | None = None) -> None:
        cause = exc.__cause__ if exc is not None and exc.__cause__ is not None else exc
        if exc is None:
            kind, place, text = what.split(":")[0], "", what
        else:
            frames = traceback.extract_tb(cause.__traceback__) if cause is not None else []
            ours = [f for f in frames if "/edgedx/" in f.filename] or frames
            place = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else ""
            kind = type(cause).__name__
            text = f"{exc}\n\n" + "".join(traceback.format_exception(cause))
        key = f"{kind}@{place}"
        entry = self.findings.setdefault(key, {"count": 0, "first_input": None, "message": text.splitlines()[0][:300]})
        entry["count"] += 1
        if entry["first_input"] is None:
            name = hashlib.sha1(key.encode()).hexdigest()[:12]
            (self.findings_dir / f"{name}.bin").write_bytes(data)
            (self.findings_dir / f"{name}.txt").write_text(f"{key}\n{text}\n")
            entry["first_input"] = str(self.findings_dir / f"{name}.bin")
            print(
                f"[{self.target}] finding #{len(self.findings)} after {self.runs} inputs: {key}: {entry['message']}",
                file=sys.stderr,
                flush=True,
            )

    def write_stats(self) -> None:
        elapsed = time.monotonic() - self.start
        stats = {
            "target": self.target,
            "inputs": self.runs,
            "seconds": round(elapsed, 1),
            "inputs_per_second": round(self.runs / elapsed, 1) if elapsed else None,
            "slowest_input_s": round(self.slowest, 3),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "findings": self.findings,
        }
        (self.dir / "stats.json").write_text(json.dumps(stats, indent=2))


def run_mutate(module, campaign: Campaign, runs: int, seed: int, max_len: int) -> None:
    from tests.fuzz.common import mutate

    seeds = [s for s in module.seeds() if s] or [b"\0"]
    rng = random.Random(seed)
    recent: list[bytes] = []
    current = campaign.dir / "current.bin"

    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"over the deadline of {campaign.deadline} s")

    signal.signal(signal.SIGALRM, on_alarm)
    for data in seeds:
        campaign.run_one(module.one_input, data)
    while campaign.runs < runs:
        base = rng.choice(recent) if recent and rng.random() < 0.3 else rng.choice(seeds)
        data = mutate(base, rng, seeds, max_len)
        current.write_bytes(data)
        faulthandler.dump_traceback_later(6 * campaign.deadline, exit=True)  # a hang inside C code
        signal.setitimer(signal.ITIMER_REAL, 2 * campaign.deadline)
        try:
            campaign.run_one(module.one_input, data)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()
        if len(recent) < 200:
            recent.append(data)
        else:
            recent[rng.randrange(200)] = data


def run_atheris(target: str, campaign: Campaign, runs: int, seed: int, max_len: int) -> None:
    import atheris

    with atheris.instrument_imports(include=_INSTRUMENT):
        for name in _PRELOAD:
            importlib.import_module(name)
        module = importlib.import_module(TARGETS[target])
    corpus = campaign.dir / "corpus"
    corpus.mkdir(exist_ok=True)
    for i, data in enumerate(module.seeds()):
        (corpus / f"seed-{i:03d}").write_bytes(data)
    atexit.register(campaign.write_stats)  # libFuzzer may end the process without running atexit

    def one(data: bytes) -> None:
        campaign.run_one(module.one_input, data)
        if campaign.runs >= runs:
            campaign.write_stats()

    argv = [
        sys.argv[0], f"-runs={runs}", f"-seed={seed}", f"-max_len={max_len}", f"-timeout={int(6 * campaign.deadline)}",
        f"-rss_limit_mb={campaign.max_rss_mb}", f"-artifact_prefix={campaign.findings_dir}/", "-print_final_stats=1",
        str(corpus),
    ]  # fmt: skip
    atheris.Setup(argv, one)
    atheris.Fuzz()  # exits the process when done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=[*TARGETS, "all"], required=True)
    parser.add_argument("--runs", type=int, default=10_000, help="inputs to run (per target with 'all')")
    parser.add_argument("--engine", choices=["auto", "atheris", "mutate"], default="auto")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "edgedx-fuzz")
    parser.add_argument("--deadline", type=float, default=5.0, help="seconds per input before it is a finding")
    parser.add_argument("--max-rss-mb", type=int, default=3072)
    parser.add_argument("--max-len", type=int, default=64 * 1024, help="largest input the engine makes, bytes")
    parser.add_argument("--stop", action="store_true", help="end at the first finding")
    args = parser.parse_args(argv)
    if args.target == "all":
        code = 0
        for target in TARGETS:
            cmd = [sys.executable, "-m", "tests.fuzz.run", "--target", target, *_passthrough(args)]
            code = max(code, subprocess.call(cmd))
        return code
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
        except ImportError:
            engine = "mutate"
        else:
            engine = "atheris"
    campaign = Campaign(args.target, args.workdir / args.target, args.deadline, args.max_rss_mb, args.stop)
    print(f"[{args.target}] {engine}: {args.runs} inputs, work dir {campaign.dir}", file=sys.stderr, flush=True)
    if engine == "atheris":
        run_atheris(args.target, campaign, args.runs, args.seed, args.max_len)  # libFuzzer exits the process
        return 0
    run_mutate(importlib.import_module(TARGETS[args.target]), campaign, args.runs, args.seed, args.max_len)
    campaign.write_stats()
    elapsed, found = time.monotonic() - campaign.start, len(campaign.findings)
    print(f"[{args.target}] {campaign.runs} inputs in {elapsed:.0f} s, {found} findings", file=sys.stderr)
    return 1 if campaign.findings else 0


def _passthrough(args: argparse.Namespace) -> list[str]:
    out = ["--runs", str(args.runs), "--engine", args.engine, "--seed", str(args.seed), "--workdir", str(args.workdir)]
    out += ["--deadline", str(args.deadline), "--max-rss-mb", str(args.max_rss_mb), "--max-len", str(args.max_len)]
    return out + (["--stop"] if args.stop else [])


if __name__ == "__main__":
    sys.exit(main())
