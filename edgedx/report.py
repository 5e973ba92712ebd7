"""Results -> table (humans), NDJSON or CSV (machines). Records stream: each is flushed as written."""

from __future__ import annotations

import csv
import json
from typing import IO, Any, Protocol

from edgedx.api import Result

FORMATS = ("table", "json", "csv")


class Writer(Protocol):
    def write(self, result: Result) -> None: ...

    def close(self) -> None: ...


def record(result: Result, top_k: int | None = None) -> dict[str, Any]:
    """The JSON record of one result; ``top_k`` adds the k best labels.

    DICOM identifiers (asked for with ``dicom_uids``) become top-level ``*_instance_uid`` fields.
    """
    out = result.to_dict()
    uids = out.pop("dicom_uids", None)
    if uids is not None:
        out.update(uids)
    if top_k:
        ranked = sorted((result.scores or {}).items(), key=lambda kv: -kv[1])[:top_k]
        out["top_k"] = [{"label": k, "score": v} for k, v in ranked]
    return out


class JsonLinesWriter:
    """One JSON object per line, flushed, so a killed run leaves every finished record readable."""

    def __init__(self, stream: IO[str], top_k: int | None = None) -> None:
        self.stream, self.top_k = stream, top_k

    def write(self, result: Result) -> None:
        self.stream.write(json.dumps(record(result, self.top_k)) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class CsvWriter:
    """path, frame, status, label, score, one column per label's score, reason, error, backend, model."""

    def __init__(self, stream: IO[str], labels: tuple[str, ...]) -> None:
        self.stream, self.labels = stream, labels
        self._csv = csv.writer(stream, lineterminator="\n")
        self._csv.writerow(["path", "frame", "status", "label", "score", *(f"score_{x}" for x in labels), "reason", "error", "backend", "model"])

    def write(self, r: Result) -> None:
        scores = [("" if r.scores is None else f"{r.scores.get(x, 0.0):.6f}") for x in self.labels]
        score = "" if r.score is None else f"{r.score:.6f}"
        self._csv.writerow([r.path or "", "" if r.frame is None else r.frame, r.status, r.label or "", score, *scores, r.reason or "", r.error or "", r.backend, r.model])
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class TableWriter:
    """A rich table, printed when the run ends (tables cannot stream)."""

    def __init__(self, stream: IO[str], top_k: int | None = None) -> None:
        self.stream, self.top_k, self.rows = stream, top_k, []

    def write(self, result: Result) -> None:
        self.rows.append(result)

    def close(self) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(show_lines=False)
        for col in ("file", "result", "score", "details"):
            table.add_column(col, overflow="fold")
        for r in self.rows:
            name = (r.path or "<array>") + (f" [frame {r.frame}]" if r.frame is not None else "")
            if r.status == "error":
                table.add_row(name, "[red]error[/red]", "", r.error or "")
                continue
            if r.status == "rejected":
                table.add_row(name, "[yellow]rejected[/yellow]", "", r.reason or "")
                continue
            details = ""
            if self.top_k:
                ranked = sorted((r.scores or {}).items(), key=lambda kv: -kv[1])[: self.top_k]
                details = ", ".join(f"{k} {v:.3f}" for k, v in ranked)
            elif r.threshold is not None:
                details = f"threshold {r.threshold:.3f}"
            table.add_row(name, r.label or "", f"{r.score:.3f}", details)
        console = Console(file=self.stream, width=None if self.stream.isatty() else 160, highlight=False)
        console.print(table)
        if self.rows:
            r = self.rows[0]
            note = f"model {r.model} on {r.backend}" + (f" ({r.backend_note})" if r.backend_note else "")
            console.print(note, style="dim")
        self.stream.flush()


def make_writer(fmt: str, stream: IO[str], labels: tuple[str, ...], top_k: int | None = None) -> Writer:
    if fmt == "json":
        return JsonLinesWriter(stream, top_k)
    if fmt == "csv":
        return CsvWriter(stream, labels)
    return TableWriter(stream, top_k)
