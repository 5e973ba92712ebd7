"""Shared fixtures: the real data in ../shared/data (skipped cleanly where absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
DICOM = DATA / "dicom"
XRAY = DATA / "chest_xray_kermany_224" / "train"


def need(path: Path) -> Path:
    """``path`` if it exists, else skip the test with a reason."""
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


def cuda_device():
    """The first CUDA device's facts, or skip the test with the reason (no binding, no device)."""
    from edgedx.cuda import installed_bindings, open_driver

    if not installed_bindings():
        pytest.skip("no CUDA Python binding installed (pip install cuda-python)")
    with open_driver("auto") as cuda:
        count, why = cuda.probe()
        if count == 0:
            pytest.skip(f"no CUDA device: {why}")
        return cuda.device_info(0)


@pytest.fixture
def xray_files() -> list[Path]:
    """A few real chest X-rays of each class."""
    root = need(XRAY)
    return sorted((root / "NORMAL").glob("*.jpeg"))[:3] + sorted((root / "PNEUMONIA").glob("*.jpeg"))[:3]


@pytest.fixture(scope="module")
def keras():
    """Keras 3 on its torch backend (the export stage's), or a skip."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()} here; the export needs its torch backend")
    return keras
