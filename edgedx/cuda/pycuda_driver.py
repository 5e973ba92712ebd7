"""The pycuda driver: used when selected (``cuda_binding="pycuda"``) or when it is the only binding.

pycuda binds the driver API. This driver retains the device's primary context (the one the CUDA
runtime and TensorRT use) and makes it current on every thread that calls it (a CUDA context is
current per thread: a session opened on one thread and run from a worker would otherwise have
none); :meth:`close` pops it where it pushed it and releases it. pycuda has no graph capture API,
so ``supports_graphs`` is False and sessions run plain enqueues.

pycuda reports failures as ``cuMemAlloc failed: out of memory`` (the ``cuGetErrorString`` text);
:func:`error_name_for` maps that text to the runtime's name (``cudaErrorMemoryAllocation``), so a
:class:`CudaError` names the same error under either binding, and a machine with no driver or
device probes as 0 devices with the reason (``backend="auto"`` falls back) instead of raising.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from edgedx.cuda.driver import NO_DEVICE_ERRORS, CudaDriver, CudaError, DeviceInfo, error_name_for
from edgedx.errors import BackendUnavailable


class PyCudaDriver(CudaDriver):
    name = "pycuda"
    supports_graphs = False

    def __init__(self) -> None:
        try:
            import pycuda.driver as drv
        except ImportError as exc:  # pycuda imports libcuda: no driver, no module
            raise BackendUnavailable(f"pycuda cannot load the CUDA driver ({exc}): install the NVIDIA driver, or use cuda-python") from None

        self.drv = drv
        self._context: Any = None
        self._local = threading.local()  # .pushed: the context is current on this thread
        self._host: dict[int, Any] = {}  # pointer -> pagelocked array that owns it
        self._device: dict[int, Any] = {}  # pointer -> DeviceAllocation
        self._init_error: str | None = None
        try:
            drv.init()
        except drv.Error as exc:  # no driver or device: probe() reports it
            self._init_error = f"cuInit: {error_name_for(str(exc))}"

    def _call(self, call: str, fn: Any, *args: Any) -> Any:
        self._make_current()
        try:
            return fn(*args)
        except self.drv.Error as exc:
            raise CudaError(call, error_name_for(str(exc)) or type(exc).__name__, str(exc)) from exc

    def _make_current(self) -> None:
        """Push the session's context on a thread that has not got it current yet."""
        if self._context is not None and not getattr(self._local, "pushed", False):
            try:
                self._context.push()
            except self.drv.Error as exc:
                raise CudaError("cuCtxPushCurrent", error_name_for(str(exc)), str(exc)) from exc
            self._local.pushed = True

    # devices
    def probe(self) -> tuple[int, str | None]:
        if self._init_error is not None:
            return 0, self._init_error
        try:
            count = self.drv.Device.count()
        except self.drv.Error as exc:
            name = error_name_for(str(exc))
            if name in NO_DEVICE_ERRORS:
                return 0, f"cuDeviceGetCount: {name}"
            raise CudaError("cuDeviceGetCount", name, str(exc)) from exc
        return count, (None if count else "cuDeviceGetCount: 0 devices")

    def device_info(self, device: int = 0) -> DeviceInfo:
        dev = self._call("cuDeviceGet", self.drv.Device, device)
        major, minor = self._call("cuDeviceComputeCapability", dev.compute_capability)
        return DeviceInfo(device, dev.name(), (int(major), int(minor)), int(dev.total_memory()))

    def set_device(self, device: int) -> None:
        if self._context is not None:
            return
        dev = self._call("cuDeviceGet", self.drv.Device, device)
        self._context = self._call("cuDevicePrimaryCtxRetain", dev.retain_primary_context)
        self._make_current()

    # memory
    def malloc_host(self, nbytes: int) -> int:
        import numpy as np

        array = self._call("cuMemHostAlloc", self.drv.pagelocked_empty, (nbytes,), np.uint8)
        ptr = int(array.ctypes.data)
        self._host[ptr] = array
        return ptr

    def free_host(self, ptr: int) -> None:
        array = self._host.pop(ptr)
        self._call("cuMemFreeHost", array.base.free)

    def malloc(self, nbytes: int) -> int:
        allocation = self._call("cuMemAlloc", self.drv.mem_alloc, nbytes)
        ptr = int(allocation)
        self._device[ptr] = allocation
        return ptr

    def free(self, ptr: int) -> None:
        self._call("cuMemFree", self._device.pop(ptr).free)

    def memcpy_htod_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        host = (ctypes.c_char * nbytes).from_address(src)
        self._call("cuMemcpyHtoDAsync", self.drv.memcpy_htod_async, dst, host, stream)

    def memcpy_dtoh_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        host = (ctypes.c_char * nbytes).from_address(dst)
        self._call("cuMemcpyDtoHAsync", self.drv.memcpy_dtoh_async, host, src, stream)

    # streams and events
    def stream_create(self) -> Any:
        return self._call("cuStreamCreate", self.drv.Stream)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_synchronize(self, stream: Any) -> None:
        self._call("cuStreamSynchronize", stream.synchronize)

    def stream_destroy(self, stream: Any) -> None:
        """pycuda destroys a stream when its last reference goes; nothing to call."""

    def event_create(self) -> Any:
        return self._call("cuEventCreate", self.drv.Event)

    def event_record(self, event: Any, stream: Any) -> None:
        self._call("cuEventRecord", event.record, stream)

    def event_synchronize(self, event: Any) -> None:
        self._call("cuEventSynchronize", event.synchronize)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._call("cuEventElapsedTime", end.time_since, start))

    def event_destroy(self, event: Any) -> None:
        """pycuda destroys an event when its last reference goes."""

    def close(self) -> None:
        """Pop the context on this thread (if pushed here) and release the primary context.

        Other threads that ran the session keep it on their context stacks until they exit; the
        primary context itself is freed when its last retain is released.
        """
        if self._context is not None:
            context, self._context = self._context, None
            try:
                if getattr(self._local, "pushed", False):
                    self._local.pushed = False
                    context.pop()
            except self.drv.Error as exc:
                raise CudaError("cuCtxPopCurrent", error_name_for(str(exc)), str(exc)) from exc
            finally:
                try:
                    context.detach()
                except self.drv.Error as exc:
                    raise CudaError("cuDevicePrimaryCtxRelease", error_name_for(str(exc)), str(exc)) from exc
