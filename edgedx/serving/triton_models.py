"""The Python-backend models of an edgedx Triton repository (see :mod:`export.triton`).

Each generated ``model.py`` is one line, ``from edgedx.serving.triton_models import X as
TritonPythonModel``, so the served code is the installed edgedx, not a copy. Triton's
``triton_python_backend_utils`` exists only inside its Python-backend stub; it is imported in
``initialize``. Every step reads the edgedx manifest from its own ``config.pbtxt`` parameters.

Tensor names (shared with :mod:`export.triton`):
    preprocess  IMAGE (BYTES [1]) -> INPUT (the model's input dims), STATUS (BYTES [1])
    model       the model's own input and output names
    postprocess LOGITS (the model's output dims), STATUS -> RECORD (BYTES [1], one JSON object)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgedx import manifest as manifest_mod
from edgedx.serving import stages

MANIFEST_PARAMETER = "edgedx_manifest"
MODEL_FILE_PARAMETER = "edgedx_model_file"
IMAGE, INPUT, STATUS, LOGITS, RECORD = "IMAGE", "INPUT", "STATUS", "LOGITS", "RECORD"


class _Step:
    """What every step shares: the config, the manifest, and Triton's utilities module."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton's Python backend stub

        self.pb = pb_utils
        self.config = json.loads(args["model_config"])
        self.params = {k: v.get("string_value", "") for k, v in self.config.get("parameters", {}).items()}
        self.manifest = manifest_mod.from_json(self.params[MANIFEST_PARAMETER], f"{self.config['name']}/config.pbtxt")
        self.directory = Path(args["model_repository"]) / str(args["model_version"])

    def execute(self, requests: list[Any]) -> list[Any]:
        out = []
        for request in requests:
            try:
                out.append(self.pb.InferenceResponse(output_tensors=self.run(request)))
            except Exception as exc:  # noqa: BLE001 - a response with the error, never a dead stub
                out.append(self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(f"{type(exc).__name__}: {exc}")))
        return out

    def run(self, request: Any) -> list[Any]:
        raise NotImplementedError

    def input(self, request: Any, name: str) -> np.ndarray:
        return self.pb.get_input_tensor_by_name(request, name).as_numpy()

    def finalize(self) -> None:
        pass


class PreprocessModel(_Step):
    """File bytes -> the model's input, with edgedx's decode, gate and preprocess; a status beside it."""

    def initialize(self, args: dict[str, str]) -> None:
        super().initialize(args)
        self.use_gate = self.params.get("edgedx_gate", "true") == "true"
        self.options = stages.decode_options(self.manifest, use_gate=self.use_gate)
        self.plan = stages.layout_plan(self.manifest)

    def run(self, request: Any) -> list[Any]:
        files = self.input(request, IMAGE)  # (batch, 1) object array of bytes
        prepared = [stages.prepare(bytes(row[0]), self.manifest, self.options, self.use_gate, self.plan) for row in files]
        samples = np.stack([p.sample for p in prepared])
        statuses = np.array([[p.status.encode()] for p in prepared], dtype=np.object_)
        return [self.pb.Tensor(INPUT, samples), self.pb.Tensor(STATUS, statuses)]


class SessionModel(_Step):
    """The model itself on edgedx's own session (the ``--backend python`` repository).

    Requests that Triton's dynamic batcher hands over together run as one batch.
    """

    def initialize(self, args: dict[str, str]) -> None:
        super().initialize(args)
        from edgedx.backends import SessionOptions, open_session

        self.session = open_session(self.directory / self.params[MODEL_FILE_PARAMETER], "auto", SessionOptions())
        self.input_name = self.config["input"][0]["name"]
        self.output_name = self.config["output"][0]["name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            arrays = [self.input(r, self.input_name) for r in requests]
            limit = self.session.max_batch_size or sum(len(a) for a in arrays)
            batch = np.concatenate(arrays).astype(np.float32, copy=False)
            raw = np.concatenate([np.array(self.session.run(batch[i : i + limit]), np.float32) for i in range(0, len(batch), limit)])
        except Exception as exc:  # noqa: BLE001
            error = self.pb.TritonError(f"{type(exc).__name__}: {exc}")
            return [self.pb.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        out, start = [], 0
        for a in arrays:
            rows = raw[start : start + len(a)].reshape(len(a), *self._dims())
            out.append(self.pb.InferenceResponse(output_tensors=[self.pb.Tensor(self.output_name, rows)]))
            start += len(a)
        return out

    def _dims(self) -> list[int]:
        return [int(d) for d in self.config["output"][0]["dims"]]

    def finalize(self) -> None:
        self.session.close()


class PostprocessModel(_Step):
    """Logits and the carried status -> one edgedx record (JSON) per input."""

    def run(self, request: Any) -> list[Any]:
        raw = self.input(request, LOGITS)
        statuses = [bytes(row[0]).decode() for row in self.input(request, STATUS)]
        recs = stages.records(raw.reshape(raw.shape[0], -1), statuses, self.manifest)
        return [self.pb.Tensor(RECORD, np.array([[json.dumps(r).encode()] for r in recs], dtype=np.object_))]
