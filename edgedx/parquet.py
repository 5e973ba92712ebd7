"""Records -> one Parquet file (``--format parquet --output FILE``; extra ``edgedx[parquet]``).

The columns are the NDJSON record's keys, in the same order, with the same values: ``scores`` is a
struct with one field per label, ``top_k`` a list of ``{label, score}`` structs. Rows go out in
row groups as they come; the file is written under a temporary name beside FILE and renamed when
complete, so FILE is never a half-written Parquet file (a killed run leaves only the temporary).
pyarrow is imported only here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgedx.errors import UsageError

ROW_GROUP = 8192

_STRINGS = ("path", "label", "error", "status", "reason_code", "reason", "model", "backend", "backend_note", "precision", "error_kind",
            "heatmap")


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UsageError("Parquet output needs pyarrow: pip install 'edgedx[parquet]'") from None
    return pyarrow


def schema(keys: list[str], labels: tuple[str, ...]) -> Any:
    """The Arrow schema of records with these keys (in this order) for a model with these labels."""
    pa = _pyarrow()
    types = {
        **dict.fromkeys(_STRINGS, pa.string()),
        "score": pa.float64(),
        "threshold": pa.float64(),
        "ood_score": pa.float64(),
        "frame": pa.int64(),
        "positive": pa.bool_(),
        "scores": pa.struct([(label, pa.float64()) for label in labels]),
        "top_k": pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())])),
    }
    fields = []
    for key in keys:
        kind = types.get(key, pa.string() if key.endswith("_uid") else None)
        if kind is None:
            raise ValueError(f"no Parquet type for record field {key!r}")
        fields.append(pa.field(key, kind))
    return pa.schema(fields)


class ParquetWriter:
    """Writes records (dicts, as :func:`edgedx.report.record` makes them) or results to one file.

    Args:
        path: the Parquet file to write.
        labels: the model's labels (the fields of ``scores``).
        top_k: as for :func:`edgedx.report.record`.
    """

    def __init__(self, path: str | Path, labels: tuple[str, ...], top_k: int | None = None) -> None:
        self._pa = _pyarrow()
        self.path, self.labels, self.top_k = Path(path), tuple(labels), top_k
        self._tmp = self.path.with_name(f".{self.path.name}.partial")
        self._rows: list[dict[str, Any]] = []
        self._schema: Any = None
        self._writer: Any = None

    def write(self, result: Any) -> None:
        from edgedx.report import record

        self.write_record(record(result, self.top_k))

    def write_record(self, rec: dict[str, Any]) -> None:
        if self._schema is None:
            self._schema = schema(list(rec), self.labels)
        elif rec.keys() != set(self._schema.names):  # from_pylist would drop or null them silently
            raise ValueError(f"record fields {sorted(rec)} differ from the file's columns {self._schema.names}")
        self._rows.append(rec)
        if len(self._rows) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        pq = self._pa.parquet
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, self._schema)
        if self._rows:
            self._writer.write_table(self._pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows = []

    def close(self) -> None:
        """Write what is buffered and put the file in place (an empty run writes an empty table)."""
        if self._schema is None:
            from edgedx.results import Result
            from edgedx.report import record

            self._schema = schema(list(record(Result(path=None), self.top_k)), self.labels)
        self._flush()
        self._writer.close()
        os.replace(self._tmp, self.path)
