"""TensorRT backend: a guarded engine load, pinned double-buffered I/O, CUDA events and graphs.

Opening an engine, in order:

1. the sidecar ``<engine>.json`` exists, is a valid manifest with an ``engine`` section, and its
   sha256 matches the plan file (:func:`file_problems`);
2. a CUDA device exists (no TensorRT object is created without one: TensorRT can crash the process);
3. the installed TensorRT version and this GPU's compute capability are ones the engine runs on
   (for a TensorRT-RTX plan: any of the compute capabilities it was built for), and engines that
   carry host code (version-compatible) are trusted (:func:`runtime_problems`);
4. the plan is deserialized with ``tensorrt`` or, when only it is installed, ``tensorrt_lean``;
   with ``tensorrt_rtx`` when the sidecar says ``"builder": "tensorrt-rtx"``, after the runtime's
   own ``get_engine_validity`` check where it offers one.

A failure of 1, 3 or 4 raises :class:`EngineGuardError` whose ``fallback_onnx`` names the engine's
source ONNX when it still exists, so ``backend="auto"`` can run that on ONNX Runtime instead. The
checks live in :mod:`edgedx.backends.trt_guard`, the TensorRT import, logger and name list in
:mod:`edgedx.backends.trt_runtime`; their public names are importable from here too.

Double buffering: the session owns two pinned input slots. ``input_buffer(n)`` hands out the free
slot; ``submit(batch)`` queues H2D copy, inference and D2H copy on the session's stream and returns
at once; ``wait()`` returns the oldest submitted batch's output. The CPU fills the other slot while
the GPU runs::

    buf = sess.input_buffer(n); fill(buf, batch0); sess.submit(buf)
    for batch in rest:
        buf = sess.input_buffer(len(batch)); fill(buf, batch)   # while the GPU runs the previous one
        out = sess.wait()                                       # previous batch's output
        sess.submit(buf)
    out = sess.wait()

``run(batch)`` is ``submit`` then ``wait``. Outputs are returned as new float32 arrays
(``reuses_output_buffers`` is False). The engine's other outputs (an edgedx export's ``features``
and ``cam``) are computed with every batch anyway; those named by ``request_outputs`` are copied
back too, per slot, and come out in ``last_extras`` after ``wait()``. Any batch of 1..the profile's max runs: below the profile's
min (an N..N engine given a folder's tail batch) or below a fixed batch, the input is padded with
zero rows, which are computed and dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgedx import manifest as manifest_mod
from edgedx.backends.base import Session, TensorSpec
from edgedx.backends.trt_guard import (  # noqa: F401  (re-exported: the guard's names were public here)
    HARDWARE_COMPATIBLE_MIN_MAJOR,
    EngineGuardError,
    RuntimeFacts,
    engine_builder,
    fallback_onnx,
    file_problems,
    read_sidecar,
    runtime_problems,
    sha256_file,
    validity_problems,
)
from edgedx.backends.trt_runtime import RUNTIME_MODULES, TRT_RUNTIME_NAMES, import_tensorrt, make_logger  # noqa: F401  (re-exported)
from edgedx.cuda import Resources, open_driver
from edgedx.cuda.pipeline import BatchRange, GraphAction, SlotRing, graph_action, max_shape, numpy_dtype, tensor_nbytes
from edgedx.errors import BackendError, BackendUnavailable, ModelError, UsageError

log = logging.getLogger("edgedx")


@dataclass
class _Slot:
    """One pinned input buffer with its output buffer and the four events that time a batch."""

    host_in: np.ndarray
    host_out: np.ndarray
    staging: np.ndarray | None  # float32 buffer to preprocess into when the engine input is not float32
    events: tuple[Any, Any, Any, Any]
    host_extra: dict[str, np.ndarray]  # pinned memory of the engine's other outputs
    batch: int = 0
    extras: tuple[str, ...] = ()  # the extra outputs copied back for this slot's batch


# -- the session --------------------------------------------------------------------------------


class TensorRTSession(Session):
    """A TensorRT engine on one CUDA stream with two pinned input slots (see the module docstring)."""

    name = "tensorrt"
    reuses_output_buffers = False
    slots = 2

    def _open(self) -> None:
        self._driver: Any = None
        self._res: Resources | None = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._graph: tuple[Any, Any] | None = None  # (graph, graph_exec) for the context's current shape
        self._graph_off: str | None = None
        self._timings: dict[str, float] = {}
        try:
            self._load()
        except BaseException:
            self._release()
            raise

    # -- loading ----------------------------------------------------------------------------

    def _load(self) -> None:
        path = self.model_path
        sidecar_path = manifest_mod.sidecar_path(path)
        sidecar = read_sidecar(sidecar_path)
        fallback = fallback_onnx(path, sidecar)
        problems = file_problems(sidecar, sha256_file(path), sidecar_path.name)
        if problems:
            raise EngineGuardError(f"{path.name}: " + "; ".join(problems), fallback)
        try:
            self.manifest = manifest_mod.from_dict(sidecar, str(sidecar_path))
        except ModelError as exc:
            raise EngineGuardError(str(exc), fallback) from None
        built = self.manifest.engine

        # A CUDA device must exist before any TensorRT object does.
        try:
            self._driver = open_driver(self.options.cuda_binding)
            count, why = self._driver.probe()
            if count == 0:
                raise BackendUnavailable(f"no CUDA device ({why}): TensorRT needs an NVIDIA GPU and driver; run the ONNX model on onnxruntime instead")
        except BackendUnavailable as exc:
            exc.fallback_onnx = fallback  # type: ignore[attr-defined]  # read by the API's backend=auto fallback
            raise
        self._binding, self._graphs_supported = self._driver.name, self._driver.supports_graphs
        self._driver.set_device(0)
        self.device = self._driver.device_info(0)

        builder = engine_builder(built)
        try:
            trt, lean = import_tensorrt(builder)
        except BackendUnavailable as exc:
            exc.fallback_onnx = fallback  # type: ignore[attr-defined]
            raise
        self._trt, self._lean, self._builder = trt, lean, builder
        facts = RuntimeFacts(str(trt.__version__), lean, self.device.sm, self.device.name, builder)
        problems = runtime_problems(built, facts, self.options.trust_engine)
        if problems:
            raise EngineGuardError(f"{path.name}: " + "; ".join(problems), fallback)

        self._logger = make_logger(trt)
        runtime = trt.Runtime(self._logger)
        self._runtime = runtime
        if built.get("version_compatible"):
            runtime.engine_host_code_allowed = True  # trusted: checked above
        dla_core = (built.get("build") or {}).get("dla_core")
        if dla_core is not None:
            runtime.DLA_core = int(dla_core)
        plan = path.read_bytes()
        if hasattr(runtime, "get_engine_validity"):  # TensorRT-RTX: asks the plan's header, cheaply
            validity, diagnostics = runtime.get_engine_validity(plan)
            flags = {name: int(getattr(trt.EngineInvalidityDiagnostics, name)) for name in dir(trt.EngineInvalidityDiagnostics) if name.isupper()}
            problems = validity_problems(getattr(validity, "name", str(validity)), int(diagnostics), flags)
            if problems:
                raise EngineGuardError(f"{path.name}: " + "; ".join(problems), fallback)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            detail = self._logger.errors[-1] if self._logger.errors else "no detail from TensorRT"
            raise EngineGuardError(f"TensorRT {trt.__version__} could not deserialize {path.name}: {detail}", fallback)
        self._engine = engine
        self._setup_io(trt, engine)

    def _setup_io(self, trt: Any, engine: Any) -> None:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or not outs:
            raise ModelError(f"{self.model_path.name} has {len(ins)} inputs and {len(outs)} outputs; edgedx serves single-input image models")
        inp = ins[0]
        in_shape = tuple(int(d) for d in engine.get_tensor_shape(inp))
        profile = None
        if any(d < 0 for d in in_shape):
            profile = [tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(inp, 0)]
        self._batch = BatchRange.from_profile(in_shape, profile)
        in_max = max_shape(in_shape, profile[2] if profile else None)
        self._in_dtype = np.dtype(numpy_dtype(engine.get_tensor_dtype(inp).name, inp))
        self._input = inp
        self._in_row = in_max[1:]
        self._dynamic = profile is not None

        context = engine.create_execution_context()
        if context is None:
            raise BackendError(f"TensorRT could not create an execution context for {self.model_path.name} (out of GPU memory?)")
        self._context = context
        if self._dynamic and not context.set_input_shape(inp, in_max):
            raise ModelError(f"engine rejects its own profile's max input shape {in_max}")
        self._context_batch = in_max[0]
        out_max = {o: max_shape(tuple(int(d) for d in context.get_tensor_shape(o)), None) for o in outs}
        out_dtypes = {o: np.dtype(numpy_dtype(engine.get_tensor_dtype(o).name, o)) for o in outs}

        res = self._res = Resources(self._driver)
        self._stream = res.stream()
        self._stream_handle = self._driver.stream_handle(self._stream)
        self._d_in = res.device(tensor_nbytes(in_max, self._in_dtype.itemsize))
        context.set_tensor_address(inp, self._d_in)
        self._d_out = {o: res.device(tensor_nbytes(out_max[o], out_dtypes[o].itemsize)) for o in outs}
        for o, ptr in self._d_out.items():
            context.set_tensor_address(o, ptr)
        self._output = outs[0]
        self._out_dtype = out_dtypes[self._output]
        self._out_row = out_max[self._output][1:]
        self._extra_rows = {o: out_max[o][1:] for o in outs[1:]}
        staging = self._in_dtype != np.float32
        self._slots = [
            _Slot(
                host_in=res.pinned(in_max, self._in_dtype),
                host_out=res.pinned(out_max[self._output], self._out_dtype),
                staging=np.empty(in_max, np.float32) if staging else None,
                events=(res.event(), res.event(), res.event(), res.event()),
                host_extra={o: res.pinned(out_max[o], out_dtypes[o]) for o in outs[1:]},
            )
            for _ in range(2)
        ]
        self._ring = SlotRing(len(self._slots))
        self._warm = 0  # plain enqueues at the context's current shape

        def spec(name: str, shape: tuple[int, ...], dtype: np.dtype) -> TensorSpec:
            return TensorSpec(name, tuple(None if d < 0 else d for d in shape), dtype.name)

        self.inputs = [spec(inp, in_shape, self._in_dtype)]
        self.outputs = [spec(o, tuple(int(d) for d in engine.get_tensor_shape(o)), out_dtypes[o]) for o in outs]

    # -- public extras ----------------------------------------------------------------------

    @property
    def max_batch_size(self) -> int | None:
        return self._batch.max

    @property
    def supports_extra_outputs(self) -> bool:
        return True

    def request_outputs(self, names: tuple[str, ...]) -> None:
        """Copy these engine outputs back with every batch from now on (:meth:`Session.request_outputs`).

        Raises:
            BackendError: the engine has no output of that name (or it is the first output).
        """
        self._check_open()
        unknown = [n for n in names if n not in self._extra_rows]
        if unknown:
            raise BackendError(f"{self.model_path.name} has no extra output {', '.join(unknown)} "
                               f"(it has: {', '.join(self._extra_rows) or 'none'})")
        super().request_outputs(names)

    @property
    def pending(self) -> int:
        """Batches submitted and not yet waited for (0, 1 or 2)."""
        return self._ring.pending

    def _input_buffer(self, batch_size: int) -> np.ndarray:
        """A float32 (N, ...) view to preprocess into: the free slot's pinned input memory itself
        when the engine takes float32 (``submit`` then copies nothing), else a staging buffer.
        Valid until the batch built in it is submitted; call ``submit`` before asking again."""
        self._batch.check(batch_size)
        slot = self._slots[self._ring.free_slot()]
        return (slot.staging if slot.staging is not None else slot.host_in)[:batch_size]

    def _submit(self, batch: np.ndarray) -> None:
        """Queue one batch (H2D, inference, D2H) on the stream and return without waiting.

        At most two batches are in flight; ``wait()`` returns their outputs in submission order.

        Raises:
            UsageError: wrong shape, batch outside the profile, or two pending.
            BackendError: a CUDA or TensorRT call failed.
        """
        n = batch.shape[0]
        self._batch.check(n)
        if batch.shape[1:] != self._in_row:
            raise UsageError(f"each sample must have shape {self._in_row}, got {batch.shape[1:]}")
        index = self._ring.free_slot()
        slot = self._slots[index]
        host = slot.host_in[:n]
        if not _same_buffer(batch, host):  # input_buffer() views are already in pinned memory
            np.copyto(host, batch, casting="same_kind")
        slot.extras = self.extra_outputs
        self._enqueue(slot, n)
        self._ring.submit()

    def _wait(self) -> np.ndarray:
        """The oldest submitted batch's first output as a new float32 (N, ...) array.

        One event synchronize per batch; ``last_timings()`` then holds its stages.
        """
        slot = self._slots[self._ring.complete()]
        cuda, (e0, e1, e2, e3) = self._driver, slot.events
        cuda.event_synchronize(e3)
        self._timings = {
            "h2d": cuda.event_elapsed_ms(e0, e1),
            "compute": cuda.event_elapsed_ms(e1, e2),
            "d2h": cuda.event_elapsed_ms(e2, e3),
        }
        self.last_extras = {name: _rows(slot.host_extra[name], slot.batch, self._extra_rows[name]) for name in slot.extras}
        return _rows(slot.host_out, slot.batch, self._out_row)

    def last_timings(self) -> dict[str, float]:
        return dict(self._timings)

    def describe(self) -> dict[str, Any]:
        built = self.manifest.engine
        if not self.options.cuda_graph:
            graph = "off (disabled by option)"
        elif not self._graphs_supported:
            graph = f"off ({self._binding} cannot capture graphs)"
        elif self._graph_off:
            graph = f"off ({self._graph_off})"
        else:
            graph = "on"
        return {
            "backend": self.name,
            "tensorrt": str(self._trt.__version__),
            "runtime": "tensorrt_lean" if self._lean else RUNTIME_MODULES.get(self._builder, self._builder),
            "builder": self._builder,
            "device": self.device.name,
            "compute_capability": self.device.sm,
            "precision": built.get("precision", self.manifest.precision),
            "cuda_binding": self._binding,
            "cuda_graph": graph,
            "batch": [self._batch.min, self._batch.opt, self._batch.max],
        }

    # -- the Session template ----------------------------------------------------------------

    def _close(self) -> None:
        self._release()

    # -- internals ---------------------------------------------------------------------------

    def _enqueue(self, slot: _Slot, n: int) -> None:
        cuda, stream = self._driver, self._stream
        e0, e1, e2, e3 = slot.events
        rows = self._shape_of(n)
        if rows > n:
            slot.host_in[n:rows] = 0  # padding: computed and dropped
        action, why = graph_action(
            enabled=self.options.cuda_graph,
            supported=cuda.supports_graphs,
            failed=self._graph_off is not None,
            has_graph=self._graph is not None and rows == self._context_batch,
            warm_runs=self._warm if rows == self._context_batch else 0,
        )
        cuda.event_record(e0, stream)
        cuda.memcpy_htod_async(self._d_in, slot.host_in.ctypes.data, rows * _row_nbytes(slot.host_in), stream)
        cuda.event_record(e1, stream)
        if action is not GraphAction.LAUNCH:
            self._set_batch(rows)
        if action is GraphAction.CAPTURE and not self._capture():
            action = GraphAction.ENQUEUE
        if action is GraphAction.ENQUEUE:
            self._execute()
            self._warm += 1
        else:  # captured just now, or earlier
            cuda.graph_launch(self._graph[1], stream)
        cuda.event_record(e2, stream)
        out_bytes = n * _row_nbytes(slot.host_out)
        cuda.memcpy_dtoh_async(slot.host_out.ctypes.data, self._d_out[self._output], out_bytes, stream)
        for name in slot.extras:
            host = slot.host_extra[name]
            cuda.memcpy_dtoh_async(host.ctypes.data, self._d_out[name], n * _row_nbytes(host), stream)
        cuda.event_record(e3, stream)
        slot.batch = n
        log.debug("tensorrt batch %d: %s (%s)", n, action.value, why)

    def _shape_of(self, n: int) -> int:
        """The batch the engine runs for ``n`` samples: ``n``, the profile's min when ``n`` is
        smaller (padded), or the fixed batch (padded)."""
        return self._batch.rows(n) if self._dynamic else self._context_batch

    def _set_batch(self, n: int) -> None:
        if self._dynamic and n != self._context_batch:
            shape = (n, *self._in_row)
            self._destroy_graphs()  # captured for the old shape
            if not self._context.set_input_shape(self._input, shape):
                raise BackendError(f"TensorRT rejected input shape {shape}")
            self._context_batch = n
            self._warm = 0

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._stream_handle):
            detail = self._logger.errors[-1] if self._logger.errors else "no detail from TensorRT"
            raise BackendError(f"TensorRT enqueue failed: {detail}")

    def _capture(self) -> bool:
        """Capture the enqueue for the current shape into a graph; on failure clean up once and turn graphs off.

        Whatever fails (the binding, TensorRT refusing to enqueue while capturing, instantiation),
        the capture is ended, a partial graph is destroyed, CUDA's last error is cleared, and graphs
        stay off for this session (``describe()`` says why), so later batches enqueue plainly.

        Returns True when a graph now exists (the caller launches it), False to enqueue plainly.
        """
        cuda, stream = self._driver, self._stream
        graph = None
        capturing = False
        try:
            cuda.graph_begin_capture(stream)
            capturing = True
            try:
                captured = self._context.execute_async_v3(self._stream_handle)
            finally:
                capturing = False
                graph = cuda.graph_end_capture(stream)
            if not captured:
                raise BackendError("execute_async_v3 returned False during capture")
            self._graph = (graph, cuda.graph_instantiate(graph))
            return True
        except Exception as exc:  # noqa: BLE001 (any failure: fall back to plain enqueues, once)
            self._graph_off = f"capture failed: {exc}"
            log.warning("CUDA graph capture failed (%s); running plain TensorRT enqueues from now on", exc)
            self._abandon_capture(graph, capturing)
            return False

    def _abandon_capture(self, graph: Any, capturing: bool) -> None:
        """Free what a failed capture left: end a capture still open, destroy its graph, clear the error."""
        cuda = self._driver
        if capturing:
            try:
                graph = cuda.graph_end_capture(self._stream)
            except Exception as exc:  # noqa: BLE001
                log.debug("ending the failed capture: %s", exc)
        if graph is not None:
            try:
                cuda.graph_destroy(graph)
            except Exception as exc:  # noqa: BLE001
                log.debug("destroying the failed capture's graph: %s", exc)
        cuda.clear_error()

    def _destroy_graphs(self) -> None:
        """Drop the captured graph (CUDA frees an in-flight graph when its launch completes)."""
        if self._graph is not None:
            (graph, graph_exec), self._graph = self._graph, None
            self._driver.graph_exec_destroy(graph_exec)
            self._driver.graph_destroy(graph)

    def _release(self) -> None:
        """Free in dependency order: wait for the stream, destroy CUDA graphs (they reference the
        context's kernels and memory), drop the context, engine and runtime, then free memory."""
        try:
            if self._res is not None and self._driver is not None and hasattr(self, "_stream"):
                self._driver.stream_synchronize(self._stream)
        finally:
            try:
                if self._driver is not None:
                    self._destroy_graphs()
            finally:
                self._context = None
                self._engine = None
                self._runtime = None
                try:
                    if self._res is not None:
                        res, self._res = self._res, None
                        res.close()
                finally:
                    if self._driver is not None:
                        driver, self._driver = self._driver, None
                        driver.close()


def _rows(host: np.ndarray, n: int, row: tuple[int, ...]) -> np.ndarray:
    """The first ``n`` rows of a pinned output buffer as a new float32 (n, *row) array."""
    flat = host.reshape(-1)[: n * int(np.prod(row, dtype=np.int64))]
    return flat.reshape((n, *row)).astype(np.float32, copy=True)


def _row_nbytes(buffer: np.ndarray) -> int:
    return buffer[0].nbytes if buffer.ndim else buffer.nbytes


def _same_buffer(batch: np.ndarray, host: np.ndarray) -> bool:
    return (
        batch.dtype == host.dtype
        and batch.shape == host.shape
        and batch.flags.c_contiguous
        and batch.ctypes.data == host.ctypes.data
    )
