"""Shared fixtures: the real data in ../shared/data (skipped cleanly where absent)."""

from __future__ import annotations

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


@pytest.fixture
def xray_files() -> list[Path]:
    """A few real chest X-rays of each class."""
    root = need(XRAY)
    return sorted((root / "NORMAL").glob("*.jpeg"))[:3] + sorted((root / "PNEUMONIA").glob("*.jpeg"))[:3]
