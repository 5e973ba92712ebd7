"""Errors the user can act on, each with its documented exit code.

Exit codes (see README.md):
    0  every input got a result
    1  at least one input failed (the others still got results)
    2  usage error (bad option, missing argument)
    3  the requested backend cannot run here (not installed, no CUDA device)
    4  the model is bad (unreadable, not what its extension says, invalid manifest, unusable outputs)
    5  the results or the audit trail could not be written (disk full, I/O error, closed pipe);
       every record already written is a whole line
"""

from __future__ import annotations

import hashlib
from pathlib import Path

EXIT_OK = 0
EXIT_INPUT_FAILED = 1
EXIT_USAGE = 2
EXIT_BACKEND_UNAVAILABLE = 3
EXIT_BAD_MODEL = 4
EXIT_WRITE_FAILED = 5


class EdgedxError(Exception):
    """Base of every error edgedx raises on purpose; its message is one line for the user.

    ``fallback_onnx``: set by a backend that refused a model it could not open here (a TensorRT
    engine) when another file would do the same job (the engine's source ONNX); only
    ``backend="auto"`` acts on it, and every result then says so.
    """

    exit_code: int = EXIT_INPUT_FAILED
    fallback_onnx: Path | None = None


class InputError(EdgedxError):
    """One input file cannot be read, decoded or preprocessed; it gets an error record."""

    exit_code = EXIT_INPUT_FAILED


class UsageError(EdgedxError):
    """The command line or API call is inconsistent."""

    exit_code = EXIT_USAGE


class BackendUnavailable(EdgedxError):
    """The requested backend (or its hardware) is not available on this machine."""

    exit_code = EXIT_BACKEND_UNAVAILABLE


class ModelError(EdgedxError):
    """The model file or its manifest is missing, malformed or inconsistent."""

    exit_code = EXIT_BAD_MODEL


class WriteError(EdgedxError):
    """Results or audit records could not be written; the run stops (a record cut short is removed)."""

    exit_code = EXIT_WRITE_FAILED


class BackendError(EdgedxError):
    """The backend failed while running a batch; that batch's inputs get error records."""

    exit_code = EXIT_INPUT_FAILED


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (third-party errors can span pages), or its type."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks. Raises OSError."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
