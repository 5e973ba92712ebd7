"""Third-party chatter (torch's exporter, Keras, ONNX Runtime's calibration) kept off stdout and stderr.

``with quiet(): torch.onnx.export(...)`` silences Python warnings, other libraries' log records, and
whatever C/C++ code writes to file descriptors 1 and 2 while the block runs; edgedx's own results
and log lines are written outside such blocks. ``-v`` on the command line (:func:`set_verbose`)
lets everything through.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from typing import Iterator

_verbose = False


def set_verbose(flag: bool) -> None:
    """Let third-party output through (``-v``)."""
    global _verbose
    _verbose = flag


def verbose() -> bool:
    return _verbose


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence warnings, foreign log records and descriptor-level output inside the block (unless verbose)."""
    if _verbose:
        yield
        return
    previous = logging.root.manager.disable
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            _descriptors_to_void():
        warnings.simplefilter("ignore")
        loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if not name.startswith("edgedx")]
        levels = [(lg, lg.level) for lg in loggers]
        root_level = logging.root.level
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        logging.root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in levels:
                lg.setLevel(level)
            logging.root.setLevel(root_level)
            logging.disable(previous)


@contextlib.contextmanager
def _descriptors_to_void() -> Iterator[None]:
    """Point fds 1 and 2 at a scratch file for the block (C++ loggers write there directly)."""
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no real descriptors (embedded interpreter)
        yield
        return
    for stream in (sys.__stdout__, sys.__stderr__):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.flush()
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            for stream in (sys.__stdout__, sys.__stderr__):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
