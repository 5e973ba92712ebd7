"""The TensorRT module edgedx runs engines with: which one, its logger, and the names it may use.

For engines built with TensorRT: ``tensorrt`` when installed, else ``tensorrt_lean``; for engines
whose sidecar says ``"builder": "tensorrt-rtx"``: ``tensorrt_rtx`` (:func:`import_tensorrt`). All
are imported on first use, never at module import. :data:`TRT_RUNTIME_NAMES` is the TensorRT
surface of this module and :mod:`edgedx.backends.tensorrt` that every runtime has;
:data:`TRT_OPTIONAL_RUNTIME_NAMES` the names used only where the module offers them.
"""

from __future__ import annotations

import logging
from typing import Any

from edgedx.errors import BackendUnavailable

log = logging.getLogger("edgedx")

#: Every TensorRT name the runtime uses (this module and :mod:`edgedx.backends.tensorrt`), as
#: ``Class.member`` (or a module attribute). The one list a test checks against the real
#: ``tensorrt_lean``; another test greps both files for uses outside it.
TRT_RUNTIME_NAMES: tuple[str, ...] = (
    "__version__",
    "ILogger",
    "ILogger.Severity",
    "ILogger.Severity.INTERNAL_ERROR",
    "ILogger.Severity.ERROR",
    "ILogger.Severity.WARNING",
    "Runtime",
    "Runtime.deserialize_cuda_engine",
    "Runtime.engine_host_code_allowed",
    "Runtime.DLA_core",
    "ICudaEngine.num_io_tensors",
    "ICudaEngine.get_tensor_name",
    "ICudaEngine.get_tensor_mode",
    "ICudaEngine.get_tensor_shape",
    "ICudaEngine.get_tensor_dtype",
    "ICudaEngine.get_tensor_profile_shape",
    "ICudaEngine.create_execution_context",
    "IExecutionContext.set_input_shape",
    "IExecutionContext.get_tensor_shape",
    "IExecutionContext.set_tensor_address",
    "IExecutionContext.execute_async_v3",
    "TensorIOMode.INPUT",
    "TensorIOMode.OUTPUT",
)

#: Names used only where the runtime offers them (``hasattr`` first): TensorRT-RTX's engine check.
TRT_OPTIONAL_RUNTIME_NAMES: tuple[str, ...] = (
    "Runtime.get_engine_validity",
    "EngineInvalidityDiagnostics",
)

#: sidecar ``builder`` -> the runtime module that runs its engines, for describe().
RUNTIME_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}


def import_tensorrt(builder: str = "tensorrt") -> tuple[Any, bool]:
    """``(module, lean)`` for engines made by ``builder``: ``tensorrt_rtx`` for ``tensorrt-rtx``;
    else the full ``tensorrt`` when installed, else ``tensorrt_lean``.

    Raises:
        BackendUnavailable: the runtime is not installed, or ``builder`` is not one edgedx knows.
    """
    if builder == "tensorrt-rtx":
        try:
            import tensorrt_rtx as trt
        except ImportError:
            raise BackendUnavailable("engine built with TensorRT-RTX, whose runtime is not installed: pip install 'edgedx[rtx]'") from None
        return trt, False
    if builder != "tensorrt":
        raise BackendUnavailable(f"engine built with {builder!r}, which edgedx cannot run: rebuild it with edgedx export engine")
    try:
        import tensorrt as trt

        return trt, False
    except ImportError:
        pass
    try:
        import tensorrt_lean as trt

        return trt, True
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed: pip install 'edgedx[trt]' (on Jetson use JetPack's TensorRT)") from None


def make_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps errors (for one-line messages) and logs to edgedx's logger."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()
