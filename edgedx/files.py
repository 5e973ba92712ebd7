"""Reading files edgedx did not make: regular files only, never more than a stated size.

A FIFO named like a sidecar blocks a plain ``open`` until a writer comes; a link to ``/dev/zero``
never ends; a 2 GiB "image" is read whole before any decoder sees it. :func:`read_regular` refuses
all three before reading a byte: it opens without blocking, checks the kind of file and its size,
and reads at most ``limit + 1`` bytes (a file that grows while read is caught too).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edgedx.text import printable


class FileRefused(OSError):
    """Not a regular file, or larger than allowed; ``str()`` is a one-line reason without the path."""


def read_regular(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file at ``path`` (links followed), at most ``limit`` of them.

    Raises:
        FileRefused: a FIFO, device, socket or directory, or more than ``limit`` bytes.
        OSError: the file cannot be opened or read (``strerror`` says why).
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer; a regular file reads as usual.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"not a regular file ({kind(info.st_mode)})")
        if info.st_size > limit:
            raise FileRefused(too_large(info.st_size, limit))
        # os.read straight into bytes: half the cost of a buffered file object for small scans;
        # one read for a file that did not grow since fstat, and never more than limit + 1 bytes.
        chunks, total, want = [], 0, min(info.st_size + 1, limit + 1)
        while want > 0 and (chunk := os.read(fd, want)):
            chunks.append(chunk)
            total += len(chunk)
            want = min(1 << 20, limit + 1 - total)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if len(data) > limit:
            raise FileRefused(too_large(len(data), limit))
        return data
    finally:
        os.close(fd)


def kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def too_large(size: int, limit: int) -> str:
    return f"file too large: {size:,} bytes, more than the limit of {limit:,}"


def reason(exc: OSError) -> str:
    """One line for an OSError: its ``strerror`` (no path, no errno), else its text, escaped."""
    return printable(exc.strerror or str(exc) or type(exc).__name__)
