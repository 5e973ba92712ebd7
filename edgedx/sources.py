"""What a run reads: the paths given on the command line, folders walked into files."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edgedx.inputs import walk


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders walked recursively (image and DICOM files only, sorted).

    A path that does not exist is kept, so it gets its own error record. Symbolic links to folders
    are not followed (no loops). The list of :func:`edgedx.inputs.walk`, which streams.
    """
    return list(walk(paths))
