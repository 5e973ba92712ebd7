"""Pure decisions of a GPU inference pipeline, kept apart so they are tested without a GPU.

- :func:`tensor_nbytes` / :func:`max_shape`: buffer sizes from optimization-profile shapes.
- :class:`SlotRing`: which pinned input slot the CPU fills next while the GPU runs the other one.
- :func:`graph_action`: launch a captured CUDA graph, capture one, or enqueue plainly.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from edgedx.errors import ModelError, UsageError

#: TensorRT DataType name -> numpy dtype name (BF16/FP8/INT4 have no numpy type: refused).
TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}


def numpy_dtype(trt_dtype_name: str, tensor: str) -> str:
    """The numpy dtype for a TensorRT ``DataType`` name.

    Raises:
        ModelError: the engine has an I/O tensor of a type numpy cannot hold.
    """
    try:
        return TRT_DTYPES[trt_dtype_name]
    except KeyError:
        raise ModelError(f"engine tensor {tensor!r} has type {trt_dtype_name}, which edgedx cannot feed or read") from None


def max_shape(shape: Sequence[int], profile_max: Sequence[int] | None) -> tuple[int, ...]:
    """The largest shape a tensor takes: ``profile_max`` for inputs with dynamic dimensions,
    else ``shape`` itself (which must then be fully static).

    Raises:
        ModelError: a dynamic dimension has no profile bound.
    """
    if profile_max is not None:
        if len(profile_max) != len(shape) or any(d >= 0 and d != m for d, m in zip(shape, profile_max)):
            raise ModelError(f"optimization profile max {tuple(profile_max)} does not fit tensor shape {tuple(shape)}")
        return tuple(int(d) for d in profile_max)
    if any(d < 0 for d in shape):
        raise ModelError(f"tensor shape {tuple(shape)} has dynamic dimensions and no profile bound")
    return tuple(int(d) for d in shape)


def tensor_nbytes(shape: Sequence[int], itemsize: int) -> int:
    if any(d < 0 for d in shape):
        raise ModelError(f"cannot size a buffer for dynamic shape {tuple(shape)}")
    return math.prod(shape) * itemsize


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes an engine's profile 0 accepts (from ``get_tensor_profile_shape``)."""

    min: int
    opt: int
    max: int

    @classmethod
    def from_profile(cls, shape: Sequence[int], profile: Sequence[Sequence[int]] | None) -> BatchRange:
        """``shape`` is the engine's input shape (-1 where dynamic); ``profile`` its (min, opt, max).

        A fixed-batch engine accepts 1..its batch: smaller batches run padded (the rows past N are
        computed and ignored).
        """
        if shape[0] >= 0:
            return cls(1, shape[0], shape[0])
        if profile is None:
            raise ModelError(f"input shape {tuple(shape)} has a dynamic batch but the engine has no optimization profile")
        lo, opt, hi = (int(p[0]) for p in profile)
        return cls(lo, opt, hi)

    def check(self, n: int) -> None:
        """Any batch of 1..max runs (below ``min`` padded to ``min``: see :meth:`rows`).

        Raises:
            UsageError: ``n`` is above the engine's max, naming how to rebuild for it.
        """
        if n < 1:
            raise UsageError(f"batch of {n}: need at least one sample")
        if n > self.max:
            raise UsageError(
                f"batch of {n} is more than this engine takes (profile {self.min}..{self.max}): use a batch size of at most "
                f"{self.max}, or rebuild the engine with edgedx export engine --batch 1,{n},{n}"
            )

    def rows(self, n: int) -> int:
        """The batch the engine runs for ``n`` samples: ``n``, or ``min`` when ``n`` is smaller (padded)."""
        return max(n, self.min)


class SlotRing:
    """Double buffering: ``slots`` pinned input buffers used round-robin, at most ``slots`` in flight.

    The CPU fills :meth:`free_slot` while the GPU works on earlier slots; :meth:`submit` marks it
    in flight; :meth:`complete` retires the oldest in-flight slot (FIFO, the stream's order).
    """

    def __init__(self, slots: int = 2) -> None:
        if slots < 1:
            raise ValueError("need at least one slot")
        self.slots = slots
        self._next = 0
        self._pending: deque[int] = deque()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def free_slot(self) -> int:
        """The slot the next batch goes into.

        Raises:
            UsageError: every slot is in flight; call ``wait()`` first.
        """
        if len(self._pending) >= self.slots:
            raise UsageError(f"{self.slots} batches already submitted: call wait() before preparing another")
        return self._next

    def submit(self) -> int:
        slot = self.free_slot()
        self._pending.append(slot)
        self._next = (slot + 1) % self.slots
        return slot

    def complete(self) -> int:
        if not self._pending:
            raise UsageError("wait() called with no batch submitted")
        return self._pending.popleft()

    def reset(self) -> None:
        self._pending.clear()
        self._next = 0


class GraphAction(str, Enum):
    LAUNCH = "launch"  # a graph for this shape exists: replay it
    CAPTURE = "capture"  # warm and eligible: capture the enqueue now, then replay it
    ENQUEUE = "enqueue"  # plain execute_async_v3


def graph_action(*, enabled: bool, supported: bool, failed: bool, has_graph: bool, warm_runs: int) -> tuple[GraphAction, str]:
    """What to do for one batch, and why.

    A graph is kept for one input shape at a time: the session drops it when the shape changes,
    because TensorRT's captured kernels are valid only for the shape they were captured with.

    Args:
        enabled: the user's ``cuda_graph`` option.
        supported: the CUDA binding can capture graphs.
        failed: a capture failed earlier in this session (graphs are then off for good).
        has_graph: a graph for the current shape exists.
        warm_runs: plain enqueues already made with the current shape, consecutively. TensorRT
            must run a shape once before its enqueue can be captured, and a shape seen once (a
            folder's tail batch) is not worth a graph: capture on the second batch of a shape.
    """
    if not enabled:
        return GraphAction.ENQUEUE, "CUDA graphs disabled by option"
    if not supported:
        return GraphAction.ENQUEUE, "this CUDA binding cannot capture graphs"
    if failed:
        return GraphAction.ENQUEUE, "an earlier capture failed"
    if has_graph:
        return GraphAction.LAUNCH, "graph captured for this shape"
    if warm_runs < 1:
        return GraphAction.ENQUEUE, "warming up this shape"
    return GraphAction.CAPTURE, "shape repeated after warm-up"
