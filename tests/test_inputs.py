"""Inputs at archive scale: --files-from (newline, NUL, stdin), a streamed walk, --shard."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgedx import inputs
from edgedx.api import expand_paths
from edgedx.cli import main
from edgedx.errors import UsageError
from tests.conftest import ROOT, XRAY, need

pytestmark = pytest.mark.timeout(300)


def tree(root: Path) -> Path:
    """Folders and files whose names sort differently as strings and as path components."""
    for rel in ("a/x.png", "a-b/y.png", "a.png", "b/c/z.dcm", "b/notes.txt", "b/DICOMDIR", "c.jpg", "ab/w.jpeg"):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "loop_a.png").symlink_to(root / "loop_b.png")  # a symlink loop: an input with an error record
    (root / "loop_b.png").symlink_to(root / "loop_a.png")
    return root


def collected_walk(paths):
    """The walk edgedx had before it streamed: os.walk everything, then sort each folder's files."""
    from edgedx.decode import is_candidate

    out = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
            continue
        found = [Path(r, f) for r, _, fs in os.walk(p, followlinks=False) for f in fs if is_candidate(Path(r, f))]
        out.extend(sorted(found))
    return out


def test_streamed_walk_is_the_collected_walk(tmp_path):
    root = tree(tmp_path / "t")
    args = [root / "b", root, tmp_path / "missing.png"]
    assert list(inputs.walk(args)) == collected_walk(args) == expand_paths(args)
    assert [p.name for p in inputs.walk([root])] == ["x.png", "y.png", "a.png", "w.jpeg", "z.dcm", "c.jpg", "loop_a.png", "loop_b.png"]


def test_walk_yields_before_it_ends(tmp_path):
    root = tree(tmp_path / "t")
    walk = inputs.walk([root])
    assert next(walk) == root / "a" / "x.png"
    (root / "b" / "c" / "late.png").write_bytes(b"x")  # made after the first path: the walk had not listed b/c yet
    assert root / "b" / "c" / "late.png" in list(walk)


@pytest.mark.parametrize("nul", [False, True])
def test_files_from_keeps_names_whole(tmp_path, nul):
    names = ["plain.png", "with space.png", "new\nline.png" if nul else "tab\t.png", "caf\u00e9.png", os.fsdecode(b"bad\xff.png")]
    sep = b"\0" if nul else b"\n"
    listing = tmp_path / "list"
    listing.write_bytes(sep.join(os.fsencode(n) for n in names) + sep + sep)
    assert [str(p) for p in inputs.read_list(listing, nul)] == names


def test_files_from_reads_stdin_as_it_comes(monkeypatch):
    class Trickle(io.BytesIO):  # a pipe: read1 returns what is there, never a whole chunk
        def read1(self, n=-1):
            return super().read1(3)

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(Trickle(b"a.png\nb/c.png\nlast.png")))
    assert list(inputs.read_list("-")) == [Path("a.png"), Path("b/c.png"), Path("last.png")]


def test_files_from_missing_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="files-from"):
        list(inputs.read_list(tmp_path / "nope.txt"))


@pytest.mark.parametrize("text", ["3/3", "1", "a/b", "-1/2", "0/0"])
def test_bad_shard_specs(text):
    with pytest.raises(UsageError):
        inputs.Shard.parse(text)


def test_shards_partition_and_are_stable():
    paths = [f"/archive/{i:06d}.dcm" for i in range(3000)]
    owners = [[p for p in paths if inputs.Shard(k, 3).owns(p)] for k in range(3)]
    assert sorted(sum(owners, [])) == paths
    assert all(900 < len(o) < 1100 for o in owners), [len(o) for o in owners]
    # stable across processes and machines: no per-run hash seed
    code = "from edgedx.inputs import shard_of; print([shard_of(f'/archive/{i:06d}.dcm', 3) for i in range(50)])"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert other.strip() == str([inputs.shard_of(p, 3) for p in paths[:50]])
    assert inputs.shard_of("./a//b.png", 7) == inputs.shard_of("a/b.png", 7)


def test_cli_shards_together_are_one_run(tmp_path, capsys):
    files = sorted(need(XRAY).glob("NORMAL/*.jpeg"))[:30]
    listing = tmp_path / "list"
    listing.write_text("\n".join(map(str, [*files, tmp_path / "missing.png"])) + "\n")
    assert main(["classify", "--files-from", str(listing), "--json", "-q"]) == 1
    whole = capsys.readouterr().out.splitlines()
    parts = []
    for k in range(3):
        main(["classify", "--files-from", str(listing), "--json", "-q", "--shard", f"{k}/3"])
        parts.append(capsys.readouterr().out.splitlines())
    assert all(parts) and sorted(sum(parts, [])) == sorted(whole) and len(whole) == 31


def test_paths_and_files_from_combine_and_nothing_is_a_usage_error(tmp_path, capsys, xray_files):
    listing = tmp_path / "list"
    listing.write_text(f"{xray_files[1]}\n")
    assert main(["classify", str(xray_files[0]), "--files-from", str(listing), "--json"]) == 0
    assert [json.loads(x)["path"] for x in capsys.readouterr().out.splitlines()] == [str(xray_files[0]), str(xray_files[1])]
    assert main(["classify", "--json"]) == 2
    assert "--files-from" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["classify", str(tmp_path / "empty")]) == 2


def test_first_record_comes_before_the_list_ends(tmp_path, xray_files):
    """A slow producer on stdin: the first record is out while the list is still being written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "edgedx", "classify", "--files-from", "-", "--json", "--batch-size", "1", "--workers", "0"],
                            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(f"{xray_files[0]}\n".encode())
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())  # blocks until the record is out; the list is still open
        assert first["path"] == str(xray_files[0]) and first["status"] == "ok"
        proc.stdin.write(f"{xray_files[1]}\n".encode())
        proc.stdin.close()
        rest = proc.stdout.read().decode().splitlines()
        assert [json.loads(x)["path"] for x in rest] == [str(xray_files[1])]
    finally:
        proc.kill()
        proc.wait(timeout=30)
