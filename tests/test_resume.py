"""--resume: a run killed at any point and resumed ends with exactly one final record per input."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgedx import resume
from edgedx.errors import BackendError, UsageError
from tests.conftest import ROOT, XRAY, need

pytestmark = pytest.mark.timeout(600)


def rec(path, status="ok", kind=None, frame=None, model="m.onnx"):
    return {"path": path, "status": status, "error_kind": kind, "frame": frame, "model": model, "label": "x"}


def write(path: Path, records, tail: bytes = b"") -> None:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail)


def test_cut_last_line_is_removed_and_the_rest_kept(tmp_path):
    out = tmp_path / "out.ndjson"
    write(out, [rec("a"), rec("b", "rejected"), rec("c", "error", "input")], tail=b'{"path": "d", "sta')
    got = resume.prepare(out, "m.onnx")
    assert got.done == {"a", "b", "c"} and got.removed == 1
    assert [json.loads(x)["path"] for x in out.read_text().splitlines()] == ["a", "b", "c"]
    assert out.read_bytes().endswith(b"\n")


def test_run_errors_are_removed_and_asked_again(tmp_path):
    out = tmp_path / "out.ndjson"
    write(out, [rec("a"), rec("b", "error", "run"), rec("c"), rec("d", "error", "input")])
    got = resume.prepare(out)
    assert got.done == {"a", "c", "d"} and got.removed == 1
    assert [json.loads(x)["path"] for x in out.read_text().splitlines()] == ["a", "c", "d"]
    assert not list(tmp_path.glob(".*resume-tmp"))


def test_an_unfinished_multi_frame_input_is_asked_again(tmp_path):
    out = tmp_path / "out.ndjson"
    write(out, [rec("a"), rec("cine.dcm", frame=0), rec("cine.dcm", frame=1)])
    got = resume.prepare(out)
    assert got.done == {"a"} and out.read_text().count("\n") == 1
    # one frame failed with a run error: the whole input is asked again, not only that frame
    write(out, [rec("x.dcm", frame=0), rec("x.dcm", "error", "run", frame=1), rec("b")])
    assert resume.prepare(out).done == {"b"}


def test_records_without_error_kind_count_as_input_errors(tmp_path):
    out = tmp_path / "out.ndjson"
    write(out, [{"path": "a", "status": "error", "model": "m.onnx"}])
    assert resume.prepare(out).done == {"a"}


def test_missing_file_is_created_and_foreign_files_refused(tmp_path):
    out = tmp_path / "new.ndjson"
    assert resume.prepare(out).done == set() and out.exists()
    write(out, [rec("a", model="other.onnx")])
    with pytest.raises(UsageError, match="another model"):
        resume.prepare(out, "m.onnx")
    out.write_text("path,status\na,ok\n")
    with pytest.raises(UsageError, match="not an edgedx record"):
        resume.prepare(out)


def test_backend_failures_are_run_errors(xray_files):
    from edgedx.api import Classifier

    with Classifier(workers=0) as clf:
        def boom(batch):
            raise BackendError("device lost")

        clf.session.submit = boom  # the pipeline hands every batch to submit()
        results = list(clf.classify_many([*xray_files[:2], "/nonexistent.png"]))
    assert [(r.status, r.error_kind) for r in results] == [("error", "run"), ("error", "run"), ("error", "input")]


def _scan_list(tmp_path: Path, count: int) -> Path:
    files = sorted(need(XRAY).glob("*/*.jpeg"))[:count]
    if len(files) < count:
        pytest.skip(f"only {len(files)} scans in {XRAY}")
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    listing = tmp_path / "list.txt"
    paths = [str(p) for p in files]
    paths[len(paths) // 3 : len(paths) // 3] = [str(bad), str(tmp_path / "missing.jpeg")]
    listing.write_text("\n".join(paths) + "\n")
    return listing


def _classify(listing: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "edgedx", "classify", "--files-from", str(listing), "-q", "--batch-size", "8", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, out: Path, size: int) -> None:
    """SIGKILL ``proc`` as soon as ``out`` holds ``size`` bytes (or when it ends by itself)."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if out.exists() and out.stat().st_size >= size:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=60)


def kill_twice_and_resume(tmp_path: Path, count: int, seed: int) -> tuple[list[dict], list[dict]]:
    """An uninterrupted run's records, and those of a run killed twice at random points and resumed."""
    listing = _scan_list(tmp_path, count)
    whole = tmp_path / "whole.ndjson"
    proc = _classify(listing, "--json", "--output", str(whole))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err  # the corrupt and the missing file failed; every scan answered
    expected = whole.read_bytes()
    rng = random.Random(seed)
    out = tmp_path / "resumed.ndjson"
    for cut_torn_line in (False, True):
        have = out.stat().st_size if out.exists() else 0
        # A fast run can write everything before the kill lands; the next cut then falls in the last line.
        _kill_when(_classify(listing, "--resume", str(out)), out, rng.randrange(min(have + 1, len(expected) - 2), len(expected) - 1))
        if cut_torn_line:  # what a kill in the middle of a write leaves: a part of a line
            data = out.read_bytes()
            last = data.rfind(b"\n", 0, len(data) - 1) + 1
            out.write_bytes(data[: last + rng.randrange(1, max(2, len(data) - last - 1))])
        data = out.read_bytes()
        begun, complete = data.count(b'{"path"'), data.count(b"\n")
        where = "at a line end" if data.endswith(b"\n") else "cut mid-line"
        print(f"killed with {begun} records begun, {complete} complete, {where} (seed {seed})")
    proc = _classify(listing, "--resume", str(out))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode in (0, 1), err
    return ([json.loads(x) for x in expected.decode().splitlines()],
            [json.loads(x) for x in out.read_text().splitlines()])


@pytest.mark.slow
def test_killed_twice_and_resumed_equals_one_run(tmp_path):
    count = int(os.environ.get("EDGEDX_RESUME_SCANS", "400"))
    seed = int(os.environ.get("EDGEDX_RESUME_SEED", str(time.time_ns() % 10_000)))
    expected, got = kill_twice_and_resume(tmp_path, count, seed)
    assert len(expected) == count + 2
    paths = [r["path"] for r in got]
    assert len(paths) == len(set(paths)), f"seed {seed}: duplicated records"
    assert got == expected, f"seed {seed}: resumed records differ from one run"


@pytest.mark.parametrize("code, kind", [(errno.EIO, "run"), (errno.ESTALE, "run"), (errno.ENOENT, "input"), (errno.EACCES, "input")])
def test_read_failures_outside_the_file_are_run_errors(monkeypatch, xray_files, code, kind):
    """A flaky network mount (EIO, ESTALE) is asked again on --resume; a missing or forbidden file is final."""
    from edgedx import decode
    from edgedx.api import Classifier
    from edgedx.errors import InputError

    def failing_read(path, max_size=None):
        try:
            raise OSError(code, os.strerror(code))
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from None

    monkeypatch.setattr(decode, "read_file", failing_read)
    with Classifier(workers=0) as clf:
        r = clf.classify(xray_files[0])
    assert (r.status, r.error_kind) == ("error", kind)
