"""Where results and audit records go: never over an input, whole lines only, one clear error.

* :class:`Inputs` remembers what the inputs are (resolved path and device/inode, so symbolic and
  hard links count), and :func:`check_targets` refuses an ``--output`` or ``--audit`` that names
  one of them, or standard output redirected into one, before anything is opened or written; an
  existing image or DICOM file (another scan) is refused as a target too.
* :class:`LineSink` is the text stream every writer writes to: it collects text and writes it to the
  file descriptor on ``flush`` (the writers flush once per record). When a write fails part-way
  (disk full, I/O error) the bytes of that record are cut off again, so a file never ends in half a
  record, and the failure is a :class:`~edgedx.errors.WriteError` (exit code 5) with one line.
* Standard output closed by its reader (``edgedx classify ... | head``) raises
  :class:`OutputClosed` for the command line to end quietly with 0; a closed pipe behind
  ``--audit`` or ``--output`` is a WriteError like any other failed write.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

from edgedx.errors import UsageError, WriteError
from edgedx.text import printable


class OutputClosed(Exception):
    """Standard output's reader went away (``| head``): the run ends quietly, exit code 0.

    Not an OSError, so that no library on the way (click turns EPIPE into exit 1) mistakes it.
    """


class Inputs:
    """The identities of the input files: resolved paths, and (device, inode) of those that exist."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.names: dict[str, str] = {}
        self.ids: dict[tuple[int, int], str] = {}
        for p in paths:
            shown = str(p)
            self.names.setdefault(os.path.realpath(p), shown)
            try:
                st = os.stat(p)
            except (OSError, ValueError):
                continue
            if stat.S_ISREG(st.st_mode):
                self.ids.setdefault((st.st_dev, st.st_ino), shown)

    def match(self, path: str | Path) -> str | None:
        """The input that ``path`` names (the same file by path or by inode), or None."""
        hit = self.names.get(os.path.realpath(path))
        if hit is not None:
            return hit
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        return self.ids.get((st.st_dev, st.st_ino))

    def match_fd(self, fd: int) -> str | None:
        """The input that the open file ``fd`` is (a regular file only), or None."""
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        return self.ids.get((st.st_dev, st.st_ino)) if stat.S_ISREG(st.st_mode) else None


def check_targets(inputs: Inputs, output: str | Path | None = None, audit: str | Path | None = None) -> None:
    """Refuse output targets that would write over an input, or over each other.

    Args:
        inputs: the files the run reads.
        output: the results file (``--output``); None: standard output, checked when it is a
            regular file (``> scan.dcm`` redirects into the scan).
        audit: the audit trail file (``--audit``).

    Raises:
        UsageError: naming the option and the input, before anything is written.
    """
    for option, target in (("--output", output), ("--audit", audit)):
        if target is None:
            continue
        hit = inputs.match(target)
        if hit is not None:
            raise UsageError(f"{option} {printable(target)} is the input {printable(hit)}: refusing to write over an input")
        kind = _scan_kind(target)
        if kind is not None:  # another scan than this run's (a typo for results.json): never overwritten
            raise UsageError(f"{option} {printable(target)} is an existing {kind} file: refusing to write over a scan")
    if output is None:
        fd = _stdout_fd()
        hit = None if fd is None else inputs.match_fd(fd)
        if hit is not None:
            raise UsageError(f"standard output is redirected to the input {printable(hit)}: refusing to write over an input")
    if output is not None and audit is not None and Inputs([output]).match(audit) is not None:
        raise UsageError(f"--output and --audit name the same file {printable(output)}: give two files")


