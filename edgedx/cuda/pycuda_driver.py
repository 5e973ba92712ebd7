"""The pycuda driver: used when selected (``cuda_binding="pycuda"``) or when it is the only binding.

pycuda binds the driver API. This driver retains the device's primary context (the one the CUDA
runtime and TensorRT use) and pushes it; :meth:`close` pops and releases it. pycuda has no graph
capture API, so ``supports_graphs`` is False and sessions run plain enqueues. pycuda reports
failures as ``cuMemAlloc failed: out of memory`` (the ``cuGetErrorString`` text): that text is the
:class:`CudaError` name here.
"""

from __future__ import annotations

import ctypes
from typing import Any

from edgedx.cuda.driver import CudaDriver, CudaError, DeviceInfo


class PyCudaDriver(CudaDriver):
    name = "pycuda"
    supports_graphs = False

    def __init__(self) -> None:
        import pycuda.driver as drv

        self.drv = drv
        self._context: Any = None
        self._host: dict[int, Any] = {}  # pointer -> pagelocked array that owns it
        self._device: dict[int, Any] = {}  # pointer -> DeviceAllocation
        self._call("cuInit", drv.init)

    def _call(self, call: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self.drv.Error as exc:
            raise CudaError(call, str(exc).split(": ", 1)[-1] or type(exc).__name__) from exc

    # devices
    def probe(self) -> tuple[int, str | None]:
        try:
            count = self.drv.Device.count()
        except self.drv.Error as exc:
            return 0, f"cuDeviceGetCount: {exc}"
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
        self._call("cuCtxPushCurrent", self._context.push)

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
        if self._context is not None:
            context, self._context = self._context, None
            self._call("cuCtxPopCurrent", context.pop)
            self._call("cuDevicePrimaryCtxRelease", context.detach)
