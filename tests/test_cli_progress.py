"""Progress on stderr whenever stderr is a terminal (whatever stdout is), and the end-of-run summary."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgedx.cli import main
from edgedx.progress import RunProgress
from tests.factories import manifest_dict, tiny_cnn

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def model(tmp_path):
    return tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())


def test_bar_and_summary_on_a_terminal_stderr_while_stdout_goes_to_a_file(monkeypatch, capsys, model, xray_files, tmp_path):
    dest = tmp_path / "out.ndjson"
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    code = main(["classify", *map(str, xray_files), "-m", str(model), "--json", "-o", str(dest)])
    out = capsys.readouterr().out
    err = ANSI.sub("", term.getvalue())
    assert code == 0 and out == ""
    assert len(dest.read_text().splitlines()) == len(xray_files)
    n = len(xray_files)
    # the final state stays: N/N even though the run is shorter than one refresh
    assert f"{n}/{n}" in err and f"ok {n}" in err
    summary = [line for line in err.splitlines() if line.startswith("edgedx: ")]
    assert len(summary) == 1
    assert f"{n} answers for {n} inputs: {n} ok, 0 rejected, 0 failed in " in summary[0]
    assert "images/s" in summary[0] and summary[0].endswith(f"records to {dest}")


def test_no_bar_without_a_terminal_but_a_summary(capsys, model, xray_files, tmp_path):
    missing = tmp_path / "gone.png"
    code = main(["classify", str(xray_files[0]), str(missing), "-m", str(model), "--json"])
    out, err = capsys.readouterr()
    assert code == 1 and len(out.splitlines()) == 2
    assert "2/2" not in err and "\x1b[" not in err
    assert "2 answers for 2 inputs: 1 ok, 0 rejected, 1 failed" in err and "records to stdout" in err


def test_quiet_turns_off_bar_and_summary(monkeypatch, capsys, model, xray_files):
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    code = main(["classify", str(xray_files[0]), "-m", str(model), "--json", "-q"])
    assert code == 0 and term.getvalue() == "" and json.loads(capsys.readouterr().out)["status"] == "ok"


def test_interrupted_summary_says_so():
    stream = FakeTerminal()
    progress = RunProgress(5, stream=stream)
    with pytest.raises(KeyboardInterrupt), progress:
        progress.advance("ok")
        progress.advance("rejected")
        raise KeyboardInterrupt
    assert progress.interrupted and progress.counts == {"ok": 1, "rejected": 1, "error": 0}
    assert progress.summary().startswith("interrupted after 2 answers for 5 inputs: 1 ok, 1 rejected, 0 failed")
    assert "2/5" in ANSI.sub("", stream.getvalue())


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_real_pseudo_terminal_shows_the_bar_with_stdout_redirected(model, xray_files, tmp_path):
    """A real pty on stderr, a file on stdout: the bar and the summary reach the terminal."""
    master, slave = os.openpty()
    dest = tmp_path / "stdout.ndjson"
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120", "TERM": "xterm-256color"}
    with open(dest, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "edgedx", "classify", *map(str, xray_files), "-m", str(model), "--json"],
                              stdout=out, stderr=slave, env=env, timeout=120)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    err = ANSI.sub("", b"".join(chunks).decode(errors="replace"))
    n = len(xray_files)
    assert proc.returncode == 0 and len(dest.read_text().splitlines()) == n
    assert f"{n}/{n}" in err and f"{n} answers for {n} inputs: {n} ok" in err and "records to stdout" in err
