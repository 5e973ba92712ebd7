"""``edgedx classify --triton URL``: the same records from a Triton server that serves an edgedx ensemble.

The client reads each file (with edgedx's safe reader: regular files only), sends its bytes, and
gets back the record the server's edgedx postprocessing made. Files it cannot read, and inputs the
server could not decode or the gate rejected, come back as error or rejected records like local
ones; a request the server fails becomes an error record for its files. ``tritonclient`` is
imported only here (extra ``edgedx[triton]``).

URLs: ``http://HOST:PORT`` or ``grpc://HOST:PORT``, optionally ``/MODEL`` (default ``edgedx``,
the ensemble name ``edgedx export triton`` writes).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from edgedx import decode, postprocess
from edgedx import manifest as manifest_mod
from edgedx.results import Result
from edgedx.errors import BackendUnavailable, EdgedxError, ModelError, UsageError, first_line
from edgedx.manifest import Manifest

DEFAULT_MODEL = "edgedx"
MANIFEST_PARAMETER = "edgedx_manifest"  # the same key export.triton writes (edgedx.serving.triton_models)


@dataclass(frozen=True)
class Endpoint:
    protocol: str  # "http" or "grpc"
    address: str  # host:port
    model: str

    def __str__(self) -> str:
        return f"{self.protocol}://{self.address}/{self.model}"


def parse_url(url: str) -> Endpoint:
    """``http://host:8000``, ``grpc://host:8001/name`` -> Endpoint.

    Raises:
        UsageError: another scheme, or no host and port.
    """
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "grpc"):
        raise UsageError(f"--triton URL must start with http:// or grpc://, got {url!r}")
    if not parts.hostname or parts.port is None:
        raise UsageError(f"--triton URL needs a host and a port (http://127.0.0.1:8000, grpc://127.0.0.1:8001), got {url!r}")
    model = parts.path.strip("/") or DEFAULT_MODEL
    return Endpoint(parts.scheme, parts.netloc, model)


def _module(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError:
        raise BackendUnavailable("--triton needs tritonclient: pip install 'edgedx[triton]'") from None
    return module


class TritonClassifier:
    """A client of an edgedx ensemble with :class:`edgedx.api.Classifier`'s ``classify_many``.

    Args:
        url: the server and model, see :func:`parse_url`.
        batch_size: files per request (the server's dynamic batcher batches across requests too).
        concurrency: requests in flight.
        threshold: overrides the served manifest's threshold; applied here, on the returned scores.
        timeout_s: per-request network timeout.

    Raises:
        BackendUnavailable: tritonclient missing, the server unreachable, or the model not ready.
        ModelError: the model is not an edgedx ensemble (no manifest in its config).
    """

    def __init__(self, url: str, *, batch_size: int = 8, concurrency: int = 4, threshold: float | None = None,
                 timeout_s: float = 60.0) -> None:
        self.endpoint = parse_url(url)
        self.batch_size, self.concurrency, self.timeout_s = batch_size, max(1, concurrency), timeout_s
        self._tc = _module(self.endpoint.protocol)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        config = self._config()
        params = config.get("parameters", {})
        text = params.get(MANIFEST_PARAMETER, {}).get("string_value")
        if not text:
            raise ModelError(f"{self.endpoint} is not an edgedx ensemble: its config has no {MANIFEST_PARAMETER} parameter")
        self.manifest: Manifest = manifest_mod.from_json(text, f"{self.endpoint} config")
        if threshold is not None and self.manifest.positive_label is None:
            raise UsageError("--threshold applies to binary screening models; the served model has no positive label")
        self.threshold = threshold
        self.max_batch_size = int(config.get("max_batch_size", 0)) or 1
        source = params.get("edgedx_source", {}).get("string_value", "")
        self.model = f"{self.endpoint} ({source})" if source else str(self.endpoint)
        self.backend = f"triton:{params.get('edgedx_variant', {}).get('string_value', '?')}"

    # -- connection -------------------------------------------------------------------------

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.endpoint.protocol == "grpc":
                client = self._tc.InferenceServerClient(self.endpoint.address)
            else:
                client = self._tc.InferenceServerClient(self.endpoint.address, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _config(self) -> dict[str, Any]:
        client = self._client()
        try:
            if not client.is_server_live():
                raise BackendUnavailable(f"Triton at {self.endpoint.address} is not live")
            if not client.is_model_ready(self.endpoint.model):
                raise BackendUnavailable(f"Triton at {self.endpoint.address} has no ready model {self.endpoint.model!r}")
            if self.endpoint.protocol == "grpc":
                return client.get_model_config(self.endpoint.model, as_json=True)["config"]
            return client.get_model_config(self.endpoint.model)
        except EdgedxError:
            raise
        except Exception as exc:  # connection refused, DNS, timeouts: tritonclient raises several types
            raise BackendUnavailable(f"cannot reach Triton at {self.endpoint.protocol}://{self.endpoint.address}: {first_line(exc)}") from None

    # -- classification -----------------------------------------------------------------------

    def classify_many(self, sources: Iterable[str | Path]) -> Iterator[Result]:
        """One result per file, in input order; ``concurrency`` requests of ``batch_size`` files in flight."""
        chunk = max(1, min(self.batch_size, self.max_batch_size))
        window = 2 * self.concurrency
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="edgedx-triton")
        pending: deque[Future[list[Result]]] = deque()
        try:
            group: list[str] = []
            for source in sources:
                group.append(str(source))
                if len(group) == chunk:
                    pending.append(pool.submit(self._request, group))
                    group = []
                    if len(pending) >= window:
                        yield from pending.popleft().result()
            if group:
                pending.append(pool.submit(self._request, group))
            while pending:
                yield from pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _request(self, paths: list[str]) -> list[Result]:
        """Read the files, send the readable ones in one request, and merge the answers in order."""
        data: list[bytes] = []
        read_errors: dict[int, str] = {}
        for i, path in enumerate(paths):
            try:
                data.append(decode.read_file(path))
            except EdgedxError as exc:
                read_errors[i] = str(exc)
        records: Iterator[dict[str, Any]] = iter(())
        if data:
            try:
                records = iter(self._infer(data))
            except Exception as exc:  # the server failed this request: its files get error records
                message = f"triton: {first_line(exc)}"
                records = iter([{"status": "error", "error": message}] * len(data))
        out = []
        for i, path in enumerate(paths):
            rec = {"status": "error", "error": read_errors[i]} if i in read_errors else next(records)
            out.append(self._result(path, rec))
        return out

    def _infer(self, data: list[bytes]) -> list[dict[str, Any]]:
        tc = self._tc
        batch = np.array([[d] for d in data], dtype=np.object_)
        inp = tc.InferInput("IMAGE", list(batch.shape), "BYTES")
        inp.set_data_from_numpy(batch)
        out = [tc.InferRequestedOutput("RECORD")]
        kwargs = {"client_timeout": self.timeout_s} if self.endpoint.protocol == "grpc" else {}
        result = self._client().infer(self.endpoint.model, [inp], outputs=out, **kwargs)
        rows = result.as_numpy("RECORD")
        if rows is None or len(rows) != len(data):
            raise RuntimeError(f"the server returned {0 if rows is None else len(rows)} records for {len(data)} files")
        return [json.loads(bytes(r[0]) if not isinstance(r[0], str) else r[0]) for r in rows]

    def _result(self, path: str, rec: dict[str, Any]) -> Result:
        common = dict(path=path, model=self.model, backend=self.backend)
        status = rec.get("status")
        if status == "error":
            return Result(error=rec.get("error") or "failed on the server", status="error", **common)
        if status == "rejected":
            return Result(status="rejected", reason_code=rec.get("reason_code"), reason=rec.get("reason"), **common)
        scores = rec["scores"]
        if self.threshold is not None:  # the decision again, on the returned scores, at the caller's threshold
            probs = np.array([[scores[label] for label in self.manifest.labels]])
            pred = postprocess.decide(probs, self.manifest, self.threshold)[0]
            return Result(label=pred.label, score=pred.score, scores=pred.scores, threshold=pred.threshold, positive=pred.positive, **common)
        return Result(label=rec["label"], score=rec["score"], scores=scores, threshold=rec.get("threshold"), positive=rec.get("positive"), **common)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def __enter__(self) -> TritonClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: classify options that change what the *server* computes; with --triton they are refused.
LOCAL_ONLY = ("--model", "--backend", "--window", "--all-frames", "--max-pixels", "--labels", "--mean", "--std", "--scale",
              "--resize", "--activation", "--no-gate", "--audit", "--threads", "--no-cuda-graph", "--trust-engine")


def refuse_local_options(given: dict[str, bool]) -> None:
    """Raise UsageError naming the local-inference options given together with --triton."""
    bad = [name for name, used in given.items() if used]
    if bad:
        raise UsageError(f"{', '.join(bad)} apply to local inference; the Triton server's repository fixes them (edgedx export triton)")
