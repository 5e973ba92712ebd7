"""CUDA for edgedx: one small interface over cuda-python (default) or pycuda.

    from edgedx.cuda import open_driver, Resources
    with open_driver("auto") as cuda, Resources(cuda) as res:
        count, why = cuda.probe()
        host = res.pinned((8, 3, 224, 224), "float32")   # numpy view of pinned memory
        dev = res.device(host.nbytes)
        stream = res.stream()
        cuda.memcpy_htod_async(dev, host.ctypes.data, host.nbytes, stream)
        cuda.stream_synchronize(stream)

Importing this package imports neither ``cuda`` nor ``pycuda``; :func:`open_driver` does.
"""

from edgedx.cuda.driver import (
    BINDINGS,
    CudaDriver,
    CudaError,
    DeviceInfo,
    Resources,
    choose_binding,
    host_view,
    installed_bindings,
    open_driver,
)

__all__ = [
    "BINDINGS",
    "CudaDriver",
    "CudaError",
    "DeviceInfo",
    "Resources",
    "choose_binding",
    "host_view",
    "installed_bindings",
    "open_driver",
]
