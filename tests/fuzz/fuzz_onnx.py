"""Target ``onnx``: :func:`edgedx.onnxfile.read_metadata` on mutated model files.

The input is the file's bytes (the tiny test CNN, with and without a manifest, plus hand-built
protobuf fragments as seeds), written to a temporary file. Only ModelError may escape; metadata
read must be a dict of str to str.
"""

from __future__ import annotations

import atexit
import os
import tempfile

from edgedx.onnxfile import read_metadata
from tests.fuzz import seeds as seedmod
from tests.fuzz.common import Finding, expect_edgedx_error

_fd, _PATH = tempfile.mkstemp(suffix=".onnx", prefix="edgedx-fuzz-")
os.close(_fd)
atexit.register(lambda: os.path.exists(_PATH) and os.unlink(_PATH))


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = number << 3 | wire
    return bytes([key]) + (bytes([len(payload)]) + payload if wire == 2 else payload)


def seeds() -> list[bytes]:
    entry = _field(1, 2, b"edgedx.manifest") + _field(2, 2, b"{}")
    minimal = _field(1, 0, b"\x08") + _field(7, 2, b"") + _field(14, 2, entry)
    return [*seedmod.onnx_models(), minimal, _field(14, 2, entry)]


def one_input(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    out = expect_edgedx_error(lambda: read_metadata(_PATH))
    if out is not None and not (
        isinstance(out, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in out.items())
    ):
        raise Finding(f"read_metadata returned {out!r:.200}")
