"""OpenVINO backend: the same ONNX file and manifest, run by OpenVINO's CPU plugin.

Precision: OpenVINO's CPU plugin runs float layers in bf16 by default on CPUs that have it (scores
move by about 1e-2 on chest X-rays). This backend asks for f32 inference precision unless the user
asks for bf16 (``SessionOptions.precision``), checks what the compiled model reports, refuses a
precision it cannot honour instead of running another, and reports the one that runs
(``describe()["precision"]``, so every record carries it).

Shapes: OpenVINO runs a static shape faster than a dynamic one. The model is compiled for each
batch size the first time that size runs (batch 1 at open, so a model OpenVINO cannot compile is
refused before any input is read) and kept, up to :data:`MAX_COMPILED` sizes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

import numpy as np
import openvino as ov

from edgedx import manifest as manifest_mod
from edgedx import onnxfile
from edgedx.backends.base import Session, TensorSpec, cpu_count
from edgedx.errors import BackendError, BackendUnavailable, ModelError, first_line

#: Batch sizes kept compiled at once (a pipeline uses its batch size and one smaller last batch).
MAX_COMPILED = 4
#: SessionOptions.precision -> OpenVINO's INFERENCE_PRECISION_HINT.
PRECISIONS = {"f32": "f32", "bf16": "bf16"}


class OpenVinoSession(Session):
    """One compiled model (and infer request) per batch size on the CPU plugin."""

    name = "openvino"
    reuses_output_buffers = False
    precisions: ClassVar[tuple[str, ...]] = tuple(PRECISIONS)

    def _open(self) -> None:
        metadata = onnxfile.read_metadata(self.model_path)  # a clear ModelError for files that are not ONNX
        onnxfile.check_external_data(self.model_path)
        self.manifest = manifest_mod.load(self.model_path, metadata)
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(self.model_path))
        except Exception as exc:  # OpenVINO raises RuntimeError with pages of detail
            raise ModelError(f"OpenVINO cannot read {self.model_path}: {first_line(exc)}") from None
        if len(self._model.inputs) != 1:
            raise ModelError(f"{self.model_path.name} has {len(self._model.inputs)} inputs; edgedx serves single-input image models")
        self.inputs = [_spec(self._model.inputs[0])]
        self.outputs = [_spec(o) for o in self._model.outputs]
        fixed = self.inputs[0].shape[0]
        self._fixed_batch = fixed if isinstance(fixed, int) else None
        self._requested = self.options.precision or "f32"
        self._threads = self.options.threads or cpu_count()
        self._compiled: OrderedDict[int, tuple[Any, Any]] = OrderedDict()
        self._ran = self._compile(self._fixed_batch or 1)

    @property
    def max_batch_size(self) -> int | None:
        return self._fixed_batch

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "openvino": ov.__version__,
            "device": "CPU",
            "precision": self._ran,
            "precision_requested": self._requested,
            "threads": self._threads,
            "compiled_batches": list(self._compiled),
        }

    def _run(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        _, request = self._request_for(n)
        if batch.dtype != np.float32 or not batch.flags.c_contiguous:
            batch = np.ascontiguousarray(batch, np.float32)
        request.infer({0: batch}, share_inputs=True)
        return np.array(request.get_output_tensor(0).data, np.float32, copy=True)

    def _run_with(self, batch: np.ndarray, names: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        first = self._run(batch)  # the request keeps every output of this inference
        _, request = self._request_for(batch.shape[0])
        index = {o.get_any_name(): i for i, o in enumerate(self._model.outputs)}
        missing = [n for n in names if n not in index]
        if missing:
            raise BackendError(f"{self.model_path.name} has no output named {', '.join(missing)}")
        return first, {n: np.array(request.get_output_tensor(index[n]).data, np.float32, copy=True) for n in names}

    def _close(self) -> None:
        self._compiled.clear()
        del self._model, self._core

    # -- internals --------------------------------------------------------------------------

    def _request_for(self, n: int) -> tuple[Any, Any]:
        if self._fixed_batch is not None:
            n = self._fixed_batch
        if n not in self._compiled:
            self._compile(n)
        self._compiled.move_to_end(n)
        return self._compiled[n]

    def _compile(self, n: int) -> str:
        """Compile the model for batch ``n``; returns the inference precision OpenVINO reports.

        Raises:
            BackendUnavailable: OpenVINO would run another precision than the one asked for.
            ModelError: OpenVINO cannot compile the model.
        """
        model = self._model.clone()
        shape = [n, *(d if isinstance(d, int) else -1 for d in self.inputs[0].shape[1:])]
        config = {
            "INFERENCE_PRECISION_HINT": PRECISIONS[self._requested],
            "INFERENCE_NUM_THREADS": self._threads,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        try:
            model.reshape({model.inputs[0]: ov.PartialShape(shape)})
            compiled = self._core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise ModelError(f"OpenVINO cannot compile {self.model_path.name} for batch {n}: {first_line(exc)}") from None
        ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if ran != PRECISIONS[self._requested]:
            raise BackendUnavailable(
                f"OpenVINO on this CPU runs {ran}, not the {self._requested} inference precision asked for "
                f"(bf16 needs AVX512-BF16 or AMX); ask for f32"
            )
        self._compiled[n] = (compiled, compiled.create_infer_request())
        while len(self._compiled) > MAX_COMPILED:
            self._compiled.popitem(last=False)
        return ran


def _spec(port: Any) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorSpec(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()).name)
