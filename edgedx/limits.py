"""Every limit edgedx enforces, with its default, in one place (README "Safety and reliability").

Counts that start threads or size buffers are bounded, so that a typo (``--threads 100000``) is a
one-line usage error instead of tens of thousands of threads; sizes are checked before anything is
read or allocated.
"""

from __future__ import annotations

import os
import re

from edgedx.errors import UsageError

#: Largest input file read (bytes). Holds the largest image the default pixel limit allows,
#: uncompressed at 16 bits (200 MB), with room for DICOM headers; ``--max-file-size`` raises it.
DEFAULT_MAX_FILE_SIZE = 256 << 20
#: Largest model manifest or TensorRT sidecar read (bytes): they are a few kB.
MAX_MANIFEST_SIZE = 1 << 20
#: Largest ONNX file read for its metadata: protobuf's own 2 GiB limit (bigger models keep their
#: weights as external data).
MAX_MODEL_SIZE = 2 << 30

#: (lowest, highest) of each count option. Inference threads beyond the cores only contend (ONNX
#: Runtime's spinning threads made a 3-run benchmark with 256 threads on 2 cores take 33 s, found by
#: fuzzing), so their bound follows the machine: see :func:`thread_bounds`.
THREADS_PER_CORE = 4
MIN_MAX_THREADS = 8
WORKERS = (0, 64)
BATCH_SIZE = (1, 1024)
TOP_K = (1, 1000)
ITERATIONS = (1, 10_000_000)
WARMUP = (0, 100_000)
#: Seconds of ``bench --duration``.
DURATION = (0.1, 86_400.0)


def cpu_count() -> int:
    """Cores this process may run on (honours affinity masks and containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def thread_bounds() -> tuple[int, int]:
    """(1, the most inference threads): 4 per usable core, at least 8."""
    return 1, max(MIN_MAX_THREADS, THREADS_PER_CORE * cpu_count())


def check_count(name: str, value: int | None, bounds: tuple[int, int]) -> None:
    """Refuse a count outside ``bounds`` (None means the default and passes).

    Raises:
        UsageError: ``name must be between LO and HI, got VALUE``.
    """
    if value is None:
        return
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{name} must be an integer between {low:,} and {high:,}, got {value!r}")


def check_number(name: str, value: float | None, bounds: tuple[float, float]) -> None:
    """Refuse a number outside ``bounds``, NaN included (click's FloatRange lets NaN through: every
    comparison with NaN is false, and ``bench --duration nan`` then never ended; found by fuzzing).

    Raises:
        UsageError: ``name must be a number between LO and HI, got VALUE``.
    """
    if value is None:
        return
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise UsageError(f"{name} must be a number between {low:g} and {high:g}, got {value!r}")


_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """``"256M"``, ``"2G"``, ``"1048576"`` -> bytes (K, M, G, T are powers of 1024).

    Raises:
        UsageError: not a positive size.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        match = _SIZE.match(str(text))
        if match is None:
            raise UsageError(f"a size must be a number of bytes with an optional K, M, G or T suffix, got {text!r}")
        size = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if size < 1:
        raise UsageError(f"a size must be at least 1 byte, got {text!r}")
    return size
