"""Ordered, bounded work ahead of a consumer: the pipeline's decode stage runs on this.

:func:`ordered_map` applies a function to a stream on worker threads, a bounded number of tasks
ahead, and yields the results in input order. Two choices make it fit a CPU shared with inference:

- **Workers yield to inference.** On Linux the worker threads lower their own scheduling priority
  (``nice``), so when inference threads and decode threads both want the cores, inference gets
  them and decoding fills the gaps (between batches, while inference threads wait on each other).
  Without this, on a 2-core machine a decode thread that preempts one of ONNX Runtime's two
  threads stalls the other at the next barrier, and the whole batch waits for it.
- **The consumer never waits on a task nobody runs.** When the consumer needs a result whose task
  no worker has started (workers starved by other load on the machine), it runs the task itself,
  at its own priority. So the stage is never slower than doing the work in the consumer's thread.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: How much lower (``nice`` steps) worker threads run than the consumer; 0 turns it off.
WORKER_NICE = 5


class _Task(Generic[T, R]):
    """One unit of work that exactly one thread runs: a worker, or the consumer when it gets there first."""

    __slots__ = ("_arg", "_claimed", "_done", "_error", "_fn", "_lock", "_value")

    def __init__(self, fn: Callable[[T], R], arg: T) -> None:
        self._fn, self._arg = fn, arg
        self._lock = threading.Lock()
        self._claimed = False
        self._done = threading.Event()
        self._value: list[R] = []  # the one result, once done
        self._error: BaseException | None = None

    def claim(self) -> bool:
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def run_if_unclaimed(self) -> None:
        if self.claim():
            self._run()

    def result(self) -> R:
        """Run the task here if no worker has, else wait for the worker; re-raise its exception."""
        if self.claim():
            self._run()
        else:
            self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value[0]

    def _run(self) -> None:
        try:
            self._value.append(self._fn(self._arg))
        except BaseException as exc:  # handed to the consumer, who decides
            self._error = exc
        finally:
            self._done.set()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, ahead: int, nice: int = WORKER_NICE) -> Iterator[R]:
    """``fn(item)`` for every item, in order, computed up to ``ahead`` tasks in advance on ``workers`` threads.

    Args:
        workers: worker threads; 0 computes each result in the consumer's thread when it is asked for.
        ahead: tasks started before their result is asked for (bounds memory).
        nice: how much lower the workers' priority is (Linux; ignored elsewhere).
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="edgedx-decode", initializer=_lower_priority, initargs=(nice,))
    pending: deque[_Task[T, R]] = deque()
    try:
        for item in items:
            task = _Task(fn, item)
            pending.append(task)
            pool.submit(task.run_if_unclaimed)
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for task in pending:  # stopped early: no worker starts what nobody will read
            task.claim()
        pool.shutdown(wait=True, cancel_futures=True)


def _lower_priority(steps: int) -> None:
    """Raise this thread's nice value by ``steps`` (Linux threads have their own; always permitted)."""
    if steps <= 0 or not sys.platform.startswith("linux"):  # elsewhere PRIO_PROCESS names a whole process
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + steps))
    except OSError:  # a sandbox that forbids it: run at the normal priority
        pass
