"""edgedx.cuda: binding choice, resource ownership, pipeline decisions (CPU); real CUDA under ``-m gpu``."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgedx.cuda import CudaError, Resources, choose_binding, host_view
from edgedx.cuda.pipeline import BatchRange, GraphAction, SlotRing, graph_action, max_shape, numpy_dtype, tensor_nbytes
from edgedx.errors import BackendUnavailable, ModelError, UsageError

# -- binding choice -------------------------------------------------------------------------------


def test_auto_prefers_cuda_python_then_pycuda():
    assert choose_binding("auto", ["cuda-python", "pycuda"]) == "cuda-python"
    assert choose_binding("auto", ["pycuda"]) == "pycuda"


def test_explicit_binding_must_be_installed():
    assert choose_binding("pycuda", ["cuda-python", "pycuda"]) == "pycuda"
    with pytest.raises(BackendUnavailable, match="pip install pycuda") as info:
        choose_binding("pycuda", ["cuda-python"])
    assert info.value.exit_code == 3


def test_no_binding_installed_is_backend_unavailable():
    with pytest.raises(BackendUnavailable, match="pip install cuda-python"):
        choose_binding("auto", [])


def test_unknown_binding_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown CUDA binding 'cupy'"):
        choose_binding("cupy", ["cuda-python"])


# -- resources --------------------------------------------------------------------------------------


class RecordingDriver:
    """Host memory standing in for device memory; records frees."""

    name = "fake"
    supports_graphs = True

    def __init__(self, fail_free: int | None = None) -> None:
        self.buffers: dict[int, ctypes.Array] = {}
        self.freed: list[str] = []
        self.fail_free = fail_free

    def _alloc(self, nbytes: int) -> int:
        buf = ctypes.create_string_buffer(nbytes)
        self.buffers[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def _free(self, ptr: int, what: str) -> None:
        del self.buffers[ptr]
        self.freed.append(what)
        if self.fail_free is not None and len(self.freed) == self.fail_free:
            raise CudaError("cudaFree", "cudaErrorIllegalAddress")

    malloc_host = malloc = _alloc

    def free_host(self, ptr: int) -> None:
        self._free(ptr, "host")

    def free(self, ptr: int) -> None:
        self._free(ptr, "device")

    def stream_create(self):
        return "stream"

    def stream_destroy(self, stream) -> None:
        self.freed.append("stream")

    def event_create(self):
        return object()

    def event_destroy(self, event) -> None:
        self.freed.append("event")


def test_resources_free_everything_in_reverse_order():
    driver = RecordingDriver()
    with Resources(driver) as res:
        host = res.pinned((2, 3), np.float32)
        res.device(64)
        res.stream()
        res.event()
        host[:] = 7.0
        assert host.dtype == np.float32 and host.shape == (2, 3) and float(host.sum()) == 42.0
        assert len(driver.buffers) == 2
    assert driver.freed == ["event", "stream", "device", "host"]
    assert driver.buffers == {}


def test_resources_keep_freeing_after_a_failure_and_report_it():
    driver = RecordingDriver(fail_free=1)
    res = Resources(driver)
    res.pinned((4,), np.uint8)
    res.device(16)
    with pytest.raises(CudaError, match="cudaErrorIllegalAddress"):
        res.close()
    assert driver.freed == ["device", "host"]
    res.close()  # nothing left: a second close is a no-op
    assert driver.freed == ["device", "host"]


def test_host_view_is_a_writable_view_of_the_memory():
    buf = ctypes.create_string_buffer(32)
    view = host_view(ctypes.addressof(buf), 32, (2, 4), np.float32)
    view[1, 2] = 1.5
    assert np.frombuffer(buf.raw, np.float32)[6] == 1.5
    assert view.ctypes.data == ctypes.addressof(buf)
    with pytest.raises(ValueError, match="needs 64 bytes"):
        host_view(ctypes.addressof(buf), 32, (4, 4), np.float32)


def test_cuda_error_carries_the_error_name():
    exc = CudaError("cudaMalloc", "cudaErrorMemoryAllocation")
    assert exc.name == "cudaErrorMemoryAllocation"
    assert str(exc) == "cudaMalloc failed: cudaErrorMemoryAllocation"


# -- the cuda-python driver over a fake runtime module ---------------------------------------------


class FakeErr(int):
    pass


def fake_runtime(device_count_error: str | None = None, driver: int = 12040, runtime: int = 13000):
    names = {0: "cudaSuccess", 2: "cudaErrorMemoryAllocation", 35: "cudaErrorInsufficientDriver", 100: "cudaErrorNoDevice"}
    codes = {v: FakeErr(k) for k, v in names.items()}
    rt = SimpleNamespace()
    rt.cudaError_t = SimpleNamespace(cudaSuccess=codes["cudaSuccess"])
    rt.cudaGetErrorName = lambda err: (codes["cudaSuccess"], names[int(err)].encode())
    rt.cudaGetDeviceCount = lambda: (codes[device_count_error], 0) if device_count_error else (codes["cudaSuccess"], 1)
    rt.cudaMalloc = lambda n: (codes["cudaErrorMemoryAllocation"], None)
    rt.cudaDriverGetVersion = lambda: (codes["cudaSuccess"], driver)
    rt.cudaRuntimeGetVersion = lambda: (codes["cudaSuccess"], runtime)
    rt.cleared = 0

    def get_last_error():
        rt.cleared += 1
        return (codes["cudaSuccess"],)

    rt.cudaGetLastError = get_last_error
    return rt


def cuda_python_driver(rt):
    from edgedx.cuda.cuda_python import CudaPythonDriver

    driver = CudaPythonDriver.__new__(CudaPythonDriver)
    driver.rt = rt
    return driver


def test_cuda_python_errors_carry_cuda_error_names():
    driver = cuda_python_driver(fake_runtime())
    with pytest.raises(CudaError, match="cudaMalloc failed: cudaErrorMemoryAllocation") as info:
        driver.malloc(1 << 40)
    assert info.value.name == "cudaErrorMemoryAllocation"


@pytest.mark.parametrize("error", ["cudaErrorNoDevice", "cudaErrorInsufficientDriver"])
def test_cuda_python_probe_reports_no_device_instead_of_raising(error):
    count, why = cuda_python_driver(fake_runtime(error, driver=13000)).probe()
    assert count == 0
    assert why == f"cudaGetDeviceCount: {error}"


def test_a_cuda_12_driver_under_a_cuda_13_binding_is_named_with_what_to_install():
    count, why = cuda_python_driver(fake_runtime("cudaErrorInsufficientDriver", driver=12040, runtime=13000)).probe()
    assert count == 0
    assert why.startswith("cudaGetDeviceCount: cudaErrorInsufficientDriver; the NVIDIA driver supports CUDA 12.4 but the CUDA runtime here is 13.0")
    assert "pip install 'edgedx[cuda12]'" in why


def test_no_driver_at_all_is_named():
    count, why = cuda_python_driver(fake_runtime("cudaErrorInsufficientDriver", driver=0)).probe()
    assert count == 0 and "no NVIDIA driver is installed" in why


@pytest.mark.parametrize(
    ("driver", "runtime", "expected"),
    [(12080, 12060, None), (13000, 13000, None), (12020, 12080, "CUDA 12.2 but the CUDA runtime here is 12.8"),
     (11080, 12000, "pip install 'cuda-python==11.*'"), (0, 13000, "no NVIDIA driver")],
)
def test_driver_mismatch(driver, runtime, expected):
    from edgedx.cuda.driver import driver_mismatch

    got = driver_mismatch(driver, runtime)
    assert got is None if expected is None else expected in got


def test_the_cuda12_extra_pins_a_cuda_python_that_runs_on_cuda_12_drivers():
    import tomllib

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.replace(" ", "").startswith("cuda-python>=12.6,<13") for dep in extras["cuda12"]), extras["cuda12"]


def test_cuda_python_clear_error_resets_the_last_error():
    rt = fake_runtime()
    cuda_python_driver(rt).clear_error()
    assert rt.cleared == 1


def test_every_runtime_name_the_cuda_python_driver_uses_exists():
    runtime = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed")
    from pathlib import Path

    import edgedx.cuda.cuda_python as driver_module
    from tests.test_tensorrt import attribute_uses

    used = attribute_uses(Path(driver_module.__file__), {"rt": ""})
    assert "cudaMemcpyAsync" in used and "cudaStreamBeginCapture" in used
    missing = []
    for name in sorted(used):
        obj = runtime
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if obj is None:
            missing.append(name)
    assert missing == []


def test_real_cuda_python_probe_on_this_machine_does_not_raise():
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed")
    from edgedx.cuda.cuda_python import CudaPythonDriver

    count, why = CudaPythonDriver().probe()
    assert count >= 0
    assert (count == 0) == (why is not None)


# -- pipeline decisions -----------------------------------------------------------------------------


def test_slot_ring_rotates_and_limits_in_flight_batches():
    ring = SlotRing(2)
    assert ring.free_slot() == 0
    assert ring.free_slot() == 0  # asking twice does not advance
    assert ring.submit() == 0
    assert ring.free_slot() == 1
    assert ring.submit() == 1
    assert ring.pending == 2
    with pytest.raises(UsageError, match="call wait"):
        ring.free_slot()
    assert ring.complete() == 0  # FIFO: the stream's order
    assert ring.free_slot() == 0
    assert ring.submit() == 0
    assert ring.complete() == 1
    assert ring.complete() == 0
    with pytest.raises(UsageError, match="no batch submitted"):
        ring.complete()


@pytest.mark.parametrize(
    "kwargs, action",
    [
        ({"enabled": False, "supported": True, "failed": False, "has_graph": True, "warm_runs": 5}, GraphAction.ENQUEUE),
        ({"enabled": True, "supported": False, "failed": False, "has_graph": False, "warm_runs": 5}, GraphAction.ENQUEUE),
        ({"enabled": True, "supported": True, "failed": True, "has_graph": False, "warm_runs": 5}, GraphAction.ENQUEUE),
        ({"enabled": True, "supported": True, "failed": False, "has_graph": False, "warm_runs": 0}, GraphAction.ENQUEUE),
        ({"enabled": True, "supported": True, "failed": False, "has_graph": False, "warm_runs": 1}, GraphAction.CAPTURE),
        ({"enabled": True, "supported": True, "failed": False, "has_graph": True, "warm_runs": 1}, GraphAction.LAUNCH),
    ],
)
def test_graph_action(kwargs, action):
    got, why = graph_action(**kwargs)
    assert got is action
    assert why


def test_buffer_sizing_from_profile_shapes():
    assert max_shape((-1, 3, 224, 224), (32, 3, 224, 224)) == (32, 3, 224, 224)
    assert max_shape((4, 10), None) == (4, 10)
    assert tensor_nbytes((32, 3, 224, 224), 2) == 32 * 3 * 224 * 224 * 2
    with pytest.raises(ModelError, match="no profile bound"):
        max_shape((-1, 10), None)
    with pytest.raises(ModelError, match="does not fit"):
        max_shape((-1, 3, 224, 224), (8, 3, 256, 256))


def test_batch_range_from_profile():
    r = BatchRange.from_profile((-1, 3, 8, 8), [(1, 3, 8, 8), (8, 3, 8, 8), (32, 3, 8, 8)])
    assert (r.min, r.opt, r.max) == (1, 8, 32)
    r.check(32)
    with pytest.raises(UsageError, match=r"batch of 33 is more than this engine takes \(profile 1..32\).*--batch 1,33,33"):
        r.check(33)
    n_to_n = BatchRange.from_profile((-1, 3, 8, 8), [(4, 3, 8, 8), (4, 3, 8, 8), (4, 3, 8, 8)])
    n_to_n.check(1)  # below the profile's min: accepted, run padded
    assert [n_to_n.rows(n) for n in (1, 3, 4)] == [4, 4, 4]
    assert r.rows(3) == 3
    fixed = BatchRange.from_profile((4, 3, 8, 8), None)
    assert (fixed.min, fixed.max) == (1, 4)  # smaller batches run padded


def test_numpy_dtype_refuses_types_numpy_cannot_hold():
    assert numpy_dtype("HALF", "x") == "float16"
    with pytest.raises(ModelError, match="BF16"):
        numpy_dtype("BF16", "x")


def test_importing_edgedx_cuda_and_tensorrt_modules_loads_no_gpu_package():
    code = (
        "import sys, edgedx.cuda, edgedx.cuda.pipeline, edgedx.backends.tensorrt, export.engine, export.engine_cli\n"
        "bad = [m for m in ('tensorrt', 'tensorrt_lean', 'cuda', 'pycuda', 'torch', 'onnx') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


# -- real CUDA (pytest -m gpu) ---------------------------------------------------------------------


@pytest.fixture
def cuda():
    """The default driver on a machine with a CUDA device; skips with the reason elsewhere."""
    from edgedx.cuda import installed_bindings, open_driver

    if not installed_bindings():
        pytest.skip("no CUDA Python binding installed (pip install cuda-python)")
    driver = open_driver("auto")
    count, why = driver.probe()
    if count == 0:
        driver.close()
        pytest.skip(f"no CUDA device: {why}")
    driver.set_device(0)
    yield driver
    driver.close()


def _h2d_ms(cuda, res, src_ptr: int, nbytes: int, stream, repeats: int = 5) -> float:
    dst = res.device(nbytes)
    start, end = res.event(), res.event()
    cuda.memcpy_htod_async(dst, src_ptr, nbytes, stream)  # warm-up
    cuda.stream_synchronize(stream)
    best = float("inf")
    for _ in range(repeats):
        cuda.event_record(start, stream)
        cuda.memcpy_htod_async(dst, src_ptr, nbytes, stream)
        cuda.event_record(end, stream)
        cuda.event_synchronize(end)
        best = min(best, cuda.event_elapsed_ms(start, end))
    return best


@pytest.mark.gpu
def test_gpu_pinned_h2d_is_faster_than_pageable(cuda):
    nbytes = 64 << 20
    with Resources(cuda) as res:
        stream = res.stream()
        pinned = res.pinned((nbytes,), np.uint8)
        pageable = np.ones(nbytes, np.uint8)
        pinned[:] = 1
        t_pinned = _h2d_ms(cuda, res, pinned.ctypes.data, nbytes, stream)
        t_pageable = _h2d_ms(cuda, res, pageable.ctypes.data, nbytes, stream)
    gbps = lambda ms: nbytes / ms / 1e6
    print(f"H2D 64 MiB: pinned {gbps(t_pinned):.1f} GB/s, pageable {gbps(t_pageable):.1f} GB/s")
    assert t_pinned < t_pageable


@pytest.mark.gpu
def test_gpu_round_trip_on_a_stream_with_event_timing(cuda):
    with Resources(cuda) as res:
        stream = res.stream()
        src = res.pinned((1 << 20,), np.float32)
        dst = res.pinned((1 << 20,), np.float32)
        src[:] = np.arange(src.size, dtype=np.float32)
        dev = res.device(src.nbytes)
        e0, e1, e2 = res.event(), res.event(), res.event()
        cuda.event_record(e0, stream)
        cuda.memcpy_htod_async(dev, src.ctypes.data, src.nbytes, stream)
        cuda.event_record(e1, stream)
        cuda.memcpy_dtoh_async(dst.ctypes.data, dev, dst.nbytes, stream)
        cuda.event_record(e2, stream)
        cuda.stream_synchronize(stream)
        assert np.array_equal(dst, src)
        assert cuda.event_elapsed_ms(e0, e1) > 0.0
        assert cuda.event_elapsed_ms(e1, e2) > 0.0


@pytest.mark.gpu
def test_gpu_graph_capture_of_a_memcpy_replays_with_new_data(cuda):
    if not cuda.supports_graphs:
        pytest.skip(f"the {cuda.name} binding cannot capture graphs")
    with Resources(cuda) as res:
        stream = res.stream()
        src = res.pinned((4096,), np.float32)
        dst = res.pinned((4096,), np.float32)
        dev = res.device(src.nbytes)
        cuda.graph_begin_capture(stream)
        cuda.memcpy_htod_async(dev, src.ctypes.data, src.nbytes, stream)
        cuda.memcpy_dtoh_async(dst.ctypes.data, dev, dst.nbytes, stream)
        graph = cuda.graph_end_capture(stream)
        graph_exec = cuda.graph_instantiate(graph)
        res.defer("graph", lambda: (cuda.graph_exec_destroy(graph_exec), cuda.graph_destroy(graph)))
        for value in (1.0, 2.0):
            src[:] = value
            cuda.graph_launch(graph_exec, stream)
            cuda.stream_synchronize(stream)
            assert float(dst.min()) == value == float(dst.max())


@pytest.mark.gpu
def test_gpu_errors_name_the_cuda_error(cuda):
    with pytest.raises(CudaError) as info:
        cuda.malloc(1 << 50)  # 1 PiB
    assert "memory" in info.value.name.lower()  # cudaErrorMemoryAllocation / "out of memory"


# -- the pycuda driver over a fake pycuda.driver ---------------------------------------------------


class FakePycudaError(Exception):
    pass


def fake_pycuda(monkeypatch, *, init_error: str | None = None, count_error: str | None = None):
    """Install a fake ``pycuda.driver`` that records which thread pushed the context."""
    import threading
    import types

    drv = types.ModuleType("pycuda.driver")
    drv.Error = FakePycudaError
    drv.pushes = []
    drv.pops = []

    def init():
        if init_error:
            raise FakePycudaError(f"cuInit failed: {init_error}")

    class Context:
        def push(self):
            drv.pushes.append(threading.get_ident())

        @staticmethod
        def pop():
            drv.pops.append(threading.get_ident())

        def detach(self):
            drv.detached = True

    class Device:
        def __init__(self, index):
            self.index = index

        @staticmethod
        def count():
            if count_error:
                raise FakePycudaError(f"cuDeviceGetCount failed: {count_error}")
            return 1

        def retain_primary_context(self):
            return Context()

    def mem_alloc(n):
        raise FakePycudaError("cuMemAlloc failed: out of memory")

    drv.init, drv.Device, drv.mem_alloc = init, Device, mem_alloc
    pkg = types.ModuleType("pycuda")
    pkg.driver = drv
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    from edgedx.cuda.pycuda_driver import PyCudaDriver

    return PyCudaDriver(), drv


def test_pycuda_errors_carry_the_same_names_as_cuda_python(monkeypatch):
    driver, _ = fake_pycuda(monkeypatch)
    with pytest.raises(CudaError, match="cuMemAlloc failed: cudaErrorMemoryAllocation") as info:
        driver.malloc(1 << 40)
    assert info.value.name == "cudaErrorMemoryAllocation"


@pytest.mark.parametrize(
    ("where", "text", "name"),
    [("init", "no CUDA-capable device is detected", "cudaErrorNoDevice"),
     ("init", "CUDA driver version is insufficient for CUDA runtime version", "cudaErrorInsufficientDriver"),
     ("count", "initialization error", "cudaErrorInitializationError")],
)
def test_pycuda_without_a_usable_driver_probes_zero_devices_for_auto_fallback(monkeypatch, where, text, name):
    driver, _ = fake_pycuda(monkeypatch, **({"init_error": text} if where == "init" else {"count_error": text}))
    count, why = driver.probe()
    assert count == 0 and why.endswith(name)


def test_pycuda_makes_the_context_current_on_every_calling_thread(monkeypatch):
    import threading

    driver, drv = fake_pycuda(monkeypatch)
    driver.set_device(0)
    main = threading.get_ident()
    assert drv.pushes == [main]
    worker_ids = []

    def worker():
        worker_ids.append(threading.get_ident())
        with pytest.raises(CudaError):
            driver.malloc(16)  # any call: the context is pushed on this thread first
        with pytest.raises(CudaError):
            driver.malloc(16)  # and only once

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert drv.pushes == [main, worker_ids[0]]
    driver.close()
    assert drv.pops == [main] and drv.detached


def test_error_name_for_unknown_text_keeps_the_text():
    from edgedx.cuda.driver import error_name_for

    assert error_name_for("cuFoo failed: something new") == "something new"
    assert error_name_for("cuMemAlloc failed: out of memory") == "cudaErrorMemoryAllocation"
