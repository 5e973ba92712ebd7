"""Results -> table (humans), NDJSON or CSV (machines). Records stream: each is flushed as written."""

from __future__ import annotations

import csv
import dataclasses
import json
from typing import IO, Any, Protocol

from edgedx.results import Result
from edgedx.text import printable

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


#: The columns every CSV starts with; ``score_<label>`` columns follow ``score``.
CSV_FIRST = ("path", "frame", "status", "label", "score")


def csv_columns(labels: tuple[str, ...]) -> list[str]:
    """Every scalar key of the JSON record, as columns: the first few, one score per label, then the
    other scalar fields of :class:`Result` in their order (a field added to ``Result`` becomes a
    column by itself; dict and list fields such as ``scores`` do not)."""
    scalar = [f.name for f in dataclasses.fields(Result) if not _is_container(f.type)]
    rest = [name for name in scalar if name not in CSV_FIRST]
    return [*CSV_FIRST, *(f"score_{x}" for x in labels), *rest]


def _is_container(annotation: Any) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.replace("typing.", "").lower().startswith(("dict", "list", "tuple", "mapping", "sequence", "set"))


def _cell(value: Any) -> Any:
    """None -> empty, booleans as JSON writes them, everything else as is."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


class CsvWriter:
    """One row per record: the columns of :func:`csv_columns`; scores with 6 decimals."""

    def __init__(self, stream: IO[str], labels: tuple[str, ...]) -> None:
        self.stream, self.labels = stream, labels
        self.columns = csv_columns(labels)
        self._csv = csv.writer(stream, lineterminator="\n")
        self._csv.writerow(self.columns)

    def write(self, r: Result) -> None:
        row = {k: _cell(v) for k, v in r.to_dict().items() if k in self.columns}
        row["score"] = "" if r.score is None else f"{r.score:.6f}"
        for x in self.labels:
            row[f"score_{x}"] = "" if r.scores is None else f"{r.scores.get(x, 0.0):.6f}"
        self._csv.writerow([row.get(c, "") for c in self.columns])
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
        from rich.markup import escape
        from rich.table import Table

        def cell(text: str) -> str:  # file names and messages: no raw newlines, escapes or markup
            return escape(printable(text, 1000))

        table = Table(show_lines=False)
        for col in ("file", "result", "score", "decision / details"):
            table.add_column(col, overflow="fold")
        for r in self.rows:
            name = cell((r.path or "<array>") + (f" [frame {r.frame}]" if r.frame is not None else ""))
            if r.status == "error":
                table.add_row(name, "[red]error[/red]", "", cell(r.error or ""))
                continue
            if r.status == "rejected":
                table.add_row(name, "[yellow]rejected[/yellow]", "", cell(f"{r.reason_code}: {r.reason}" if r.reason_code else r.reason or ""))
                continue
            details = decision_rule(r)
            if self.top_k:
                ranked = sorted((r.scores or {}).items(), key=lambda kv: -kv[1])[: self.top_k]
                details = "; ".join(x for x in (details, "top: " + ", ".join(f"{k} {v:.3f}" for k, v in ranked)) if x)
            table.add_row(name, cell(r.label or ""), f"{r.score:.3f}", cell(details))
        console = Console(file=self.stream, width=None if self.stream.isatty() else 160, highlight=False)
        console.print(table)
        if self.rows:
            r = self.rows[0]
            rule = next((n for n in map(decision_note, self.rows) if n), "")
            if rule:
                console.print(cell(rule))
            note = f"model {r.model} on {r.backend}" + (f" ({r.backend_note})" if r.backend_note else "")
            console.print(cell(note), style="dim")
        self.stream.flush()


def _positive_label(r: Result) -> str | None:
    if r.threshold is None or r.positive is None or not r.scores:
        return None
    return r.label if r.positive else next((k for k in r.scores if k != r.label), None)


def decision_rule(r: Result) -> str:
    """How a binary answer was decided, per row: ``p(PNEUMONIA) 0.047 < 0.881``."""
    positive = _positive_label(r)
    if positive is None:
        return ""
    return f"p({positive}) {r.scores[positive]:.3f} {'>=' if r.positive else '<'} {r.threshold:.3f}"


def decision_note(r: Result) -> str:
    """The rule itself, once under the table: ``decision: PNEUMONIA when p(PNEUMONIA) >= threshold 0.881, else NORMAL``."""
    positive = _positive_label(r)
    if positive is None:
        return ""
    negative = next((k for k in r.scores if k != positive), None) if len(r.scores) == 2 else None
    return f"decision: {positive} when p({positive}) >= threshold {r.threshold:.3f}" + (f", else {negative}" if negative else "")


def make_writer(fmt: str, stream: IO[str], labels: tuple[str, ...], top_k: int | None = None) -> Writer:
    if fmt == "json":
        return JsonLinesWriter(stream, top_k)
    if fmt == "csv":
        return CsvWriter(stream, labels)
    return TableWriter(stream, top_k)
