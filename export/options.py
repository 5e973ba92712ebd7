"""Choices shared by the export CLI and the library, free of heavy imports (``edgedx --help`` loads it)."""

from __future__ import annotations

from enum import Enum


class Target(str, Enum):
    """Where an INT8 model will run: ``cpu`` (U8S8 for ONNX Runtime) or ``tensorrt`` (symmetric S8S8)."""

    CPU = "cpu"
    TENSORRT = "tensorrt"


class Method(str, Enum):
    """How activation ranges are calibrated."""

    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"
