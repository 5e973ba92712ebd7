"""The Session protocol every backend implements, and the name -> backend map."""

from __future__ import annotations

import importlib
import importlib.util
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgedx.errors import BackendError, BackendUnavailable, UsageError

ENGINE_SUFFIXES = frozenset({".engine", ".plan", ".trt"})


@dataclass(frozen=True)
class BackendEntry:
    target: str  # "module:Class", imported on first use
    requires: tuple[str, ...]  # top-level modules that must be importable
    install_hint: str
    probe: str | None = None  # "module:function" -> None or why the hardware cannot run it


BACKENDS: dict[str, BackendEntry] = {
    "onnxruntime": BackendEntry(
        "edgedx.backends.onnxruntime:OnnxRuntimeSession",
        ("onnxruntime",),
        "pip install onnxruntime (or onnxruntime-gpu)",
    ),
    "tensorrt": BackendEntry(
        "edgedx.backends.tensorrt:TensorRTSession",
        ("tensorrt|tensorrt_lean", "cuda|pycuda"),
        "pip install 'edgedx[trt]' (TensorRT and cuda-python; on Jetson use JetPack's TensorRT)",
        probe="edgedx.cuda.driver:probe_device",
    ),
}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: ``shape`` holds None (or a name) for dynamic dimensions."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str


@dataclass(frozen=True)
class SessionOptions:
    """Backend options; each backend reads the ones that apply to it.

    Args:
        threads: CPU threads for inference; None picks the cores this process may use.
        cuda_graph: capture the TensorRT enqueue in a CUDA graph for fixed shapes.
        trust_engine: allow TensorRT engines that carry host code (version-compatible ones).
        cuda_binding: "auto", "cuda-python" or "pycuda".
        providers: ONNX Runtime execution providers to ask for; None picks the CPU provider.
        spin_wait: let CPU inference threads spin between parallel sections. Fastest when inference
            runs alone; it steals the cores from decode threads running beside it. None: the
            backend's default (the Classifier decides: off when it has decode workers).
    """

    threads: int | None = None
    cuda_graph: bool = True
    trust_engine: bool = False
    cuda_binding: str = "auto"
    providers: tuple[str, ...] | None = None
    spin_wait: bool | None = None


def cpu_count() -> int:
    """Cores this process may run on (honours affinity masks and containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class Session(ABC):
    """A loaded model, ready to run batches. Use as a context manager or call :meth:`close`.

    Subclasses implement ``_open``, ``_run`` and ``_close``; the public methods check state and
    inputs once, here.
    """

    name: ClassVar[str]
    #: True when ``run`` returns a view of a buffer that the next ``run`` overwrites.
    reuses_output_buffers: ClassVar[bool] = False
    #: True when the session also offers ``submit(batch)`` / ``wait()`` with two batches in flight,
    #: so the host can fill the next batch while the device runs the previous one.
    overlapped: ClassVar[bool] = False

    def __init__(self, model_path: str | Path, options: SessionOptions | None = None) -> None:
        self.model_path = Path(model_path)
        self.options = options or SessionOptions()
        self._closed = True
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self._open()
        self._closed = False

    @property
    def max_batch_size(self) -> int | None:
        """The largest batch this session accepts; None when unbounded."""
        return None

    def last_timings(self) -> dict[str, float]:
        """Milliseconds per stage of the last ``run`` that the backend measured itself
        (TensorRT: ``h2d``, ``compute``, ``d2h`` from CUDA events); empty when it measures none."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What actually runs (providers, device, precision), for reports and results."""
        return {"backend": self.name}

    def input_buffer(self, batch_size: int) -> np.ndarray:
        """A float32 buffer to preprocess ``batch_size`` images into; TensorRT hands out pinned memory."""
        shape = [batch_size, *(d if isinstance(d, int) else 1 for d in self.inputs[0].shape[1:])]
        return np.empty(shape, np.float32)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (N, ...) and return the first output (N, K) as float32.

        Raises:
            BackendError: the backend failed on this batch.
        """
        if self._closed:
            raise UsageError(f"{self.name} session for {self.model_path.name} is closed")
        if batch.ndim != len(self.inputs[0].shape):
            raise UsageError(f"input must be {len(self.inputs[0].shape)}-D, got shape {batch.shape}")
        limit = self.max_batch_size
        if limit is not None and batch.shape[0] > limit:
            raise UsageError(f"batch of {batch.shape[0]} exceeds this model's maximum batch {limit}")
        try:
            return self._run(batch)
        except (UsageError, BackendError):
            raise
        except Exception as exc:  # a backend's own exception types vary
            raise BackendError(f"{self.name} failed on a batch of {batch.shape[0]}: {exc}") from exc

    @property
    def supports_extra_outputs(self) -> bool:
        """Whether :meth:`run_with` can return extra graph outputs on this backend."""
        return type(self)._run_with is not Session._run_with

    def run_with(self, batch: np.ndarray, names: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Run one batch: the first output as :meth:`run` gives it, and the named extra outputs
        (penultimate features, class-activation maps) as float32 arrays.

        Raises:
            BackendError: the backend failed, or cannot return extra outputs.
        """
        if not names:
            return self.run(batch), {}
        if self._closed:
            raise UsageError(f"{self.name} session for {self.model_path.name} is closed")
        try:
            return self._run_with(batch, names)
        except (UsageError, BackendError):
            raise
        except Exception as exc:
            raise BackendError(f"{self.name} failed on a batch of {batch.shape[0]}: {exc}") from exc

    def _run_with(self, batch: np.ndarray, names: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        raise BackendError(f"the {self.name} backend does not return extra outputs ({', '.join(names)}) yet")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abstractmethod
    def _open(self) -> None:
        """Load the model, fill ``inputs``/``outputs``; raise ModelError or BackendUnavailable."""

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray: ...

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


def resolve_backend(model_path: str | Path, backend: str = "auto") -> str:
    """The backend name that runs ``model_path``: auto picks TensorRT for engine files."""
    if backend == "auto":
        return "tensorrt" if Path(model_path).suffix.lower() in ENGINE_SUFFIXES else "onnxruntime"
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}: choose auto, {', '.join(BACKENDS)}")
    return backend


def missing_requirements(name: str) -> list[str]:
    """Requirements of backend ``name`` that are not importable here (alternatives split by '|')."""
    missing = []
    for alternatives in BACKENDS[name].requires:
        if not any(_importable(mod) for mod in alternatives.split("|")):
            missing.append(alternatives.replace("|", " or "))
    return missing


def available_backends() -> dict[str, str | None]:
    """Backend name -> None when it can run here, else why not (missing packages, no device)."""
    out: dict[str, str | None] = {}
    for name, entry in BACKENDS.items():
        missing = missing_requirements(name)
        if missing:
            out[name] = f"missing {', '.join(missing)}"
        elif entry.probe is not None:
            module, _, func = entry.probe.partition(":")
            out[name] = getattr(importlib.import_module(module), func)()
        else:
            out[name] = None
    return out


def session_class(name: str) -> type[Session]:
    """Import and return the Session class of backend ``name``.

    Raises:
        BackendUnavailable: its packages are not installed; the message says what to install.
    """
    entry = BACKENDS[name]
    missing = missing_requirements(name)
    if missing:
        raise BackendUnavailable(f"backend {name} is not available: missing {', '.join(missing)}; install with: {entry.install_hint}")
    module, _, cls = entry.target.partition(":")
    return getattr(importlib.import_module(module), cls)


def open_session(model_path: str | Path, backend: str = "auto", options: SessionOptions | None = None) -> Session:
    return session_class(resolve_backend(model_path, backend))(model_path, options)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
