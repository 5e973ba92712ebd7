"""TensorRT backend: API names against the real tensorrt_lean, the engine guard, and the session's
data path over fake CUDA and TensorRT objects (CPU); real deserialization under ``-m gpu``."""

from __future__ import annotations

import ctypes
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import edgedx.backends.tensorrt as trt_backend
import edgedx.backends.trt_guard as trt_guard
import edgedx.backends.trt_runtime as trt_runtime
from edgedx.backends.base import SessionOptions
from edgedx.backends.tensorrt import TensorRTSession
from edgedx.backends.trt_guard import EngineGuardError, RuntimeFacts, fallback_onnx, file_problems, runtime_problems
from edgedx.backends.trt_runtime import TRT_OPTIONAL_RUNTIME_NAMES, TRT_RUNTIME_NAMES
from edgedx.cuda import CudaDriver, CudaError, DeviceInfo
from edgedx.errors import BackendError, BackendUnavailable, UsageError
from tests.factories import resolve_dotted

# -- the names the runtime uses, against the real tensorrt_lean -------------------------------------


def test_every_runtime_name_exists_in_the_real_tensorrt_lean():
    trt = pytest.importorskip("tensorrt_lean", reason="tensorrt_lean not installed (pip install tensorrt-lean-cu13)")
    missing = []
    for name in TRT_RUNTIME_NAMES:
        try:
            resolve_dotted(trt, name)  # classes and enum members only: no TensorRT object is created
        except AttributeError:
            missing.append(name)
    assert not missing, f"tensorrt_lean {trt.__version__} lacks {missing}"


#: Every module that calls TensorRT at run time: the session, and the import and logger it uses.
RUNTIME_MODULES = (trt_backend, trt_runtime, trt_guard)

#: Variable (or ``self._`` attribute) name in those modules -> the TensorRT class it holds.
RECEIVERS = {"trt": "", "runtime": "Runtime", "engine": "ICudaEngine", "context": "IExecutionContext"}


def attribute_uses(path: Path, receivers: dict[str, str]) -> set[str]:
    """``Class.member`` for every ``receiver.member`` in the code of ``path`` (strings and comments skipped)."""
    import io
    import tokenize

    tokens = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline) if t.type in (tokenize.NAME, tokenize.OP)]
    used = set()
    for i, tok in enumerate(tokens[:-2]):
        receiver = tok.string.removeprefix("_")
        if tok.type != tokenize.NAME or receiver not in receivers or tokens[i + 1].string != "." or (
            i > 1 and tokens[i - 1].string == "." and tokens[i - 2].string != "self"
        ):
            continue
        chain = []  # module attributes: the whole dotted chain (trt.ILogger.Severity.ERROR)
        j = i + 1
        while j + 1 < len(tokens) and tokens[j].string == "." and tokens[j + 1].type == tokenize.NAME:
            chain.append(tokens[j + 1].string)
            j += 2
            if receivers[receiver]:
                break  # objects: one member
        while len(chain) > 1 and chain[-1].startswith("__"):
            chain.pop()  # trt.ILogger.__init__ -> ILogger
        cls = receivers[receiver]
        used.add(".".join([cls, *chain] if cls else chain))
    return used


def test_the_name_list_covers_every_tensorrt_use_in_the_runtime_modules():
    used = set().union(*(attribute_uses(Path(m.__file__), RECEIVERS) for m in RUNTIME_MODULES))
    assert "IExecutionContext.execute_async_v3" in used and "Runtime.deserialize_cuda_engine" in used
    assert "ILogger.Severity.ERROR" in used  # make_logger, in trt_runtime
    unlisted = sorted(u for u in used if u not in TRT_RUNTIME_NAMES + TRT_OPTIONAL_RUNTIME_NAMES)
    assert not unlisted, f"used but not in TRT_RUNTIME_NAMES: {unlisted}"


def test_every_module_under_backends_that_names_tensorrt_is_scanned():
    backends = Path(trt_backend.__file__).parent
    scanned = {Path(m.__file__).name for m in RUNTIME_MODULES}
    calling = {p.name for p in backends.glob("*.py") if attribute_uses(p, {"trt": ""})}
    assert calling <= scanned, f"modules calling TensorRT but not scanned: {sorted(calling - scanned)}"


def test_moved_names_stay_importable_from_the_backend_module():
    for name in ("EngineGuardError", "RuntimeFacts", "file_problems", "runtime_problems", "fallback_onnx", "sha256_file"):
        assert getattr(trt_backend, name) is getattr(trt_guard, name), name
    for name in ("TRT_RUNTIME_NAMES", "import_tensorrt", "make_logger"):
        assert getattr(trt_backend, name) is getattr(trt_runtime, name), name


def test_dtype_names_are_real_tensorrt_datatypes():
    trt = pytest.importorskip("tensorrt_lean", reason="tensorrt_lean not installed (pip install tensorrt-lean-cu13)")
    from edgedx.cuda.pipeline import TRT_DTYPES

    assert [n for n in TRT_DTYPES if not hasattr(trt.DataType, n)] == []


# -- guard: pure decisions ---------------------------------------------------------------------------

BUILT = {
    "tensorrt_version": "10.3.0.30",
    "gpu_name": "Orin",
    "compute_capability": "8.7",
    "precision": "fp16",
    "version_compatible": False,
    "hardware_compatible": False,
    "sha256": "abc",
    "source_onnx": "model.onnx",
}
HERE = RuntimeFacts("10.3.0.30", lean=False, compute_capability="8.7", device_name="Orin")


