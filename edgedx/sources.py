"""What a run reads: the paths given on the command line, folders walked into files."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from edgedx import decode

log = logging.getLogger("edgedx")


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders walked recursively (image and DICOM files only, sorted).

    A path that does not exist is kept, so it gets its own error record. Symbolic links to folders
    are not followed (no loops).
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
            continue
        found = []
        for root, dirs, files in os.walk(p, followlinks=False, onerror=lambda e: log.warning("cannot list %s", e.filename)):
            dirs.sort()
            found.extend(Path(root, f) for f in files if decode.is_candidate(Path(root, f)))
        out.extend(sorted(found))
    return out
