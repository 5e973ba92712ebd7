"""One small CUDA interface, two thin drivers (cuda-python, pycuda), and an owner that frees in order.

Handles are opaque to callers except where TensorRT needs an integer (``stream_handle``). Device
memory and pinned host memory are plain integer addresses. Every driver call is checked and
failures raise :class:`CudaError` carrying the CUDA error name.

Nothing here imports ``cuda`` or ``pycuda`` at module level: :func:`open_driver` imports the chosen
binding's module when it runs.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgedx.errors import BackendError, BackendUnavailable, EdgedxError, UsageError

log = logging.getLogger("edgedx")

#: binding name -> (module that implements the driver, module that must be importable, install hint)
BINDINGS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "cuda-python": ("edgedx.cuda.cuda_python:CudaPythonDriver", ("cuda.bindings", "cuda.cudart"), "pip install cuda-python"),
    "pycuda": ("edgedx.cuda.pycuda_driver:PyCudaDriver", ("pycuda",), "pip install pycuda"),
}
#: ``auto`` tries these in order.
PREFERENCE = ("cuda-python", "pycuda")

#: Errors that mean "this machine has no usable CUDA device", not "a call went wrong".
NO_DEVICE_ERRORS = frozenset(
    {"cudaErrorNoDevice", "cudaErrorInsufficientDriver", "cudaErrorInitializationError", "cudaErrorSystemDriverMismatch",
     "cudaErrorCompatNotSupportedOnDevice", "cudaErrorDevicesUnavailable", "cudaErrorStubLibrary"}
)

#: CUDA's error strings (``cuGetErrorString``, what pycuda reports) -> the runtime's error names,
#: so both bindings raise :class:`CudaError` with the same ``name``.
ERROR_STRINGS = {
    "no CUDA-capable device is detected": "cudaErrorNoDevice",
    "CUDA driver version is insufficient for CUDA runtime version": "cudaErrorInsufficientDriver",
    "initialization error": "cudaErrorInitializationError",
    "system has unsupported display driver / cuda driver combination": "cudaErrorSystemDriverMismatch",
    "forward compatibility was attempted on non supported HW": "cudaErrorCompatNotSupportedOnDevice",
    "CUDA-capable device(s) is/are busy or unavailable": "cudaErrorDevicesUnavailable",
    "out of memory": "cudaErrorMemoryAllocation",
    "invalid argument": "cudaErrorInvalidValue",
    "invalid device ordinal": "cudaErrorInvalidDevice",
    "an illegal memory access was encountered": "cudaErrorIllegalAddress",
    "unspecified launch failure": "cudaErrorLaunchFailure",
    "operation not permitted when stream is capturing": "cudaErrorStreamCaptureUnsupported",
    "operation would make the legacy stream depend on a capturing blocking stream": "cudaErrorStreamCaptureImplicit",
    "invalid resource handle": "cudaErrorInvalidResourceHandle",
}


def error_name_for(text: str) -> str:
    """The ``cudaError*`` name for a CUDA error string (pycuda's ``cuX failed: <string>``), else the text."""
    message = text.split(": ", 1)[-1].strip()
    for known, name in ERROR_STRINGS.items():
        if message.lower().startswith(known.lower()):
            return name
    return message or text


def cuda_version_text(version: int) -> str:
    """``12040`` -> ``"12.4"`` (CUDA's ``1000 * major + 10 * minor``)."""
    return f"{version // 1000}.{version % 1000 // 10}"


def driver_mismatch(driver_version: int, runtime_version: int) -> str | None:
    """Why CUDA cannot start when the driver is older than the CUDA runtime the binding was built
    for (``cudaDriverGetVersion`` vs ``cudaRuntimeGetVersion``), with what to install; None when it is not that.
    """
    if driver_version <= 0:
        return "no NVIDIA driver is installed (cudaDriverGetVersion: 0)"
    if driver_version >= runtime_version:
        return None
    have, need = cuda_version_text(driver_version), cuda_version_text(runtime_version)
    major = driver_version // 1000
    extra = "pip install 'edgedx[cuda12]'" if major == 12 else f"pip install 'cuda-python=={major}.*'"
    return (
        f"the NVIDIA driver supports CUDA {have} but the CUDA runtime here is {need}: install the CUDA Python "
        f"binding for CUDA {major} ({extra}), or update the NVIDIA driver to one for CUDA {runtime_version // 1000}"
    )


class CudaError(BackendError):
    """A CUDA call failed. ``name`` is the CUDA error name (``cudaErrorMemoryAllocation``...)."""

    def __init__(self, call: str, name: str, detail: str = "") -> None:
        self.call = call
        self.name = name
        super().__init__(f"{call} failed: {name}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory: int

    @property
    def sm(self) -> str:
        """``"8.7"``: the compute capability as TensorRT and the sidecar write it."""
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


class CudaDriver(ABC):
    """What edgedx needs from CUDA. Subclasses wrap one Python binding; use :func:`open_driver`.

    Call :meth:`close` (or use ``with``) when done; it releases the driver's context, not the
    allocations (those belong to a :class:`Resources`).
    """

    name: ClassVar[str]
    #: False when the binding cannot capture CUDA graphs (pycuda has no graph API).
    supports_graphs: ClassVar[bool] = True

    # devices
    @abstractmethod
    def probe(self) -> tuple[int, str | None]:
        """``(device_count, reason)``: reason says why the count is 0 (no driver, no device)."""

    @abstractmethod
    def device_info(self, device: int = 0) -> DeviceInfo: ...

    @abstractmethod
    def set_device(self, device: int) -> None: ...

    # memory
    @abstractmethod
    def malloc_host(self, nbytes: int) -> int:
        """Pinned (page-locked) host memory."""

    @abstractmethod
    def free_host(self, ptr: int) -> None: ...

    @abstractmethod
    def malloc(self, nbytes: int) -> int: ...

    @abstractmethod
    def free(self, ptr: int) -> None: ...

    @abstractmethod
    def memcpy_htod_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None: ...

    @abstractmethod
    def memcpy_dtoh_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None: ...

    # streams and events
    @abstractmethod
    def stream_create(self) -> Any: ...

    @abstractmethod
    def stream_handle(self, stream: Any) -> int:
        """The ``cudaStream_t`` as an integer, for TensorRT's ``execute_async_v3``."""

    @abstractmethod
    def stream_synchronize(self, stream: Any) -> None: ...

    @abstractmethod
    def stream_destroy(self, stream: Any) -> None: ...

    @abstractmethod
    def event_create(self) -> Any: ...

    @abstractmethod
    def event_record(self, event: Any, stream: Any) -> None: ...

    @abstractmethod
    def event_synchronize(self, event: Any) -> None: ...

    @abstractmethod
    def event_elapsed_ms(self, start: Any, end: Any) -> float: ...

    @abstractmethod
    def event_destroy(self, event: Any) -> None: ...

    # graphs (only called when ``supports_graphs``)
    def graph_begin_capture(self, stream: Any) -> None:
        raise CudaError("cudaStreamBeginCapture", "notSupported", f"the {self.name} binding cannot capture graphs")

    def graph_end_capture(self, stream: Any) -> Any:
        raise CudaError("cudaStreamEndCapture", "notSupported", f"the {self.name} binding cannot capture graphs")

    def graph_instantiate(self, graph: Any) -> Any:
        raise CudaError("cudaGraphInstantiate", "notSupported", f"the {self.name} binding cannot capture graphs")

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        raise CudaError("cudaGraphLaunch", "notSupported", f"the {self.name} binding cannot capture graphs")

    def graph_destroy(self, graph: Any) -> None:
        """Free a captured graph."""

    def graph_exec_destroy(self, graph_exec: Any) -> None:
        """Free an instantiated graph."""

    def clear_error(self) -> None:
        """Reset CUDA's last (non-sticky) error, after a failure this driver has reported and handled."""

    def close(self) -> None:
        """Release what the driver itself holds (pycuda's context)."""

    def __enter__(self) -> CudaDriver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def installed_bindings() -> list[str]:
    """Binding names whose Python package is importable here, in preference order."""
    return [name for name in PREFERENCE if any(_importable(m) for m in BINDINGS[name][1])]


def choose_binding(requested: str, installed: list[str]) -> str:
    """The binding to use: ``requested`` ("auto", "cuda-python", "pycuda") given what is installed.

    Raises:
        UsageError: unknown binding name.
        BackendUnavailable: the requested binding (or, for auto, any binding) is not installed.
    """
    if requested == "auto":
        for name in PREFERENCE:
            if name in installed:
                return name
        raise BackendUnavailable("no CUDA Python binding installed: pip install cuda-python (or pycuda)")
    if requested not in BINDINGS:
        raise UsageError(f"unknown CUDA binding {requested!r}: choose auto, {', '.join(BINDINGS)}")
    if requested not in installed:
        raise BackendUnavailable(f"CUDA binding {requested} is not installed: {BINDINGS[requested][2]}")
    return requested


def open_driver(binding: str = "auto") -> CudaDriver:
    """Import and start the driver for ``binding``.

    Raises:
        UsageError, BackendUnavailable: see :func:`choose_binding`.
    """
    name = choose_binding(binding, installed_bindings())
    module, _, cls = BINDINGS[name][0].partition(":")
    return getattr(importlib.import_module(module), cls)()


def probe_device(binding: str = "auto") -> str | None:
    """None when a CUDA device is usable here, else why not (for ``edgedx info``)."""
    try:
        driver = open_driver(binding)
    except EdgedxError as exc:
        return str(exc)
    try:
        count, why = driver.probe()
    finally:
        driver.close()
    return None if count else f"no CUDA device ({why})"


def host_view(ptr: int, nbytes: int, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """A writable numpy array over ``nbytes`` of host memory at ``ptr`` (valid until it is freed)."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    if count * dtype.itemsize > nbytes:
        raise ValueError(f"shape {shape} of {dtype} needs {count * dtype.itemsize} bytes, buffer has {nbytes}")
    raw = (ctypes.c_byte * nbytes).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


class Resources:
    """Owns CUDA allocations, streams, events and graphs; :meth:`close` frees them in reverse order.

    Must be closed explicitly (or used as a context manager): nothing is freed by ``__del__``.
    Numpy views of pinned memory handed out by :meth:`pinned` are invalid after ``close``.
    """

    def __init__(self, driver: CudaDriver) -> None:
        self.driver = driver
        self._release: list[tuple[str, Callable[[], None]]] = []

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        nbytes = max(1, math.prod(shape) * np.dtype(dtype).itemsize)
        ptr = self.driver.malloc_host(nbytes)
        self.defer("pinned host memory", lambda: self.driver.free_host(ptr))
        return host_view(ptr, nbytes, shape, dtype)

    def device(self, nbytes: int) -> int:
        ptr = self.driver.malloc(max(1, nbytes))
        self.defer("device memory", lambda: self.driver.free(ptr))
        return ptr

    def stream(self) -> Any:
        stream = self.driver.stream_create()
        self.defer("stream", lambda: self.driver.stream_destroy(stream))
        return stream

    def event(self) -> Any:
        event = self.driver.event_create()
        self.defer("event", lambda: self.driver.event_destroy(event))
        return event

    def defer(self, what: str, release: Callable[[], None]) -> None:
        """Run ``release`` at :meth:`close` (last registered, first run)."""
        self._release.append((what, release))

    def close(self) -> None:
        """Free everything; keep going past failures and raise the first one at the end."""
        first: Exception | None = None
        while self._release:
            what, release = self._release.pop()
            try:
                release()
            except Exception as exc:  # noqa: BLE001 (free the rest before reporting)
                log.warning("freeing %s failed: %s", what, exc)
                first = first or exc
        if first is not None:
            raise first

    def __enter__(self) -> Resources:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
