"""``--resume OUT.ndjson``: carry on a run that was stopped, killed or crashed.

A record is *final* when asking again would give the same answer: status ``ok`` or ``rejected``,
or an ``error`` about the input itself (``error_kind`` ``input``: unreadable, corrupt, too large).
An ``error`` of the run (``error_kind`` ``run``: the backend failed on a batch, a read failed for a
reason outside the file, memory ran out; see :func:`edgedx.inputs.error_kind`) is not final.

:func:`prepare` repairs OUT so that it holds only final records, each input at most once, and
returns the inputs it covers; the run then skips those and appends. Repairs:

* a last line cut short by a kill (no newline at the end) is removed;
* records of inputs that have a non-final record are removed (they are asked again);
* the records of the last input are removed when it is a multi-frame input (a ``frame`` number),
  because the kill may have come between two of its frames.

Records are written one input at a time and in order, so only the last input can be incomplete.
Removing a tail truncates the file; removing anything else rewrites it to a temporary file that
replaces OUT atomically, so a kill during the repair loses nothing either.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgedx.errors import UsageError
from edgedx.inputs import path_key


def is_final(record: dict) -> bool:
    """Whether ``record`` answers its input for good (see the module docstring)."""
    status = record.get("status")
    if status in ("ok", "rejected"):
        return True
    return status == "error" and record.get("error_kind", "input") != "run"


@dataclass
class Resumed:
    """What OUT held: the inputs with final records, and what the repair removed."""

    path: Path
    done: set[str] = field(default_factory=set)
    records: int = 0  # final records kept
    removed: int = 0  # records (or a cut line) removed for asking again


def prepare(path: str | Path, model: str | None = None) -> Resumed:
    """Read and repair OUT (created empty when missing); see the module docstring.

    Args:
        path: the NDJSON file of an earlier run.
        model: the model path of this run; records of another model are refused.

    Raises:
        UsageError: OUT is not an edgedx NDJSON file, or holds another model's records.
    """
    path = Path(path)
    out = Resumed(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.touch()
        return out
    except OSError as exc:
        raise UsageError(f"cannot read --resume file {path}: {exc.strerror or exc}") from None
    end = data.rfind(b"\n") + 1  # past the last complete line; a cut tail is dropped
    lines: list[tuple[int, int, dict]] = []  # (start, stop, record)
    start = 0
    for number, line in enumerate(data[:end].split(b"\n")[:-1], 1):
        stop = start + len(line) + 1
        if line.strip():
            lines.append((start, stop, _parse(line, path, number, model)))
        start = stop
    out.removed = int(end < len(data))
    unfinished = {path_key_of(r) for _, _, r in lines if not is_final(r)}
    if lines and lines[-1][2].get("frame") is not None:
        unfinished.add(path_key_of(lines[-1][2]))
    keep = [(a, b, r) for a, b, r in lines if path_key_of(r) not in unfinished or path_key_of(r) is None]
    out.removed += len(lines) - len(keep)
    out.records = len(keep)
    out.done = {k for _, _, r in keep if (k := path_key_of(r)) is not None}
    if len(keep) == len(lines):
        if end < len(data):
            with open(path, "r+b") as f:
                f.truncate(end)
        return out
    if all(x is y for x, y in zip(keep, lines)):  # only a tail goes
        with open(path, "r+b") as f:
            f.truncate(keep[-1][1] if keep else 0)
        return out
    _rewrite(path, b"".join(data[a:b] for a, b, _ in keep))
    return out


def path_key_of(record: dict) -> str | None:
    p = record.get("path")
    return None if p is None else path_key(p)


def _parse(line: bytes, path: Path, number: int, model: str | None) -> dict:
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict) or "status" not in record or "path" not in record:
        raise UsageError(f"{path} line {number} is not an edgedx record; --resume needs the NDJSON output of edgedx classify")
    if model is not None and record.get("model") not in (None, model):
        raise UsageError(f"{path} holds records of another model ({record.get('model')}); resume with that model or a new file")
    return record


def _rewrite(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.resume-tmp")
    with open(tmp, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
