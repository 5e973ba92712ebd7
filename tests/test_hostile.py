"""Every hostile input (tests/hostile/make.py) through the decoder, the Classifier and the CLI.

Each input gets exactly one record, with the status its case expects and, for errors, a one-line
message that says what was wrong; nothing crashes, loops, blocks or prints a traceback, and no NaN
or infinity reaches the model.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgedx.api import Classifier, expand_paths
from edgedx.decode import decode_file
from edgedx.errors import InputError
from tests.conftest import ROOT
from tests.factories import manifest_dict, tiny_cnn
from tests.hostile.make import Corpus, ModelCase, build, build_models


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cnn(tmp_path_factory.mktemp("model") / "tiny.onnx", manifest=manifest_dict())


def _check_records(records: list[dict], corpus: Corpus) -> None:
    by_path: dict[str, list[dict]] = {}
    for r in records:
        by_path.setdefault(r["path"], []).append(r)
    expected = {str(c.path): c for c in corpus.cases}
    assert sorted(by_path) == sorted(expected), "records for other paths, or cases without a record"
    for path, found in by_path.items():
        case = expected[path]
        assert len(found) == 1, f"{case.name}: {len(found)} records"
        r = found[0]
        assert r["status"] == case.expect, (
            f"{case.name}: {r['status']} ({r['error'] or r['reason']}), expected {case.expect}"
        )
        if case.expect == "error":
            assert r["error"] and "\n" not in r["error"] and "Traceback" not in r["error"], case.name
            assert re.search(case.message, r["error"]), f"{case.name}: {r['error']!r} !~ {case.message!r}"
            assert r["label"] is None and r["score"] is None
        elif case.expect == "rejected":
            assert re.search(case.message, f"{r['reason_code']}: {r['reason']}"), f"{case.name}: {r['reason_code']} {r['reason']!r}"
        else:
            assert r["label"] in ("NORMAL", "PNEUMONIA") and math.isfinite(r["score"]), case.name
            assert all(math.isfinite(v) for v in r["scores"].values()), case.name


def test_corpus_is_small_and_complete(corpus: Corpus) -> None:
    sizes = [c.path.lstat() for c in corpus.cases if c.path.is_file() and not c.path.is_symlink()]
    assert sum(min(st.st_size, st.st_blocks * 512) for st in sizes) < 400_000  # the sparse file takes no disk
    assert {c.expect for c in corpus.cases} == {"ok", "rejected", "error"}
    assert len(corpus.cases) >= 45


def test_expand_paths_lists_each_case_once_without_looping(corpus: Corpus) -> None:
    paths = [str(p) for p in expand_paths([corpus.root])]
    assert sorted(paths) == sorted(str(c.path) for c in corpus.cases)
    assert not any("/up/" in p for p in paths)  # deeper/up -> .. is a directory loop, not followed
    assert not any(p.endswith("IM_PIPE") for p in paths)  # an extension-less FIFO is not opened to sniff


def test_decoder_gives_an_image_or_a_one_line_input_error(corpus: Corpus) -> None:
    for case in corpus.cases:
        try:
            frames = decode_file(case.path)
        except InputError as exc:
            assert case.expect == "error", f"{case.name}: {exc}"
            assert "\n" not in str(exc) and re.search(case.message, str(exc)), f"{case.name}: {exc}"
        else:
            assert case.expect != "error", case.name
            assert len(frames) == 1, case.name


def test_classifier_gives_one_record_per_input(corpus: Corpus, model: Path) -> None:
    with Classifier(model, workers=2, batch_size=4) as clf:
        records = [r.to_dict() for r in clf.classify_many(expand_paths([corpus.root]))]
    _check_records(records, corpus)


def test_cli_gives_one_record_per_input_and_no_traceback(corpus: Corpus, model: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgedx", "classify", str(corpus.root), "--json", "-m", str(model)],
        cwd=ROOT, capture_output=True, text=True, errors="replace", timeout=120, check=False,
    )  # fmt: skip
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    _check_records(records, corpus)
    n = len(corpus.cases)
    errors = sum(c.expect == "error" for c in corpus.cases)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"{n} answers for {n} inputs" in proc.stderr and f"{errors} failed" in proc.stderr


def test_cli_stderr_holds_only_edgedx_lines(corpus: Corpus, model: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgedx", "classify", str(corpus.root / "huge_tile.tif"), "--json", "-m", str(model)],
        cwd=ROOT, capture_output=True, text=True, errors="replace", timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("edgedx:")] == []


def test_unreadable_file(corpus: Corpus) -> None:
    if "unreadable.png" in corpus.skipped:
        pytest.skip(corpus.skipped["unreadable.png"])
    with pytest.raises(InputError, match="Permission denied"):
        decode_file(corpus.root / "unreadable.png")


def test_csv_output_survives_a_file_name_that_is_not_utf8(tmp_path: Path, corpus: Corpus, model: Path) -> None:
    name = os.path.join(os.fsencode(tmp_path), b"scan_\xff.png")
    Path(os.fsdecode(name)).write_bytes((corpus.root / "ok_gray.png").read_bytes())
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    proc = subprocess.run(
        [sys.executable, "-m", "edgedx", "classify", str(tmp_path), "-f", "csv", "-m", str(model)],
        cwd=ROOT, capture_output=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr
    assert b"scan_" in proc.stdout


@pytest.fixture(scope="module")
def model_cases(tmp_path_factory: pytest.TempPathFactory) -> list[ModelCase]:
    return build_models(tmp_path_factory.mktemp("hostile-models"))


def test_hostile_and_broken_models_exit_cleanly(model_cases: list[ModelCase], corpus: Corpus) -> None:
    """Each model: the documented exit code and one line (4), or an error record per input (1)."""
    scans = [str(corpus.root / "ok_gray.png"), str(corpus.root / "sixteen_bit.png")]
    for case in model_cases:
        proc = subprocess.run(
            [sys.executable, "-m", "edgedx", "classify", *scans, "--json", "--no-gate", "-m", str(case.path)],
            cwd=ROOT, capture_output=True, text=True, errors="replace", timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == case.exit_code, f"{case.path.name}: {proc.returncode} {proc.stderr}"
        assert "Traceback" not in proc.stderr, case.path.name
        if case.exit_code == 4:
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and re.search(case.message, lines[0]), f"{case.path.name}: {proc.stderr!r}"
        else:
            records = [json.loads(line) for line in proc.stdout.splitlines()]
            assert len(records) == 2 and all(re.search(case.message, r["error"]) for r in records), case.path.name