def test_guard_accepts_a_matching_engine():
    assert file_problems({"engine": BUILT}, "abc", "m.engine.json") == []
    assert runtime_problems(BUILT, HERE, trust_engine=False) == []


def test_guard_missing_sidecar():
    (problem,) = file_problems(None, "abc", "m.engine.json")
    assert "no sidecar m.engine.json" in problem and "edgedx export engine" in problem


def test_guard_sidecar_without_engine_section():
    (problem,) = file_problems({"labels": ["a", "b"]}, "abc", "m.engine.json")
    assert "has no engine section" in problem


def test_guard_hash_mismatch():
    (problem,) = file_problems({"engine": BUILT}, "def", "m.engine.json")
    assert "does not match m.engine.json (sha256 differs)" in problem


def test_guard_version_mismatch():
    (problem,) = runtime_problems(BUILT, RuntimeFacts("10.7.0.23", False, "8.7", "Orin"), False)
    assert "built with TensorRT 10.3.0.30, this machine has 10.7.0.23" in problem


def test_guard_compute_capability_mismatch():
    (problem,) = runtime_problems(BUILT, RuntimeFacts("10.3.0.30", False, "8.9", "NVIDIA L4"), False)
    assert "compute capability 8.7" in problem and "NVIDIA L4" in problem and "--hardware-compatible" in problem


def test_guard_version_compatible_needs_trust():
    vc = {**BUILT, "version_compatible": True}
    (problem,) = runtime_problems(vc, HERE, trust_engine=False)
    assert "host code" in problem and "--trust-engine" in problem
    assert runtime_problems(vc, HERE, trust_engine=True) == []


def test_guard_version_compatible_runs_on_newer_not_older():
    vc = {**BUILT, "version_compatible": True}
    assert runtime_problems(vc, RuntimeFacts("10.7.0.23", False, "8.7", "Orin"), True) == []
    (problem,) = runtime_problems(vc, RuntimeFacts("10.1.0.27", False, "8.7", "Orin"), True)
    assert "needs 10.3.0.30 or newer" in problem


def test_guard_version_compatible_without_lean_runtime_needs_the_same_version():
    vc = {**BUILT, "version_compatible": True, "exclude_lean_runtime": True}
    (problem,) = runtime_problems(vc, RuntimeFacts("10.7.0.23", False, "8.7", "Orin"), True)
    assert "runs only on TensorRT 10.3.0.30" in problem


def test_guard_lean_runtime_needs_a_version_compatible_engine():
    problems = runtime_problems(BUILT, RuntimeFacts("10.3.0.30", True, "8.7", "Orin"), False)
    assert any("tensorrt_lean runs only version-compatible engines" in p for p in problems)


def test_guard_hardware_compatible_needs_ampere():
    hc = {**BUILT, "hardware_compatible": True, "compute_capability": "8.6"}
    assert runtime_problems(hc, RuntimeFacts("10.3.0.30", False, "9.0", "H100"), False) == []
    (problem,) = runtime_problems(hc, RuntimeFacts("10.3.0.30", False, "7.5", "T4"), False)
    assert "8.0+" in problem and "T4" in problem


