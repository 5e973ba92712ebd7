"""Text fit for one line on a terminal: what a hostile file name or file value cannot break."""

from __future__ import annotations

import logging


def printable(text: object, limit: int = 200) -> str:
    """``text`` fit for a one-line message: control characters (newlines, terminal escapes) that a
    hostile file or file name could hold are escaped, and the result is cut to ``limit`` characters.

    Surrogate escapes (a file name that is not UTF-8) are written as ``\\udcff`` too, so the result
    always encodes.
    """
    out = str(text)
    if not out.isprintable() or _has_surrogates(out):
        out = "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else _escape(c) for c in out)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _escape(c: str) -> str:
    return c.encode("unicode_escape", "backslashreplace").decode("ascii")


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class OneLineFormatter(logging.Formatter):
    """A log formatter whose messages stay one line: file names and values in them are escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = printable(record.message, 2000)
        return super().formatMessage(record)
