"""The Session protocol every backend implements, and the name -> backend map."""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgedx.errors import BackendError, BackendUnavailable, UsageError
from edgedx.limits import cpu_count  # noqa: F401  (public here too)

if TYPE_CHECKING:
    from edgedx.manifest import Manifest

ENGINE_SUFFIXES = frozenset({".engine", ".plan", ".trt"})


@dataclass(frozen=True)
class BackendEntry:
    target: str  # "module:Class", imported on first use
    requires: tuple[str, ...]  # top-level modules that must be importable
    install_hint: str
    probe: str | None = None  # "module:function" -> None or why the hardware cannot run it
    files: tuple[str, tuple[str, ...]] | None = None  # (what it runs, file suffixes) when it takes only some files


BACKENDS: dict[str, BackendEntry] = {
    "onnxruntime": BackendEntry(
        "edgedx.backends.onnxruntime:OnnxRuntimeSession",
        ("onnxruntime",),
        "pip install onnxruntime (or onnxruntime-gpu)",
    ),
    "openvino": BackendEntry(
        "edgedx.backends.openvino:OpenVinoSession",
        ("openvino",),
        "pip install 'edgedx[openvino]'",
    ),
    "tensorrt": BackendEntry(
        "edgedx.backends.tensorrt:TensorRTSession",
        ("tensorrt|tensorrt_lean", "cuda|pycuda"),
        "pip install 'edgedx[trt]' (TensorRT and cuda-python; on Jetson use JetPack's TensorRT)",
        probe="edgedx.cuda.driver:probe_device",
        files=("TensorRT engines", tuple(sorted(ENGINE_SUFFIXES))),
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
        precision: the inference precision to ask of a backend that chooses one (OpenVINO: "f32",
            the default, or "bf16"). A backend that cannot honour it refuses to open; one that runs
            the file as stored (ONNX Runtime, a TensorRT engine) refuses any.
    """

    threads: int | None = None
    cuda_graph: bool = True
    trust_engine: bool = False
    cuda_binding: str = "auto"
    providers: tuple[str, ...] | None = None
    spin_wait: bool | None = None
    precision: str | None = None


class Session(ABC):
    """A loaded model, ready to run batches. Use as a context manager or call :meth:`close`.

    The protocol every caller relies on, whatever the backend:

    - ``inputs`` / ``outputs``: the model's tensors; ``manifest``: the model's contract as the
      backend read it at open (None when the model carries none);
    - ``slots``: how many batches may be in flight at once (1: :meth:`submit` runs the batch
      before it returns; 2: TensorRT's double buffering);
    - :meth:`input_buffer`, :meth:`submit`, :meth:`wait`, and :meth:`run` (= submit + wait).

    A pipeline fills ``input_buffer(n)``, submits it, and waits when ``slots`` batches are in
    flight; the same loop serves every backend. Subclasses implement ``_open`` and ``_run`` (a
    one-slot backend) or ``_input_buffer``/``_submit``/``_wait`` (a backend with its own slots), and
    optionally ``_close``; the public methods check state and inputs once, here.
    """

    name: ClassVar[str]
    #: True when ``run`` returns a view of a buffer that the next ``run`` overwrites.
    reuses_output_buffers: ClassVar[bool] = False
    #: Batches that may be in flight: ``submit`` may be called this many times before ``wait``.
    slots: ClassVar[int] = 1
    #: Values of ``SessionOptions.precision`` this backend can be asked for (none: it runs the file as stored).
    precisions: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model_path: str | Path, options: SessionOptions | None = None) -> None:
        self.model_path = Path(model_path)
        self.options = options or SessionOptions()
        self._closed = True
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        #: The model's contract as read at open (ONNX metadata or the engine's sidecar); None when absent.
        self.manifest: Manifest | None = None
        self._in_flight = 0
        self._buffer: np.ndarray | None = None
        self._outputs: deque[tuple[np.ndarray, dict[str, np.ndarray]]] = deque()
        #: Extra graph outputs fetched with every batch (:meth:`request_outputs`).
        self.extra_outputs: tuple[str, ...] = ()
        #: The extra outputs of the batch the last :meth:`wait` returned (name -> (N, ...) float32).
        self.last_extras: dict[str, np.ndarray] = {}
        if self.options.precision is not None and self.options.precision not in self.precisions:
            offered = f"choose {', '.join(self.precisions)}" if self.precisions else "it runs the model file as stored"
            raise UsageError(f"backend {self.name} cannot be asked for {self.options.precision} inference precision: {offered}")
        self._open()
        self._closed = False

    @property
    def max_batch_size(self) -> int | None:
        """The largest batch this session accepts; None when unbounded."""
        return None

    @property
    def pending(self) -> int:
        """Batches submitted and not yet waited for (at most ``slots``)."""
        return self._in_flight

    @property
    def precision(self) -> str | None:
        """The precision inference runs in when the backend chooses one (``describe()["precision"]``)."""
        value = self.describe().get("precision")
        return None if value is None else str(value)

    def last_timings(self) -> dict[str, float]:
        """Milliseconds per stage of the last ``run`` that the backend measured itself
        (TensorRT: ``h2d``, ``compute``, ``d2h`` from CUDA events); empty when it measures none."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What actually runs (providers, device, precision), for reports and results."""
        return {"backend": self.name}

    def input_buffer(self, batch_size: int) -> np.ndarray:
        """A float32 (N, ...) buffer to preprocess ``batch_size`` samples into, then :meth:`submit`.

        The buffer belongs to the session: it is valid until the next :meth:`submit` (whose batch
        may be this buffer: then nothing is copied) and never after :meth:`close`. Ask again for
        every batch; do not keep it. TensorRT hands out the free slot's pinned memory.

        Raises:
            UsageError: the session is closed, the batch size is out of range, or every slot is busy.
        """
        self._check_open()
        if batch_size < 1:
            raise UsageError(f"batch size must be >= 1, got {batch_size}")
        return self._input_buffer(batch_size)

    def submit(self, batch: np.ndarray) -> None:
        """Start one batch (N, ...); its output comes from :meth:`wait`, in submission order.

        With one slot the batch runs before this returns; with more, it is queued and this returns
        at once. At most ``slots`` batches may be pending.

        Raises:
            UsageError: closed session, wrong shape, or ``slots`` batches already pending.
            BackendError: the backend failed on this batch (it is not pending then).
        """
        self._check_open()
        if batch.ndim != len(self.inputs[0].shape):
            raise UsageError(f"input must be {len(self.inputs[0].shape)}-D, got shape {batch.shape}")
        if self._in_flight >= self.slots:
            raise UsageError(f"{self._in_flight} batches already submitted: call wait() first")
        try:
            self._submit(batch)
        except (UsageError, BackendError):
            raise
        except Exception as exc:  # a backend's own exception types vary
            raise BackendError(f"{self.name} failed on a batch of {batch.shape[0]}: {exc}") from exc
        self._in_flight += 1

    def wait(self) -> np.ndarray:
        """The oldest pending batch's first output (N, K) as a new float32 array.

        Raises:
            UsageError: closed session, or no batch pending.
            BackendError: the backend failed on that batch (it is no longer pending).
        """
        self._check_open()
        if self._in_flight == 0:
            raise UsageError("no batch submitted: call submit() first")
        try:
            return self._wait()
        except (UsageError, BackendError):
            raise
        except Exception as exc:
            raise BackendError(f"{self.name} failed while finishing a batch: {exc}") from exc
        finally:
            self._in_flight -= 1

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (N, ...) and return the first output (N, K) as float32: submit, then wait.

        Raises:
            UsageError: closed session, bad shape, too large a batch, or batches still pending.
            BackendError: the backend failed on this batch.
        """
        self._check_open()
        if self._in_flight:
            raise UsageError("run() with submitted batches pending: wait() for them first")
        self._check_limit(batch.shape[0] if batch.ndim else 0)
        self.submit(batch)
        return self.wait()

    @property
    def supports_extra_outputs(self) -> bool:
        """Whether :meth:`request_outputs` can add graph outputs on this backend."""
        return type(self)._run_with is not Session._run_with

    def request_outputs(self, names: tuple[str, ...]) -> None:
        """Fetch these graph outputs too (penultimate features, class-activation maps) with every
        batch from now on; after each :meth:`wait`, :attr:`last_extras` holds that batch's rows.

        Raises:
            BackendError: the backend cannot return extra outputs.
        """
        self._check_open()
        if names and not self.supports_extra_outputs:
            raise BackendError(f"the {self.name} backend does not return extra outputs ({', '.join(names)}) yet")
        self.extra_outputs = tuple(names)

    def run_with(self, batch: np.ndarray, names: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """:meth:`run`, plus the named extra outputs of this batch (the outputs requested for every
        batch stay as they were).

        Raises:
            BackendError: the backend cannot return extra outputs, or failed on this batch.
        """
        previous = self.extra_outputs
        self.request_outputs(tuple(dict.fromkeys((*previous, *names))))
        try:
            raw = self.run(batch)
            return raw, {n: self.last_extras[n] for n in names}
        finally:
            self.extra_outputs = previous

    def _run_with(self, batch: np.ndarray, names: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One-slot backends that can fetch extra outputs implement this (first output, named extras)."""
        raise BackendError(f"the {self.name} backend does not return extra outputs ({', '.join(names)}) yet")

    def close(self) -> None:
        """Release the model and every buffer handed out; later calls raise :class:`UsageError`."""
        if not self._closed:
            self._closed = True
            self._buffer = None
            self._outputs.clear()
            self._in_flight = 0
            self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what a backend implements ----------------------------------------------------------

    @abstractmethod
    def _open(self) -> None:
        """Load the model, fill ``inputs``/``outputs`` and ``manifest``; raise ModelError or BackendUnavailable."""

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch synchronously (one-slot backends implement this)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _run nor _submit/_wait")

    def _input_buffer(self, batch_size: int) -> np.ndarray:
        """One-slot default: one float32 buffer, grown when a larger batch is asked for."""
        self._check_limit(batch_size)
        row = tuple(d if isinstance(d, int) else 1 for d in self.inputs[0].shape[1:])
        if self._buffer is None or self._buffer.shape[0] < batch_size:
            self._buffer = np.empty((batch_size, *row), np.float32)
        return self._buffer[:batch_size]

    def _submit(self, batch: np.ndarray) -> None:
        """One-slot default: run now, keep the output (and any extra outputs) for :meth:`_wait`."""
        self._check_limit(batch.shape[0])
        if self.extra_outputs:
            self._outputs.append(self._run_with(batch, self.extra_outputs))
        else:
            self._outputs.append((self._run(batch), {}))

    def _wait(self) -> np.ndarray:
        raw, self.last_extras = self._outputs.popleft()
        return raw

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    # -- checks ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"{self.name} session for {self.model_path.name} is closed")

    def _check_limit(self, batch_size: int) -> None:
        limit = self.max_batch_size
        if limit is not None and batch_size > limit:
            raise UsageError(f"batch of {batch_size} exceeds this model's maximum batch {limit}")


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


def require_backend(name: str) -> None:
    """Check that backend ``name``, asked for by name, can run on this machine.

    Raises:
        BackendUnavailable: its packages are missing or its hardware probe fails (no CUDA device).
    """
    entry = BACKENDS[name]
    missing = missing_requirements(name)
    if missing:
        raise BackendUnavailable(f"backend {name} is not available: missing {', '.join(missing)}; install with: {entry.install_hint}")
    if entry.probe is not None:
        module, _, func = entry.probe.partition(":")
        why = getattr(importlib.import_module(module), func)()
        if why:
            raise BackendUnavailable(f"backend {name} cannot run here: {why}")


def check_model_file(model_path: str | Path, name: str) -> None:
    """Refuse a file that backend ``name`` does not run (an ONNX model given to TensorRT).

    Raises:
        UsageError: naming what the backend runs and what to do instead.
    """
    files = BACKENDS[name].files
    path = Path(model_path)
    if files is not None and path.suffix.lower() not in files[1]:
        what, suffixes = files
        hint = f"build one with `edgedx export engine {path.name}`, or " if path.suffix.lower() == ".onnx" and name == "tensorrt" else ""
        raise UsageError(f"--backend {name} runs {what} ({', '.join(suffixes)}); {path.name} is not one: {hint}use --backend auto")


def open_session(model_path: str | Path, backend: str = "auto", options: SessionOptions | None = None) -> Session:
    """Open ``model_path`` on ``backend``; a backend asked for by name is checked first (exit code 3
    when it cannot run here, 2 when it does not take this kind of file)."""
    name = resolve_backend(model_path, backend)
    if backend != "auto":
        require_backend(name)
        check_model_file(model_path, name)
    return session_class(name)(model_path, options)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
