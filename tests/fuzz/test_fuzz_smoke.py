"""A few hundred fuzz inputs per target inside pytest, and the campaign's findings as regressions.

The campaign itself: ``python -m tests.fuzz.run --target all --runs 100000`` (docs/fuzzing.md).
"""

from __future__ import annotations

import json
import random
import traceback
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgedx import manifest
from edgedx.errors import ModelError
from edgedx.onnxfile import read_metadata
from tests.factories import manifest_dict
from tests.fuzz import fuzz_decode, fuzz_dicom, fuzz_manifest, fuzz_onnx
from tests.fuzz.common import Finding, mutate

TARGETS = {"decode": fuzz_decode, "dicom": fuzz_dicom, "manifest": fuzz_manifest, "onnx": fuzz_onnx}
#: Findings the smoke runs tolerate: none (every finding so far is fixed and has a regression test).
KNOWN: dict[str, set[str]] = {}


def signature(exc: Finding) -> str:
    """``Type@file.py`` of the escaped exception (innermost edgedx frame), or the finding's own words."""
    cause = exc.__cause__
    if cause is None:
        return "Finding@" + " ".join(str(exc).split()[:4])
    frames = [f for f in traceback.extract_tb(cause.__traceback__) if "/edgedx/" in f.filename]
    return f"{type(cause).__name__}@{Path(frames[-1].filename).name if frames else '?'}"


def _unknown_findings(name: str, inputs: list[bytes]) -> list[str]:
    out = []
    for data in inputs:
        try:
            TARGETS[name].one_input(data)
        except Finding as exc:
            if signature(exc) not in KNOWN.get(name, ()):
                out.append(f"{signature(exc)}: {exc} (input {data[:48]!r}...)")
    return out


@pytest.mark.parametrize("name, count", [("decode", 300), ("dicom", 150), ("manifest", 300), ("onnx", 300)])
def test_mutated_seeds_only_raise_edgedx_errors(name: str, count: int) -> None:
    rng = random.Random(f"smoke-{name}")
    seeds = [s for s in TARGETS[name].seeds() if s]
    inputs = seeds + [mutate(rng.choice(seeds), rng, seeds, 1 << 16) for _ in range(count)]
    assert _unknown_findings(name, inputs) == []


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=64), name=st.sampled_from(["dicom", "manifest"]))
def test_structured_targets_on_arbitrary_bytes(data: bytes, name: str) -> None:
    assert _unknown_findings(name, [data]) == []


def test_the_property_catches_what_it_should() -> None:
    """The harness itself: a foreign exception and a multi-line message are findings."""
    from edgedx.errors import InputError
    from tests.fuzz.common import expect_edgedx_error

    with pytest.raises(Finding, match="KeyError escaped"):
        expect_edgedx_error(lambda: {}["x"])
    with pytest.raises(Finding, match="not one non-empty line"):
        expect_edgedx_error(lambda: (_ for _ in ()).throw(InputError("two\nlines")))
    assert expect_edgedx_error(lambda: (_ for _ in ()).throw(InputError("one line"))) is None


# ---------------------------------------------------------------- findings in the lead's files


def _manifest_with(**changes: object) -> str:
    doc = manifest_dict()
    for path, value in changes.items():
        section, _, key = path.partition("__")
        (doc[section] if key else doc).__setitem__(key or section, value)
    return json.dumps(doc)


def test_deeply_nested_manifest_is_a_model_error() -> None:
    with pytest.raises(ModelError):
        manifest.from_json("[" * 100_000)


def test_list_activation_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="activation"):
        manifest.from_json(_manifest_with(output__activation=[]))


@pytest.mark.parametrize("pad", ["x", {}, 10**10, float("nan")])
def test_pad_value_must_be_a_finite_number(pad: object) -> None:
    with pytest.raises(ModelError, match="pad_value"):
        manifest.from_json(_manifest_with(preprocess__pad_value=pad))


@pytest.mark.parametrize("field, value", [("std", [1e-320]), ("mean", [1e300]), ("scale", 1e300)])
def test_coefficients_that_overflow_float32_are_refused(field: str, value: object) -> None:
    try:
        m = manifest.from_json(_manifest_with(**{f"preprocess__{field}": value}))
    except ModelError:
        return
    gain, bias = m.preprocess._coeffs
    assert np.isfinite(gain).all() and np.isfinite(bias).all(), "non-finite coefficients reach the model input"


def _onnx_with_entry(entry: bytes, tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(bytes([1 << 3, 8, 7 << 3 | 2, 0, 14 << 3 | 2, len(entry)]) + entry)
    return path


def test_metadata_entry_that_is_not_a_message(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(bytes([1 << 3, 8, 7 << 3 | 2, 0, 14 << 3 | 0, 5]))
    with pytest.raises(ModelError):
        read_metadata(path)


def test_metadata_key_that_is_a_number_allocates_nothing(tmp_path: Path) -> None:
    huge = bytes([0x80] * 8 + [0x40])  # varint 2**62: bytes(2**62) raises OverflowError; 2**31 would allocate 2 GB
    with pytest.raises(ModelError):
        read_metadata(_onnx_with_entry(bytes([1 << 3 | 0]) + huge + bytes([2 << 3 | 2, 0]), tmp_path))


@pytest.mark.parametrize("name, count", [("jpeg", 200), ("cli", 25)])
def test_new_targets_smoke(name: str, count: int) -> None:
    """The issue-12 targets: strict JPEG (vs OpenCV) and the command line with the model loader."""
    import importlib

    module = importlib.import_module(f"tests.fuzz.fuzz_{name}")
    rng = random.Random(f"smoke-{name}")
    seeds = [s for s in module.seeds() if s]
    findings = []
    for data in seeds + [mutate(rng.choice(seeds), rng, seeds, 1 << 16) for _ in range(count)]:
        try:
            module.one_input(data)
        except Finding as exc:
            findings.append(f"{signature(exc)}: {exc}")
    assert findings == []


def test_jpeg_seeds_include_corrupted_scans_that_decode_as_errors() -> None:
    from edgedx.decode import decode_bytes
    from edgedx.errors import InputError
    from tests.fuzz.fuzz_jpeg import corrupted_scans, valid_jpegs

    good = valid_jpegs()[0]
    decode_bytes(good)
    for bad in corrupted_scans(good, 0):
        with pytest.raises(InputError, match="corrupt or truncated JPEG data"):
            decode_bytes(bad)
