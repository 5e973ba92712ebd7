"""The inputs of a run: paths as given, from a list file, or from a walk; a shard of them; bytes.

Everything here streams: a walk yields each folder's files as soon as that folder is listed, and a
``--files-from`` list is read line by line, so the first results come out before the last path is
known and millions of paths never sit in memory or on a command line.

Order is the order of the arguments; inside a folder, names sort the way
:func:`edgedx.api.expand_paths` sorts them (by path components), so a streamed walk and the old
collected walk give the same sequence.

Sharding (``--shard K/N``) is a stable hash partition, the same on every machine and in every run:
an input belongs to shard ``int.from_bytes(sha256(path)[:8], "big") % N``, where ``path`` is the
path exactly as it appears in the records (``str(Path(p))``, encoded as UTF-8 with surrogate escapes
for undecodable names). Every process must therefore be given the same spelling of the paths (all
absolute, or all relative to the same folder); the union of the N shards is then every input once.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edgedx import decode
from edgedx.errors import UsageError

log = logging.getLogger("edgedx")


@dataclass(frozen=True)
class BytesSource:
    """An input whose bytes the caller already holds (fetched from object storage, a PACS, a table).

    ``name`` becomes the record's ``path`` (None is allowed); the content decides the format.
    """

    data: bytes
    name: str | None = None


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based): see the module docstring for the partition."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` with ``0 <= K < N``; raises :class:`UsageError` otherwise."""
        try:
            k, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise UsageError(f"--shard must be K/N (e.g. 0/4), got {text!r}") from None
        if n < 1 or not 0 <= k < n:
            raise UsageError(f"--shard K/N needs 0 <= K < N, got {text!r}")
        return cls(k, n)

    def owns(self, path: str | Path) -> bool:
        return shard_of(path, self.count) == self.index


#: OS errors that say nothing about the file itself: the storage, the network or the process was
#: in trouble, and reading again may work. Reads that fail with these are run errors.
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EIO", "EAGAIN", "EINTR", "ENOMEM", "EMFILE", "ENFILE", "ESTALE",
                                      "ETIMEDOUT", "ECONNRESET", "ECONNABORTED", "EHOSTUNREACH", "ENETDOWN",
                                      "ENETUNREACH", "ENOLINK", "EREMOTEIO", "ENOBUFS")
    if hasattr(errno, name)
)


def error_kind(exc: BaseException) -> str:
    """``run`` when reading an input failed for a reason outside the file (see
    :data:`TRANSIENT_ERRNOS`), else ``input``: missing, unreadable, not an image, corrupt, too large.

    Looks through edgedx's one-line errors to the OS error they were raised from.
    """
    seen = exc
    while seen is not None:
        if isinstance(seen, MemoryError) or (isinstance(seen, OSError) and seen.errno in TRANSIENT_ERRNOS):
            return "run"
        seen = seen.__cause__ or seen.__context__
    return "input"


def path_key(path: str | Path) -> str:
    """The spelling of an input in records, shards and resume files: ``str(Path(path))``."""
    return str(Path(path))


def shard_of(path: str | Path, count: int) -> int:
    """The shard (0 .. count-1) that ``path`` belongs to; stable across machines and Python runs."""
    digest = hashlib.sha256(path_key(path).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def read_list(source: str | Path, nul: bool = False) -> Iterator[Path]:
    """Paths from a list file (``"-"``: standard input), one per line or NUL-separated with ``nul``.

    Lines are split on ``\\n`` only (a name may hold any other byte); a trailing ``\\r`` is kept
    because it can be part of a name. Empty entries are skipped. Undecodable bytes survive as
    surrogate escapes, as in ``os.fsdecode``.
    """
    if str(source) == "-":
        yield from _split(sys.stdin.buffer, nul)
        return
    try:
        f = open(source, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read --files-from {source}: {exc.strerror or exc}") from None
    with f:
        yield from _split(f, nul)


def _split(stream: BinaryIO, nul: bool, chunk: int = 1 << 16) -> Iterator[Path]:
    sep = b"\0" if nul else b"\n"
    read = getattr(stream, "read1", stream.read)  # read1: what a pipe has now, not a full chunk
    rest = b""
    while block := read(chunk):
        parts = (rest + block).split(sep)
        rest = parts.pop()
        for part in parts:
            if part:
                yield Path(os.fsdecode(part))
    if rest:
        yield Path(os.fsdecode(rest))


def gather(paths: Iterable[str | Path], files_from: str | Path | None = None, nul: bool = False) -> Iterator[Path]:
    """The inputs of ``edgedx classify``: the paths given (folders walked), then the ``--files-from`` list.

    Listed paths are taken as they are (a listed folder is walked too), so ``find`` decides what is in.
    """
    yield from walk(paths)
    if files_from is not None:
        yield from walk(read_list(files_from, nul))


def walk(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given, folders walked recursively (image and DICOM files only), streamed.

    A path that does not exist is yielded as is, so it gets its own error record. Symbolic links
    to folders are not followed (no loops); unreadable folders are logged and skipped.
    """
    for p in map(Path, paths):
        if p.is_dir():
            yield from _walk_dir(p)
        else:
            yield p


def _walk_dir(root: Path) -> Iterator[Path]:
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        log.warning("cannot list %s: %s", root, exc.strerror or exc)
        return
    for entry in entries:
        path = Path(root, entry.name)
        try:
            is_dir = entry.is_dir()
        except OSError:  # a symlink loop: listed as a file, as os.walk does, to get its error record
            is_dir = False
        if is_dir:
            if not entry.is_symlink():
                yield from _walk_dir(path)
        elif decode.is_candidate(path):
            yield path


def select(paths: Iterable[Path], shard: Shard | None = None, skip: set[str] | frozenset[str] = frozenset()) -> Iterator[Path]:
    """The paths of this shard that are not in ``skip`` (keys as :func:`path_key` spells them)."""
    for p in paths:
        key = path_key(p)
        if shard is not None and shard_of(key, shard.count) != shard.index:
            continue
        if key in skip:
            continue
        yield p


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders walked recursively (image and DICOM files only, sorted): the list of
    :func:`walk`, which streams. A path that does not exist is kept, so it gets its own error record."""
    return list(walk(paths))


class Counted:
    """Wrap an iterator and count what went through it (the number of inputs of a streamed run).

    ``on_end(count)`` is called once the iterator is exhausted: the total is known from then on
    (a progress bar learns it while the last batches still run).
    """

    def __init__(self, items: Iterable[Path], on_end: Callable[[int], None] | None = None) -> None:
        self._items = iter(items)
        self.count = 0
        self.on_end = on_end

    def __iter__(self) -> Iterator[Path]:
        for item in self._items:
            self.count += 1
            yield item
        if self.on_end is not None:
            self.on_end(self.count)
