"""The audit trail: one JSON line per answer, appended and flushed, so every answer is traceable.

Each line: time, input sha256, model and manifest sha256, backend, precision, library versions,
scores, threshold, decision and status. Never patient data: the input is named by path and hash.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from edgedx.manifest import Manifest
from edgedx.outputs import open_sink
from edgedx.results import Result
from edgedx.version import __version__


def library_versions(backend_detail: dict[str, Any]) -> dict[str, str]:
    import cv2
    import numpy

    out = {"edgedx": __version__, "numpy": numpy.__version__, "opencv": cv2.__version__}
    for key in ("onnxruntime", "tensorrt", "openvino"):
        if key in backend_detail:
            out[key] = str(backend_detail[key])
    return out


class AuditLog:
    """Appends records to ``path``; one ``write`` is one line, written whole and fsynced.

    Raises:
        UsageError: the file cannot be opened (from the constructor).
        WriteError: a record cannot be written (from :meth:`write`): disk full, I/O error, a pipe
            whose reader went away. A record cut short is truncated off again.
    """

    def __init__(self, path: str | Path, *, model_sha256: str, manifest: Manifest, backend_detail: dict[str, Any]) -> None:
        self.path = Path(path)
        self._f = open_sink(self.path, append=True, what="the audit trail")
        self._static = {
            "model_sha256": model_sha256,
            "manifest_sha256": hashlib.sha256(manifest.to_json().encode()).hexdigest(),
            "backend": backend_detail.get("backend"),
            "precision": manifest.precision,
            "versions": library_versions(backend_detail),
        }

    def write(self, result: Result, input_sha256: str | None) -> None:
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
            "path": result.path,
            "frame": result.frame,
            "input_sha256": input_sha256,
            **self._static,
            "model": result.model,
            "backend_ran": result.backend,
            "backend_note": result.backend_note,
            "precision_ran": result.precision,
            "status": result.status,
            "reason_code": result.reason_code,
            "reason": result.reason,
            "error": result.error,
            "scores": result.scores,
            "threshold": result.threshold,
            "decision": result.label,
        }
        self._f.write(json.dumps(record) + "\n")
        self._f.sync()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
