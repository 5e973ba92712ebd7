"""What a long run shows on stderr: a progress bar while it runs and one summary line at the end.

The bar depends on stderr alone: it shows whenever stderr is a terminal, whatever stdout is
(``> out.ndjson``, ``| jq``), because that is how long runs are made. Its final state stays on the
screen, so even a run shorter than one refresh leaves ``N/N`` behind. Nothing here writes to stdout.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO, Any

STATUSES = ("ok", "rejected", "error")


class RunProgress:
    """Counts answers by status, draws the bar, and writes the summary line.

    Use as a context manager around the loop and call :meth:`advance` once per answer::

        with RunProgress(len(files), quiet=quiet, output=path) as progress:
            for result in results:
                progress.advance(result.status)
        progress.print_summary()

    Args:
        total: inputs expected (a multi-frame DICOM with all frames can give more answers).
        quiet: no bar and no summary.
        output: where the records go (None: stdout), named in the summary.
        stream: the stream to draw on; stderr by default.
        what: the bar's description.
    """

    def __init__(
        self,
        total: int,
        *,
        quiet: bool = False,
        output: str | Path | None = None,
        stream: IO[str] | None = None,
        what: str = "classifying",
    ) -> None:
        self.total, self.quiet, self.output, self.what = total, quiet, output, what
        self.stream = stream if stream is not None else sys.stderr
        self.counts = dict.fromkeys(STATUSES, 0)
        self.interrupted = False
        self.started = self.finished = time.perf_counter()
        self._bar: Any = None
        self._task: Any = None

    @property
    def bar_enabled(self) -> bool:
        """True when a bar is drawn: not quiet, and the stream is a terminal."""
        isatty = getattr(self.stream, "isatty", None)
        return not self.quiet and bool(isatty and isatty())

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    @property
    def elapsed_s(self) -> float:
        return self.finished - self.started

    def __enter__(self) -> RunProgress:
        self.started = self.finished = time.perf_counter()
        if self.bar_enabled:
            self._start_bar()
        return self

    def advance(self, status: str) -> None:
        """Count one answer (``ok``, ``rejected`` or ``error``) and move the bar."""
        self.counts[status] = self.counts.get(status, 0) + 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, **{k: self.counts.get(k, 0) for k in STATUSES})

    def set_total(self, total: int) -> None:
        """The number of inputs, once a streamed walk or list has ended."""
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.finished = time.perf_counter()
        if exc_type is KeyboardInterrupt:
            self.interrupted = True
        if self._bar is not None:
            self._bar.stop()  # the last refresh draws the final state, and it stays on screen
            self._bar = None

    def summary(self) -> str:
        """One line: answers by status, elapsed time, images per second, where the records went."""
        c = self.counts
        rate = self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0
        dest = str(self.output) if self.output is not None else "stdout"
        others = "".join(f", {n} {k}" for k, n in c.items() if k not in STATUSES and n)
        line = (
            f"{self.done} answers for {self.total} inputs: {c['ok']} ok, {c['rejected']} rejected, {c['error']} failed{others}"
            f" in {self.elapsed_s:.2f} s ({rate:.1f} images/s); records to {dest}"
        )
        return ("interrupted after " if self.interrupted else "") + line

    def print_summary(self) -> None:
        """Write :meth:`summary` to the stream as ``edgedx: ...`` unless quiet."""
        if self.quiet:
            return
        self.stream.write(f"edgedx: {self.summary()}\n")
        self.stream.flush()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(file=self.stream, highlight=False)
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ok {task.fields[ok]}  rejected {task.fields[rejected]}  error {task.fields[error]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            refresh_per_second=8,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.what, total=self.total, ok=0, rejected=0, error=0)
