"""Signals for the command line: SIGTERM and Ctrl-C end a run with exit code 130, never a traceback.

Two phases. While Python imports the command line (:func:`install_early`, the first thing the
``edgedx`` entry point does), nothing has been read or written: a signal ends the process at once
with one line. Once the command runs (:func:`install_running`), SIGTERM raises KeyboardInterrupt
like Ctrl-C, so a run stops between records, closes its files and prints its summary.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_INTERRUPTED = 130


def install_early() -> None:
    """SIGTERM and SIGINT end the process at once with 130 and one line (nothing to clean up yet)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_now)
        signal.signal(signal.SIGINT, _exit_now)


def install_running() -> dict[int, object]:
    """SIGTERM raises KeyboardInterrupt, SIGINT is Python's own; returns the handlers replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {signal.SIGTERM: signal.getsignal(signal.SIGTERM), signal.SIGINT: signal.getsignal(signal.SIGINT)}
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return old


def restore(old: dict[int, object]) -> None:
    """Put back handlers returned by :func:`install_running`; a signal that comes meanwhile waits
    (blocked) and then goes to the restored handler, never to a half-restored pair."""
    masking = hasattr(signal, "pthread_sigmask") and bool(old)
    if masking:
        signal.pthread_sigmask(signal.SIG_BLOCK, set(old))
    try:
        for signum, handler in old.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)  # type: ignore[arg-type]
    finally:
        if masking:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, set(old))


def caused_by_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is an interrupt in disguise: typer turns KeyboardInterrupt into a silent
    ``Exit(130)``; a C extension interrupted while it initializes raises ImportError from it."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _exit_now(signum: int, frame: object) -> None:
    try:
        os.write(2, b"edgedx: interrupted\n")
    finally:
        os._exit(EXIT_INTERRUPTED)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block (a command run without :func:`install_running`,
    e.g. from a test harness), so both stop a run the same clean way; the old handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def block_at_exit() -> None:
    """Block SIGTERM and SIGINT for the rest of the process: the run is over and its exit code
    decided, so a late signal (during Python's shutdown, which restores the default handlers)
    cannot turn a finished run into a kill."""
    if threading.current_thread() is not threading.main_thread():
        return
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    # A signal that arrived just before the block is already flagged for Python: ignore it too.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
