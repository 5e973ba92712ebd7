"""The cuda-python driver: NVIDIA's ``cuda.bindings.runtime`` (``cuda.cudart`` on cuda-python < 12.6).

Every call returns ``(cudaError_t, *results)``; :func:`_check` raises :class:`CudaError` with
``cudaGetErrorName`` of any failure and returns the results.
"""

from __future__ import annotations

from typing import Any

from edgedx.cuda.driver import NO_DEVICE_ERRORS, CudaDriver, CudaError, DeviceInfo, driver_mismatch  # noqa: F401  (NO_DEVICE_ERRORS re-exported)


def _runtime() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError:  # cuda-python before 12.6
        from cuda import cudart as runtime
    return runtime


class CudaPythonDriver(CudaDriver):
    name = "cuda-python"
    supports_graphs = True

    def __init__(self) -> None:
        self.rt = _runtime()

    def _check(self, call: str, result: Any) -> Any:
        err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(call, self.error_name(err))
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    def error_name(self, err: Any) -> str:
        status, name = self.rt.cudaGetErrorName(err)
        if status != self.rt.cudaError_t.cudaSuccess or name is None:
            return f"cudaError {int(err)}"
        return name.decode() if isinstance(name, bytes) else str(name)

    # devices
    def probe(self) -> tuple[int, str | None]:
        err, count = self.rt.cudaGetDeviceCount()
        if err != self.rt.cudaError_t.cudaSuccess:
            name = self.error_name(err)
            if name in NO_DEVICE_ERRORS:
                mismatch = self.version_mismatch() if name in ("cudaErrorInsufficientDriver", "cudaErrorSystemDriverMismatch") else None
                return 0, f"cudaGetDeviceCount: {name}" + (f"; {mismatch}" if mismatch else "")
            raise CudaError("cudaGetDeviceCount", name)
        return count, (None if count else "cudaGetDeviceCount: 0 devices")

    def version_mismatch(self) -> str | None:
        """Driver vs runtime CUDA versions, named with what to install (None when both read and agree)."""
        d_err, driver = self.rt.cudaDriverGetVersion()
        r_err, runtime = self.rt.cudaRuntimeGetVersion()
        if d_err != self.rt.cudaError_t.cudaSuccess or r_err != self.rt.cudaError_t.cudaSuccess:
            return None
        return driver_mismatch(int(driver), int(runtime))

    def clear_error(self) -> None:
        self.rt.cudaGetLastError()

    def device_info(self, device: int = 0) -> DeviceInfo:
        props = self._check("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(device))
        name = props.name
        name = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
        return DeviceInfo(device, name, (int(props.major), int(props.minor)), int(props.totalGlobalMem))

    def set_device(self, device: int) -> None:
        self._check("cudaSetDevice", self.rt.cudaSetDevice(device))

    # memory
    def malloc_host(self, nbytes: int) -> int:
        return int(self._check("cudaMallocHost", self.rt.cudaMallocHost(nbytes)))

    def free_host(self, ptr: int) -> None:
        self._check("cudaFreeHost", self.rt.cudaFreeHost(ptr))

    def malloc(self, nbytes: int) -> int:
        return int(self._check("cudaMalloc", self.rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._check("cudaFree", self.rt.cudaFree(ptr))

    def memcpy_htod_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check("cudaMemcpyAsync(HostToDevice)", self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream))

    def memcpy_dtoh_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check("cudaMemcpyAsync(DeviceToHost)", self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream))

    # streams and events
    def stream_create(self) -> Any:
        return self._check("cudaStreamCreateWithFlags", self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking))

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_synchronize(self, stream: Any) -> None:
        self._check("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream))

    def stream_destroy(self, stream: Any) -> None:
        self._check("cudaStreamDestroy", self.rt.cudaStreamDestroy(stream))

    def event_create(self) -> Any:
        return self._check("cudaEventCreate", self.rt.cudaEventCreate())

    def event_record(self, event: Any, stream: Any) -> None:
        self._check("cudaEventRecord", self.rt.cudaEventRecord(event, stream))

    def event_synchronize(self, event: Any) -> None:
        self._check("cudaEventSynchronize", self.rt.cudaEventSynchronize(event))

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._check("cudaEventElapsedTime", self.rt.cudaEventElapsedTime(start, end)))

    def event_destroy(self, event: Any) -> None:
        self._check("cudaEventDestroy", self.rt.cudaEventDestroy(event))

    # graphs
    def graph_begin_capture(self, stream: Any) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check("cudaStreamBeginCapture", self.rt.cudaStreamBeginCapture(stream, mode))

    def graph_end_capture(self, stream: Any) -> Any:
        return self._check("cudaStreamEndCapture", self.rt.cudaStreamEndCapture(stream))

    def graph_instantiate(self, graph: Any) -> Any:
        return self._check("cudaGraphInstantiate", self.rt.cudaGraphInstantiate(graph, 0))

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        self._check("cudaGraphLaunch", self.rt.cudaGraphLaunch(graph_exec, stream))

    def graph_destroy(self, graph: Any) -> None:
        self._check("cudaGraphDestroy", self.rt.cudaGraphDestroy(graph))

    def graph_exec_destroy(self, graph_exec: Any) -> None:
        self._check("cudaGraphExecDestroy", self.rt.cudaGraphExecDestroy(graph_exec))
