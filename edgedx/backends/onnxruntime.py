"""ONNX Runtime backend: the CPU path, and onnxruntime-gpu's CUDA/TensorRT providers when they really run."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnxruntime as ort

from edgedx import manifest as manifest_mod
from edgedx import onnxfile
from edgedx.backends.base import Session, TensorSpec, cpu_count
from edgedx.errors import BackendUnavailable, ModelError, first_line

log = logging.getLogger("edgedx")

_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64", "tensor(uint8)": "uint8"}
#: Input element types edgedx can feed (the batch is float32, cast to the model's type).
_IMAGE_DTYPES = frozenset({"float32", "float16", "float64", "uint8"})
_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"


class OnnxRuntimeSession(Session):
    """One ``InferenceSession`` with all graph optimizations, reused for every batch."""

    name = "onnxruntime"
    reuses_output_buffers = False

    def _open(self) -> None:
        # A clear ModelError for files that are not ONNX; the manifest comes from the same read.
        self.manifest = manifest_mod.load(self.model_path, onnxfile.read_metadata(self.model_path))
        onnxfile.check_external_data(self.model_path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = self.options.threads or cpu_count()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        if self.options.spin_wait is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options.spin_wait else "0")
        available = ort.get_available_providers()
        # Unasked, use onnxruntime-gpu's CUDA provider where this ONNX Runtime has one; what really
        # runs is read back below. (The TensorRT provider builds engines at start-up: ask for it.)
        requested = list(self.options.providers or ([_CUDA] if _CUDA in available else []) + [_CPU])
        unknown = [p for p in requested if p not in available]
        if unknown:
            raise BackendUnavailable(
                f"ONNX Runtime here has no {', '.join(unknown)} (it has {', '.join(ort.get_available_providers())}); "
                "install onnxruntime-gpu for CUDA/TensorRT providers"
            )
        if _CPU not in requested:
            requested.append(_CPU)
        try:
            self._sess = ort.InferenceSession(str(self.model_path), sess_options=opts, providers=requested)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
            raise ModelError(f"ONNX Runtime cannot load {self.model_path}: {first_line(exc)}") from None
        # ORT silently drops a GPU provider whose libraries are missing: report what really runs.
        self.providers = self._sess.get_providers()
        dropped = [p for p in requested if p not in self.providers]
        if dropped:
            log.warning("ONNX Runtime could not use %s; running on %s", ", ".join(dropped), ", ".join(self.providers))
        self.inputs = [_spec(x) for x in self._sess.get_inputs()]
        self.outputs = [_spec(x) for x in self._sess.get_outputs()]
        if len(self.inputs) != 1:
            raise ModelError(f"{self.model_path.name} has {len(self.inputs)} inputs; edgedx serves single-input image models")
        if not self.outputs:
            raise ModelError(f"{self.model_path.name} has no outputs: nothing to read scores from")
        if self.inputs[0].dtype not in _IMAGE_DTYPES:
            raise ModelError(
                f"{self.model_path.name}'s input {self.inputs[0].name} is {self.inputs[0].dtype}; "
                f"edgedx feeds images as {', '.join(sorted(_IMAGE_DTYPES))}"
            )
        self._input_name = self.inputs[0].name
        self._input_dtype = np.dtype(self.inputs[0].dtype)
        self._output_names = [self.outputs[0].name]
        fixed_batch = self.inputs[0].shape[0]
        self._max_batch = fixed_batch if isinstance(fixed_batch, int) else None

    @property
    def max_batch_size(self) -> int | None:
        return self._max_batch

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "providers": list(self.providers), "onnxruntime": ort.__version__}

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != self._input_dtype:
            batch = batch.astype(self._input_dtype)
        out = self._sess.run(self._output_names, {self._input_name: batch})[0]
        return out.astype(np.float32, copy=False)

    def _run_with(self, batch: np.ndarray, names: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if batch.dtype != self._input_dtype:
            batch = batch.astype(self._input_dtype)
        outs = self._sess.run([*self._output_names, *names], {self._input_name: batch})
        return outs[0].astype(np.float32, copy=False), {n: o.astype(np.float32, copy=False) for n, o in zip(names, outs[1:])}

    def _close(self) -> None:
        del self._sess


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, shape, _DTYPES.get(arg.type, arg.type))