def test_fallback_onnx_resolves_relative_to_the_engine(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x")
    engine = tmp_path / "m.engine"
    assert fallback_onnx(engine, {"engine": BUILT}) == tmp_path / "model.onnx"
    assert fallback_onnx(engine, {"engine": {**BUILT, "source_onnx": "gone.onnx"}}) is None
    assert fallback_onnx(engine, None) is None


# -- fakes: CUDA over host memory, and a TensorRT restricted to TRT_RUNTIME_NAMES -------------------


class FakeCuda(CudaDriver):
    """A CudaDriver whose "device" memory is host memory; copies run at once unless capturing."""

    name = "fake-cuda"
    supports_graphs = True

    def __init__(self, devices: int = 1, capture_fails: bool = False) -> None:
        self.devices = devices
        self.capture_fails = capture_fails
        self.memory: dict[int, ctypes.Array] = {}
        self.capturing: list | None = None
        self.log: list[str] = []
        self.closed = False

    def probe(self):
        return (self.devices, None) if self.devices else (0, "cudaGetDeviceCount: cudaErrorNoDevice")

    def device_info(self, device=0):
        return DeviceInfo(device, "Fake GPU", (8, 7), 1 << 30)

    def set_device(self, device):
        self.log.append(f"set_device {device}")

    def _alloc(self, nbytes):
        buf = ctypes.create_string_buffer(nbytes)
        self.memory[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    malloc_host = malloc = _alloc

    def free_host(self, ptr):
        del self.memory[ptr]

    free = free_host

    def _op(self, what, fn):
        self.log.append(what)
        if self.capturing is not None:
            self.capturing.append(fn)
        else:
            fn()

    def memcpy_htod_async(self, dst, src, nbytes, stream):
        self._op("h2d", lambda: ctypes.memmove(dst, src, nbytes))

    def memcpy_dtoh_async(self, dst, src, nbytes, stream):
        self._op("d2h", lambda: ctypes.memmove(dst, src, nbytes))

    def stream_create(self):
        return "stream"

    def stream_handle(self, stream):
        return 1234

    def stream_synchronize(self, stream):
        self.log.append("sync")

    def stream_destroy(self, stream):
        pass

    def event_create(self):
        return {"t": 0.0}

    def event_record(self, event, stream):
        event["t"] = len(self.log)

    def event_synchronize(self, event):
        self.log.append("event_sync")

    def event_elapsed_ms(self, start, end):
        return float(end["t"] - start["t"])

    def event_destroy(self, event):
        pass

    def graph_begin_capture(self, stream):
        self.log.append("begin_capture")
        self.capturing = []

    def graph_end_capture(self, stream):
        ops, self.capturing = self.capturing, None
        self.log.append("end_capture")
        if self.capture_fails:
            raise CudaError("cudaStreamEndCapture", "cudaErrorStreamCaptureInvalidated")
        return ops

    def graph_instantiate(self, graph):
        return list(graph)

    def graph_launch(self, graph_exec, stream):
        self.log.append("graph_launch")
        for fn in graph_exec:
            fn()

    def graph_destroy(self, graph):
        self.log.append("graph_destroy")

    def graph_exec_destroy(self, graph_exec):
        pass

    def close(self):
        self.closed = True


NAMES = (*TRT_RUNTIME_NAMES, *TRT_OPTIONAL_RUNTIME_NAMES)
ALLOWED = set(NAMES) | {n.split('.')[0] for n in NAMES}


class Strict:
    """Only members listed in TRT_RUNTIME_NAMES are reachable: the fake proves the list is enough."""

    _cls = ""

    def __getattribute__(self, name):
        cls = object.__getattribute__(self, "_cls")
        if not name.startswith("_") and (f"{cls}.{name}" if cls else name) not in ALLOWED:
            raise AttributeError(f"{cls or 'tensorrt'}.{name} is not in TRT_RUNTIME_NAMES")
        return object.__getattribute__(self, name)

    def __setattr__(self, name, value):
        cls = object.__getattribute__(self, "_cls")
        if not name.startswith("_") and f"{cls}.{name}" not in ALLOWED:
            raise AttributeError(f"{cls}.{name} is not in TRT_RUNTIME_NAMES")
        object.__setattr__(self, name, value)


class _Named:
    def __init__(self, name):
        self.name = name


class FakeEngine(Strict):
    """input (-1, 2, 4) -> logits (-1, 3) with logits[i, k] = (k + 1) * sum(input[i]); with
    ``extra``, also features (-1, 2) = (max(input[i]), min(input[i])), as an edgedx export's
    ``features`` output rides beside the logits."""

    _cls = "ICudaEngine"

    def __init__(self, trt, in_dtype="FLOAT", dynamic=True, extra=False):
        self._trt = trt
        self._in_dtype = in_dtype
        self._dynamic = dynamic
        self._names = ["input", "logits", "features"] if extra else ["input", "logits"]

    @property
    def num_io_tensors(self):
        return len(self._names)

    def get_tensor_name(self, i):
        return self._names[i]

    def get_tensor_mode(self, name):
        return self._trt._INPUT if name == "input" else self._trt._OUTPUT

    def get_tensor_shape(self, name):
        b = -1 if self._dynamic else 4
        return (b, *self._trt._row) if name == "input" else (b, 3) if name == "logits" else (b, 2)

    def get_tensor_dtype(self, name):
        return _Named(self._in_dtype if name == "input" else "FLOAT")

    def get_tensor_profile_shape(self, name, profile):
        return [(p[0], *self._trt._row) for p in self._trt._profile]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext(Strict):
    _cls = "IExecutionContext"

    def __init__(self, engine):
        self._engine = engine
        self._batch = None if engine._dynamic else 4
        self._addr = {}
        self._runs = 0

    def set_input_shape(self, name, shape):
        lo, hi = self._engine._trt._profile[0][0], self._engine._trt._profile[2][0]
        if not lo <= shape[0] <= hi or tuple(shape[1:]) != self._engine._trt._row:
            return False
        self._batch = shape[0]
        return True

    def get_tensor_shape(self, name):
        return (self._batch, *self._engine._trt._row) if name == "input" else (self._batch, 3) if name == "logits" else (self._batch, 2)

    def set_tensor_address(self, name, ptr):
        self._addr[name] = ptr

    def execute_async_v3(self, stream):
        n, dtype = self._batch, np.float16 if self._engine._in_dtype == "HALF" else np.float32

        def compute():
            x = np.frombuffer((ctypes.c_byte * (n * 8 * np.dtype(dtype).itemsize)).from_address(self._addr["input"]), dtype)
            sums = x.astype(np.float32).reshape(n, 8).sum(axis=1)
            out = np.outer(sums, np.arange(1, 4, dtype=np.float32))
            ctypes.memmove(self._addr["logits"], out.tobytes(), out.nbytes)
            if "features" in self._addr:
                rows = x.astype(np.float32).reshape(n, 8)
                feats = np.ascontiguousarray(np.stack([rows.max(1), rows.min(1)], 1))
                ctypes.memmove(self._addr["features"], feats.tobytes(), feats.nbytes)

        self._engine._trt._cuda._op("enqueue", compute)
        self._runs += 1
        return True


class FakeRuntime(Strict):
    _cls = "Runtime"

    def __init__(self, logger):
        self._logger = logger
        object.__setattr__(self, "engine_host_code_allowed", False)
        object.__setattr__(self, "DLA_core", -1)

    def deserialize_cuda_engine(self, plan):
        if not plan.startswith(b"PLAN"):
            self._logger.log(FakeTRT.ILogger.Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (magic tag does not match)")
            return None
        return FakeEngine(self._trt, in_dtype=self._trt._in_dtype, dynamic=self._trt._dynamic, extra=self._trt._extra)


class FakeRTXRuntime(FakeRuntime):
    """TensorRT-RTX's runtime: asks the plan's header first."""

    def get_engine_validity(self, plan):
        self._trt._validity_checked = bytes(plan)
        name, diagnostics = self._trt._validity
        return _Named(name), diagnostics


class FakeTRT(Strict):
    _cls = ""

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            pass

    def __init__(self, cuda, version="10.3.0.30", in_dtype="FLOAT", dynamic=True, profile=((1, 2, 4), (2, 2, 4), (4, 2, 4)), validity=None,
                 row=(2, 4), extra=False):
        self._cuda = cuda
        self._extra = extra
        self._row = tuple(row)  # the input's non-batch dims: (1, 2, 4) for an NCHW image model
        self._in_dtype = in_dtype
        self._dynamic = dynamic
        self._profile = profile
        self._validity = validity  # (name, diagnostics): a TensorRT-RTX runtime with get_engine_validity
        self._INPUT, self._OUTPUT = object(), object()
        self._runtimes = []
        object.__setattr__(self, "__version__", version)

    @property
    def TensorIOMode(self):
        return type("TensorIOMode", (), {"INPUT": self._INPUT, "OUTPUT": self._OUTPUT})

    @property
    def EngineInvalidityDiagnostics(self):
        return type("EngineInvalidityDiagnostics", (), {"VERSION_MISMATCH": 1, "UNSUPPORTED_CC": 2, "MALFORMED_ENGINE": 32})

    def Runtime(self, logger):
        runtime = (FakeRTXRuntime if self._validity else FakeRuntime)(logger)
        runtime._trt = self
        self._runtimes.append(runtime)
        return runtime


def write_engine(tmp_path: Path, plan: bytes = b"PLAN-fake", onnx: bool = True, **built) -> Path:
    engine = tmp_path / "model.engine"
    engine.write_bytes(plan)
    if onnx:
        (tmp_path / "model.onnx").write_bytes(b"onnx")
    section = {**BUILT, "sha256": hashlib.sha256(plan).hexdigest(), **built}
    sidecar = {
        "schema": "edgedx.manifest",
        "schema_version": 1,
        "labels": ["NORMAL", "PNEUMONIA"],
        "input": {"name": "input", "layout": "NCHW", "height": 2, "width": 4, "channels": 1},
        "preprocess": {"resize": "stretch", "scale": 1 / 255, "mean": [0.0], "std": [1.0]},
        "output": {"name": "logits", "activation": "softmax"},
        "precision": "fp16",
        "engine": section,
    }
    (tmp_path / "model.engine.json").write_text(json.dumps(sidecar))
    return engine


@pytest.fixture
def fakes(monkeypatch):
    """Install a fake CUDA driver and TensorRT; returns (cuda, trt, calls to import_tensorrt)."""
    state = {"cuda": FakeCuda(), "trt_kwargs": {}, "imports": 0}

    def fake_open_driver(binding="auto"):
        return state["cuda"]

    def fake_import(builder="tensorrt"):
        state["imports"] += 1
        state["builder"] = builder
        state["trt"] = FakeTRT(state["cuda"], **state["trt_kwargs"])
        return state["trt"], state.get("lean", False)

    monkeypatch.setattr(trt_backend, "open_driver", fake_open_driver)
    monkeypatch.setattr(trt_backend, "import_tensorrt", fake_import)
    # --backend tensorrt probes the device before opening anything: the fake driver answers that too.
    import edgedx.cuda.driver as cuda_driver

    monkeypatch.setattr(cuda_driver, "open_driver", fake_open_driver)
    return state


# -- opening: device check, guard, fallback ----------------------------------------------------------


def test_no_cuda_device_is_backend_unavailable_before_any_tensorrt_object(tmp_path, fakes):
    fakes["cuda"] = FakeCuda(devices=0)
    engine = write_engine(tmp_path)
    with pytest.raises(BackendUnavailable) as info:
        TensorRTSession(engine)
    assert info.value.exit_code == 3
    assert "no CUDA device (cudaGetDeviceCount: cudaErrorNoDevice)" in str(info.value)
    assert fakes["imports"] == 0  # TensorRT not even imported, so no TensorRT object exists
    assert info.value.fallback_onnx == tmp_path / "model.onnx"
    assert fakes["cuda"].closed


def test_missing_sidecar_is_an_engine_guard_error(tmp_path, fakes):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"PLAN")
    with pytest.raises(EngineGuardError, match="no sidecar model.engine.json") as info:
        TensorRTSession(engine)
    assert info.value.exit_code == 4
    assert info.value.fallback_onnx is None
    assert fakes["imports"] == 0


def test_hash_mismatch_is_refused_with_the_source_onnx_as_fallback(tmp_path, fakes):
    engine = write_engine(tmp_path)
    engine.write_bytes(b"PLAN-rebuilt")
    with pytest.raises(EngineGuardError, match="sha256 differs") as info:
        TensorRTSession(engine)
    assert info.value.fallback_onnx == tmp_path / "model.onnx"


def test_version_mismatch_is_refused_before_deserializing(tmp_path, fakes):
    fakes["trt_kwargs"] = {"version": "10.7.0.23"}
    engine = write_engine(tmp_path)
    with pytest.raises(EngineGuardError, match="built with TensorRT 10.3.0.30, this machine has 10.7.0.23") as info:
        TensorRTSession(engine)
    assert fakes["trt"]._runtimes == []
    assert info.value.fallback_onnx == tmp_path / "model.onnx"


def test_compute_capability_mismatch_is_refused(tmp_path, fakes):
    engine = write_engine(tmp_path, compute_capability="8.9", gpu_name="NVIDIA L4")
    with pytest.raises(EngineGuardError, match="compute capability 8.9"):
        TensorRTSession(engine)


def test_version_compatible_engine_needs_trust(tmp_path, fakes):
    engine = write_engine(tmp_path, version_compatible=True)
    with pytest.raises(EngineGuardError, match="--trust-engine"):
        TensorRTSession(engine)
    assert fakes["trt"]._runtimes == []
    with TensorRTSession(engine, SessionOptions(trust_engine=True)) as sess:
        assert sess.describe()["tensorrt"] == "10.3.0.30"
    assert fakes["trt"]._runtimes[0].engine_host_code_allowed is True


def test_garbage_plan_gives_a_guard_error_with_tensorrt_detail(tmp_path, fakes):
    engine = write_engine(tmp_path, plan=b"\x00garbage")
    with pytest.raises(EngineGuardError, match="could not deserialize model.engine: .*magic tag") as info:
        TensorRTSession(engine)
    assert info.value.fallback_onnx == tmp_path / "model.onnx"
    assert fakes["cuda"].closed and fakes["cuda"].memory == {}


# -- running -------------------------------------------------------------------------------------------


def expected(batch: np.ndarray) -> np.ndarray:
    sums = batch.astype(np.float32).reshape(len(batch), -1).sum(axis=1)
    return np.outer(sums, np.arange(1, 4, dtype=np.float32))


def test_run_returns_the_first_output_and_timings(tmp_path, fakes):
    engine = write_engine(tmp_path)
    with TensorRTSession(engine) as sess:
        assert sess.inputs[0].shape == (None, 2, 4) and sess.max_batch_size == 4
        batch = np.arange(24, dtype=np.float32).reshape(3, 2, 4)
        out = sess.run(batch)
        np.testing.assert_allclose(out, expected(batch))
        assert out.dtype == np.float32 and out.shape == (3, 3)
        assert set(sess.last_timings()) == {"h2d", "compute", "d2h"}
        with pytest.raises(UsageError, match="exceeds this model's maximum batch 4"):
            sess.run(np.zeros((5, 2, 4), np.float32))
        with pytest.raises(UsageError, match="more than this engine takes"):
            sess.submit(np.zeros((5, 2, 4), np.float32))
        with pytest.raises(UsageError, match="each sample must have shape"):
            sess.run(np.zeros((1, 4, 2), np.float32))
    assert fakes["cuda"].memory == {} and fakes["cuda"].closed


def test_extra_outputs_come_back_per_slot_in_submission_order(tmp_path, fakes):
    """The OOD features and CAM ride beside the logits: copied back only when requested, each
    batch's own rows after its wait(), also with two batches in flight and through CUDA graphs."""
    fakes["trt_kwargs"] = {"extra": True}
    engine = write_engine(tmp_path)
    cuda = fakes["cuda"]
    with TensorRTSession(engine) as sess:
        assert sess.supports_extra_outputs and [o.name for o in sess.outputs] == ["logits", "features"]
        batch = np.arange(24, dtype=np.float32).reshape(3, 2, 4)
        copies = cuda.log.count("d2h")
        np.testing.assert_allclose(sess.run(batch), expected(batch))
        assert sess.last_extras == {} and cuda.log.count("d2h") == copies + 1  # not asked for: not copied
        raw, extras = sess.run_with(batch, ("features",))
        np.testing.assert_allclose(raw, expected(batch))
        np.testing.assert_allclose(extras["features"], [[7, 0], [15, 8], [23, 16]])
        assert extras["features"].dtype == np.float32 and sess.extra_outputs == ()
        sess.request_outputs(("features",))
        for rep in range(3):  # the second run of a shape is captured as a graph, the third launches it
            a, b = sess.input_buffer(2), None
            a[:] = 1.0 + rep
            sess.submit(a)
            b = sess.input_buffer(1)
            b[:] = -5.0
            sess.submit(b)
            np.testing.assert_allclose(sess.wait(), expected(np.full((2, 2, 4), 1.0 + rep)))
            np.testing.assert_allclose(sess.last_extras["features"], [[1.0 + rep, 1.0 + rep]] * 2)
            np.testing.assert_allclose(sess.wait(), expected(np.full((1, 2, 4), -5.0)))
            np.testing.assert_allclose(sess.last_extras["features"], [[-5.0, -5.0]])
        assert "graph_launch" in cuda.log
        with pytest.raises(BackendError, match="no extra output cam"):
            sess.request_outputs(("cam",))
        with pytest.raises(BackendError, match="no extra output logits"):
            sess.request_outputs(("logits",))
    assert cuda.memory == {}


def test_input_buffer_is_pinned_memory_and_submit_copies_nothing(tmp_path, fakes, monkeypatch):
    engine = write_engine(tmp_path)
    with TensorRTSession(engine) as sess:
        buf = sess.input_buffer(2)
        assert buf.dtype == np.float32 and buf.shape == (2, 2, 4)
        assert any(ptr == buf.ctypes.data for ptr in fakes["cuda"].memory)  # the slot's pinned allocation
        buf[:] = 1.0
        copies = []
        real_copyto = np.copyto
        monkeypatch.setattr(np, "copyto", lambda *a, **k: (copies.append(a), real_copyto(*a, **k)))
        out = sess.run(buf)
        assert copies == []
        np.testing.assert_allclose(out, expected(np.ones((2, 2, 4))))
        sess.run(np.ones((2, 2, 4), np.float32))  # a pageable batch is copied in
        assert len(copies) == 1


def test_double_buffering_submit_wait_in_order(tmp_path, fakes):
    engine = write_engine(tmp_path)
    with TensorRTSession(engine) as sess:
        a = sess.input_buffer(2)
        a[:] = 1.0
        sess.submit(a)
        b = sess.input_buffer(2)
        assert b.ctypes.data != a.ctypes.data  # the other slot, free while the GPU runs the first
        b[:] = 2.0
        sess.submit(b)
        assert sess.pending == 2
        with pytest.raises(UsageError, match="call wait"):
            sess.input_buffer(2)
        with pytest.raises(UsageError, match="wait\\(\\) for them first"):
            sess.run(np.ones((1, 2, 4), np.float32))
        np.testing.assert_allclose(sess.wait(), expected(np.full((2, 2, 4), 1.0)))
        assert sess.input_buffer(1).ctypes.data == a.ctypes.data  # slot 0 is free again
        np.testing.assert_allclose(sess.wait(), expected(np.full((2, 2, 4), 2.0)))
        assert sess.pending == 0
        with pytest.raises(UsageError, match="no batch submitted"):
            sess.wait()


def test_cuda_graph_captured_on_the_second_batch_of_a_shape(tmp_path, fakes):
    engine = write_engine(tmp_path)
    cuda = fakes["cuda"]
    with TensorRTSession(engine) as sess:
        for i in range(3):
            batch = np.full((2, 2, 4), float(i), np.float32)
            np.testing.assert_allclose(sess.run(batch), expected(batch))
        log = cuda.log
        assert log.count("begin_capture") == 1
        assert log.count("graph_launch") == 2  # the capturing batch and the next one
        assert log.index("begin_capture") > log.index("enqueue")  # warm-up enqueue first
        assert sess.describe()["cuda_graph"] == "on"
        batch = np.full((3, 2, 4), 5.0, np.float32)  # a new shape drops the graph
        np.testing.assert_allclose(sess.run(batch), expected(batch))
        assert log.count("graph_destroy") == 1 and log.count("graph_launch") == 2


def test_capture_failure_falls_back_to_plain_enqueue(tmp_path, fakes):
    fakes["cuda"] = FakeCuda(capture_fails=True)
    engine = write_engine(tmp_path)
    with TensorRTSession(engine) as sess:
        for i in range(4):
            batch = np.full((2, 2, 4), float(i), np.float32)
            np.testing.assert_allclose(sess.run(batch), expected(batch))
        assert fakes["cuda"].log.count("begin_capture") == 1
        assert "capture failed" in sess.describe()["cuda_graph"]
        assert "cudaErrorStreamCaptureInvalidated" in sess.describe()["cuda_graph"]


def test_cuda_graph_option_off_never_captures(tmp_path, fakes):
    engine = write_engine(tmp_path)
    with TensorRTSession(engine, SessionOptions(cuda_graph=False)) as sess:
        for _ in range(3):
            sess.run(np.ones((2, 2, 4), np.float32))
        assert "begin_capture" not in fakes["cuda"].log
        assert sess.describe()["cuda_graph"] == "off (disabled by option)"


def test_fp16_engine_input_gets_a_float32_staging_buffer(tmp_path, fakes):
    fakes["trt_kwargs"] = {"in_dtype": "HALF"}
    engine = write_engine(tmp_path)
    with TensorRTSession(engine) as sess:
        assert sess.inputs[0].dtype == "float16"
        buf = sess.input_buffer(2)
        assert buf.dtype == np.float32
        buf[:] = 0.5
        np.testing.assert_allclose(sess.run(buf), expected(np.full((2, 2, 4), 0.5)))


def test_fixed_batch_engine_runs_smaller_batches_padded(tmp_path, fakes):
    fakes["trt_kwargs"] = {"dynamic": False}
    engine = write_engine(tmp_path)
    with TensorRTSession(engine) as sess:
        assert sess.inputs[0].shape == (4, 2, 4) and sess.max_batch_size == 4
        for n in (4, 2, 2, 1):
            batch = np.full((n, 2, 4), float(n), np.float32)
            np.testing.assert_allclose(sess.run(batch), expected(batch))
        assert fakes["cuda"].log.count("begin_capture") == 1  # one engine shape: graphs survive batch changes


def test_describe_reports_what_runs(tmp_path, fakes):
    engine = write_engine(tmp_path)
    with TensorRTSession(engine) as sess:
        info = sess.describe()
    assert info == {
        "backend": "tensorrt",
        "tensorrt": "10.3.0.30",
        "runtime": "tensorrt",
        "device": "Fake GPU",
        "compute_capability": "8.7",
        "precision": "fp16",
        "cuda_binding": "fake-cuda",
        "cuda_graph": "on",
        "batch": [1, 2, 4],
        "builder": "tensorrt",
    }


def test_closed_session_refuses_work(tmp_path, fakes):
    engine = write_engine(tmp_path)
    sess = TensorRTSession(engine)
    sess.close()
    sess.close()
    with pytest.raises(UsageError, match="closed"):
        sess.input_buffer(1)
    with pytest.raises(UsageError, match="closed"):
        sess.run(np.ones((1, 2, 4), np.float32))


# -- real TensorRT (pytest -m gpu) -------------------------------------------------------------------


@pytest.fixture
def real_gpu_facts():
    """This machine's TensorRT and GPU, for sidecars that pass the guard; skips without them."""
    from tests.conftest import cuda_device

    device = cuda_device()
    try:
        trt, lean = trt_backend.import_tensorrt()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    return {
        "tensorrt_version": str(trt.__version__),
        "compute_capability": device.sm,
        "gpu_name": device.name,
        "version_compatible": lean,  # the lean runtime checks only version-compatible engines
    }


@pytest.mark.gpu
@pytest.mark.parametrize("plan", [b"\x00" * 4096, b"ftrt" + bytes(range(256)) * 8], ids=["zeros", "garbage"])
def test_gpu_garbage_plan_is_a_clear_error_not_a_crash(tmp_path, real_gpu_facts, plan):
    engine = write_engine(tmp_path, plan=plan, **real_gpu_facts)
    with pytest.raises(EngineGuardError, match="could not deserialize model.engine"):
        TensorRTSession(engine, SessionOptions(trust_engine=True))


# -- first-contact fixes over the fakes ------------------------------------------------------------


def test_an_n_to_n_profile_runs_a_smaller_tail_batch_padded(tmp_path, fakes):
    """`--batch 4` used to build 4..4 and refuse a folder's tail; now the tail runs padded."""
    fakes["trt_kwargs"] = {"profile": ((4, 2, 4), (4, 2, 4), (4, 2, 4))}
    engine = write_engine(tmp_path)
    with TensorRTSession(engine) as sess:
        assert sess.max_batch_size == 4
        full = np.full((4, 2, 4), 1.0, np.float32)
        np.testing.assert_allclose(sess.run(full), expected(full))
        buf = sess.input_buffer(3)
        buf[:] = np.arange(24, dtype=np.float32).reshape(3, 2, 4)
        got = sess.run(buf)
        assert got.shape == (3, 3)
        np.testing.assert_allclose(got, expected(np.arange(24, dtype=np.float32).reshape(3, 2, 4)))
        one = np.full((1, 2, 4), 2.0, np.float32)
        np.testing.assert_allclose(sess.run(one), expected(one))


def three_label_engine(tmp_path: Path) -> Path:
    """An image-model engine (N, 1, 2, 4) -> 3 logits, with a sidecar of three labels."""
    engine = write_engine(tmp_path)
    sidecar = json.loads((tmp_path / "model.engine.json").read_text())
    sidecar["labels"] = ["a", "b", "c"]
    (tmp_path / "model.engine.json").write_text(json.dumps(sidecar))
    return engine


def test_the_classifier_answers_every_image_of_a_folder_whose_size_the_batch_does_not_divide(tmp_path, fakes):
    from edgedx.api import Classifier

    fakes["trt_kwargs"] = {"profile": ((4,), (4,), (4,)), "row": (1, 2, 4)}
    engine = three_label_engine(tmp_path)
    images = [np.full((2, 4), 10 * i, np.uint8) for i in range(6)]
    with Classifier(engine, "tensorrt", batch_size=4, use_gate=False, workers=0) as clf:
        probs = clf.predict_proba(images)
        results = list(clf.classify_many(images))
    assert probs.shape == (6, 3)
    assert [r.status for r in results] == ["ok"] * 6


def test_a_classifier_batch_larger_than_the_engine_is_said_not_silently_capped(tmp_path, fakes, caplog):
    from edgedx.api import Classifier

    fakes["trt_kwargs"] = {"row": (1, 2, 4)}
    engine = three_label_engine(tmp_path)
    with caplog.at_level("WARNING", logger="edgedx"), Classifier(engine, "tensorrt", batch_size=16, workers=0) as clf:
        assert clf.batch_size == 4
    (message,) = [r.getMessage() for r in caplog.records if "batch size" in r.getMessage()]
    assert "batch size 16 is more than model.engine takes (at most 4): running batches of 4" in message
    assert "--batch 1,16,16" in message


class RaisingCapture(FakeCuda):
    """A driver whose capture breaks inside TensorRT's enqueue (not a CudaError)."""

    def __init__(self):
        super().__init__()
        self.cleared = 0
        self.open_captures = 0

    def graph_begin_capture(self, stream):
        super().graph_begin_capture(stream)
        self.open_captures += 1

    def graph_end_capture(self, stream):
        self.open_captures -= 1
        return super().graph_end_capture(stream)

    def clear_error(self):
        self.cleared += 1


def test_a_capture_failure_of_any_kind_is_cleaned_up_once_and_graphs_stay_off(tmp_path, fakes, monkeypatch):
    fakes["cuda"] = cuda = RaisingCapture()
    engine = write_engine(tmp_path)
    with TensorRTSession(engine) as sess:
        real = sess._context.execute_async_v3

        def execute(stream):
            if cuda.capturing is not None:
                raise RuntimeError("TensorRT: enqueue is not capturable for this engine")
            return real(stream)

        object.__setattr__(sess._context, "execute_async_v3", execute)
        for i in range(5):
            batch = np.full((2, 2, 4), float(i), np.float32)
            np.testing.assert_allclose(sess.run(batch), expected(batch))
        assert cuda.log.count("begin_capture") == 1  # never retried
        assert cuda.open_captures == 0  # the capture was ended
        assert cuda.log.count("graph_destroy") == 1  # and its partial graph freed
        assert cuda.cleared == 1  # CUDA's last error reset, once
        assert "capture failed: TensorRT: enqueue is not capturable" in sess.describe()["cuda_graph"]


def test_graphs_are_destroyed_before_the_context_and_engine_on_close(tmp_path, fakes):
    cuda = fakes["cuda"]
    engine = write_engine(tmp_path)
    sess = TensorRTSession(engine)
    seen = []
    original = cuda.graph_destroy

    def graph_destroy(graph):
        seen.append((sess._context is not None, sess._engine is not None))
        original(graph)

    cuda.graph_destroy = graph_destroy
    for _ in range(2):
        sess.run(np.ones((2, 2, 4), np.float32))
    assert sess._graph is not None
    sess.close()
    assert seen == [(True, True)]
    assert sess._context is None and sess._engine is None and cuda.closed


def test_an_rtx_engine_loads_tensorrt_rtx_and_runs_on_any_target(tmp_path, fakes):
    fakes["trt_kwargs"] = {"version": "1.7.1.116", "validity": ("VALID", 0)}
    engine = write_engine(tmp_path, builder="tensorrt-rtx", tensorrt_version="1.7.1.116", gpu_name=None, compute_capability=None,
                          compute_capabilities=["8.6", "8.7", "12.0"])
    with TensorRTSession(engine) as sess:
        assert fakes["builder"] == "tensorrt-rtx"
        assert fakes["trt"]._validity_checked == b"PLAN-fake"
        info = sess.describe()
        assert info["runtime"] == "tensorrt_rtx" and info["builder"] == "tensorrt-rtx"
        batch = np.ones((3, 2, 4), np.float32)
        np.testing.assert_allclose(sess.run(batch), expected(batch))


def test_an_rtx_engine_not_built_for_this_gpu_is_refused_with_the_rebuild(tmp_path, fakes):
    fakes["trt_kwargs"] = {"version": "1.7.1.116", "validity": ("VALID", 0)}
    engine = write_engine(tmp_path, builder="tensorrt-rtx", tensorrt_version="1.7.1.116", gpu_name=None, compute_capability=None,
                          compute_capabilities=["8.6", "8.9", "12.0"])
    with pytest.raises(EngineGuardError, match=r"built for compute capability 8.6, 8.9, 12.0; this GPU \(Fake GPU\) is 8.7: rebuild it with --compute-capability 8.7") as info:
        TensorRTSession(engine)
    assert info.value.fallback_onnx == tmp_path / "model.onnx"


def test_get_engine_validity_refusal_is_a_guard_error_naming_the_diagnostics(tmp_path, fakes):
    fakes["trt_kwargs"] = {"version": "1.7.1.116", "validity": ("INVALID", 1 | 32)}
    engine = write_engine(tmp_path, builder="tensorrt-rtx", tensorrt_version="1.7.1.116", compute_capabilities=["8.7"])
    with pytest.raises(EngineGuardError, match="TensorRT-RTX says the engine cannot run here: built with another TensorRT-RTX version; the plan is malformed") as info:
        TensorRTSession(engine)
    assert info.value.fallback_onnx == tmp_path / "model.onnx"
    assert fakes["trt"]._runtimes and not hasattr(fakes["trt"], "_engines")


def test_guard_rtx_versions_and_families():
    rtx = {**BUILT, "builder": "tensorrt-rtx", "tensorrt_version": "1.7.1.116", "compute_capabilities": ["8.6", "12.0"]}
    assert runtime_problems(rtx, RuntimeFacts("1.7.1.116", False, "12.0", "RTX 5090", "tensorrt-rtx"), False) == []
    (problem,) = runtime_problems(rtx, RuntimeFacts("1.8.0.1", False, "8.6", "RTX A6000", "tensorrt-rtx"), False)
    assert "built with TensorRT-RTX 1.7.1.116, this machine has 1.8.0.1" in problem
    (problem,) = runtime_problems(BUILT, RuntimeFacts("1.7.1.116", False, "8.7", "Orin", "tensorrt-rtx"), False)
    assert "engine built with tensorrt, this runtime is tensorrt-rtx" in problem


def test_validity_problems():
    flags = {"VERSION_MISMATCH": 1, "UNSUPPORTED_CC": 2, "OLD_CUDA_DRIVER": 4}
    assert trt_guard.validity_problems("VALID", 0, flags) == []
    assert trt_guard.validity_problems("SUBOPTIMAL", 0, flags) == []
    (problem,) = trt_guard.validity_problems("INVALID", 2 | 4, flags)
    assert problem.endswith("not built for this GPU's compute capability; the NVIDIA driver is too old for it")


def test_no_cuda_binding_at_all_still_offers_the_source_onnx(tmp_path, fakes, monkeypatch):
    def no_binding(binding="auto"):
        raise BackendUnavailable("no CUDA Python binding installed: pip install cuda-python (or pycuda)")

    monkeypatch.setattr(trt_backend, "open_driver", no_binding)
    engine = write_engine(tmp_path)
    with pytest.raises(BackendUnavailable, match="no CUDA Python binding") as info:
        TensorRTSession(engine)
    assert info.value.fallback_onnx == tmp_path / "model.onnx"
    assert fakes["imports"] == 0


def test_tensorrt_rtx_missing_is_backend_unavailable_with_the_install_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_rtx(name, *args, **kwargs):
        if name == "tensorrt_rtx":
            raise ImportError("No module named 'tensorrt_rtx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rtx)
    with pytest.raises(BackendUnavailable, match=r"pip install 'edgedx\[rtx\]'"):
        trt_runtime.import_tensorrt("tensorrt-rtx")
    with pytest.raises(BackendUnavailable, match="engine built with 'trt9'"):
        trt_runtime.import_tensorrt("trt9")


def test_trust_plan_fetches_features_and_cam_from_a_tensorrt_session(tmp_path, fakes):
    """With extra outputs on TensorRT, the OOD feature score and heatmaps run there too (no warning)."""
    from edgedx import manifest as manifest_mod
    from edgedx import ood, trust
    from tests.factories import manifest_dict

    fakes["trt_kwargs"] = {"extra": True}
    data = manifest_dict()
    data["output"].update(features="features")
    data["ood"] = {**ood.fit(np.random.default_rng(0).normal(size=(50, 2)), rank=1), "threshold": 3.0}
    m = manifest_mod.from_dict(data)
    with TensorRTSession(write_engine(tmp_path)) as sess:
        p = trust.plan(m, sess, use_gate=True, heatmap_dir=None)
        assert p.scorer is not None and p.names == ("features",) and p.notes == []