def _scan_kind(path: str | Path) -> str | None:
    """'PNG', 'JPEG', ..., 'DICOM' when ``path`` is an existing regular file holding one, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (OSError, ValueError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = os.read(fd, 132)
    except OSError:
        return None
    finally:
        os.close(fd)
    from edgedx.decode import sniff  # imports OpenCV: only when a target exists

    kind = sniff(head)
    return None if kind is None else kind.upper()


class LineSink(io.TextIOBase):
    """A text stream that writes to a file descriptor in whole records.

    ``write`` collects text; ``flush`` encodes it and writes it all, retrying short writes. If that
    fails part-way, the part already written is truncated off again (regular files), so the file
    holds only whole records, and :class:`~edgedx.errors.WriteError` is raised.

    Args:
        fd: an open file descriptor, owned (closed by :meth:`close`) unless ``owns_fd`` is False.
        name: the target's name in messages.
        what: what is written, in messages ("results", "the audit trail").
        stdout: the descriptor is standard output: a reader that went away raises
            :class:`OutputClosed` (the command line then ends quietly) instead of WriteError.
        errors: how to encode what UTF-8 cannot (file names that are not UTF-8).
    """

    def __init__(self, fd: int, name: str, *, what: str = "results", owns_fd: bool = True, stdout: bool = False, errors: str = "backslashreplace") -> None:
        super().__init__()
        self._fd, self.name, self.what = fd, name, what
        self._owns, self._stdout, self._errors = owns_fd, stdout, errors
        self._pending: list[str] = []
        self.regular = stat.S_ISREG(os.fstat(fd).st_mode)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def fileno(self) -> int:
        return self._fd

    def write(self, text: str) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to a closed LineSink")
        self._pending.append(text)
        return len(text)

    def flush(self) -> None:
        if self.closed or not self._pending:
            return
        data = "".join(self._pending).encode("utf-8", self._errors)
        self._pending.clear()
        self._write_all(data)

    def sync(self) -> None:
        """Flush, then ask the OS to put a regular file's data on disk (fsync)."""
        self.flush()
        if self.regular:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise self._error(exc, 0) from None

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            if self._owns:
                os.close(self._fd)
            super().close()

    def _write_all(self, data: bytes) -> None:
        view, written = memoryview(data), 0
        try:
            while written < len(data):
                n = os.write(self._fd, view[written:])
                if n == 0:
                    raise OSError(28, os.strerror(28))  # ENOSPC: a write that writes nothing
                written += n
        except BrokenPipeError:
            if self._stdout:
                raise OutputClosed from None
            raise self._error(BrokenPipeError(32, "the reading end of the pipe was closed"), written) from None
        except OSError as exc:
            raise self._error(exc, written) from None

    def _error(self, exc: OSError, written: int) -> WriteError:
        cut = ""
        if written and self.regular and self._cut(written):
            cut = "; the record cut short was removed"
        elif written:
            cut = f"; the last record may be incomplete ({written:,} bytes of it were written)"
        return WriteError(f"cannot write {self.what} to {printable(self.name)}: {printable(exc.strerror or exc)}{cut}")

    def _cut(self, written: int) -> bool:
        """Truncate the ``written`` bytes of a failed record off the end of a regular file."""
        try:
            end = os.lseek(self._fd, 0, os.SEEK_CUR)
            if os.fstat(self._fd).st_size != end:  # someone else appended since: leave their bytes
                return False
            os.ftruncate(self._fd, end - written)
            os.lseek(self._fd, end - written, os.SEEK_SET)
            return True
        except OSError:
            return False


def open_sink(path: str | Path, *, append: bool, what: str) -> LineSink:
    """Open ``path`` for writing records (created if missing; truncated unless ``append``).

    A FIFO without a reader is refused at once (no waiting for one).

    Raises:
        UsageError: the file cannot be opened (missing folder, read-only file system, permission,
            a directory, a FIFO nobody reads).
    """
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    flags |= os.O_APPEND if append else 0
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        hint = ": no process is reading this FIFO" if exc.errno == 6 else ""  # ENXIO
        raise UsageError(f"cannot open {what} file {printable(path)}: {printable(exc.strerror or exc)}{hint}") from None
    try:
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        if not append and stat.S_ISREG(os.fstat(fd).st_mode):
            os.ftruncate(fd, 0)
    except OSError as exc:
        os.close(fd)
        raise UsageError(f"cannot open {what} file {printable(path)}: {printable(exc.strerror or exc)}") from None
    return LineSink(fd, str(path), what=what)


def open_results(path: str | Path | None) -> io.TextIOBase:
    """The results stream: ``path`` (truncated), or standard output when None."""
    if path is not None:
        return open_sink(path, append=False, what="results")
    sys.stdout.flush()
    fd = _stdout_fd()
    if fd is None:  # replaced by an in-memory stream (a test harness, an embedding program)
        return _TextSink(sys.stdout)
    return LineSink(fd, "standard output", owns_fd=False, stdout=True)


class _TextSink(io.TextIOBase):
    """Records to a text stream without a file descriptor: written through, flushed per record."""

    def __init__(self, stream: io.TextIOBase) -> None:
        super().__init__()
        self._stream = stream
        self.name = "standard output"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return bool(getattr(self._stream, "isatty", lambda: False)())

    def write(self, text: str) -> int:  # type: ignore[override]
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        if not self.closed:
            self.flush()
            super().close()


def _stdout_fd() -> int | None:
    try:
        return sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return None


def say(text: str = "") -> None:
    """Print a command's result to standard output, flushed; a reader that went away (``| head``)
    ends the run quietly (:class:`OutputClosed`) instead of click's exit 1 for a broken pipe."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise OutputClosed("the reading end of the pipe was closed") from None


def silence_stdout() -> None:
    """Point standard output at /dev/null, so that Python's flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
