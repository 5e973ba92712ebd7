"""What the targets share: the property, a byte consumer for structured inputs, a mutator."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence

from edgedx.errors import EdgedxError


class Finding(AssertionError):
    """The property failed: an exception other than EdgedxError, a malformed result, or too slow."""


def expect_edgedx_error(call: Callable[[], object]) -> object | None:
    """``call()``'s result, or None when it raised an EdgedxError with a one-line message.

    Raises:
        Finding: wrapping any other exception (the cause is chained), or a multi-line message.
    """
    try:
        return call()
    except EdgedxError as exc:
        text = str(exc)
        if not text or "\n" in text:
            raise Finding(f"{type(exc).__name__} message is not one non-empty line: {text!r}") from exc
        return None
    except Exception as exc:
        raise Finding(f"{type(exc).__name__} escaped: {exc}"[:500]) from exc


class Take:
    """Consume a fuzzer's bytes as structured choices (a portable FuzzedDataProvider).

    Past the end every choice is 0, so any byte string is a valid input.
    """

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def below(self, n: int) -> int:
        """An integer in [0, n)."""
        if n <= 1:
            return 0
        width = 1 if n <= 256 else 2 if n <= 65536 else 4
        value = 0
        for _ in range(width):
            value = value << 8 | self.byte()
        return value % n

    def choice(self, items: Sequence):
        return items[self.below(len(items))]

    def flag(self) -> bool:
        return self.byte() & 1 == 1

    def raw(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        return self.raw(len(self.data))

    def number(self) -> int | float:
        """An 'interesting' number: boundaries, huge, tiny, negative, non-finite."""
        return self.choice(INTERESTING_NUMBERS) if self.flag() else struct.unpack(">i", self.raw(4).rjust(4, b"\0"))[0]


INTERESTING_NUMBERS: tuple[int | float, ...] = (
    0, 1, -1, 2, 3, 7, 8, 12, 15, 16, 17, 31, 32, 33, 63, 64, 255, 256, 4095, 32767, 32768, 65535,
    65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, 10**30, 10**400,
    0.5, -0.5, 1e-45, 1e-320, 1e38, 3.5e38, 1e308, -1e308, float("inf"), float("-inf"), float("nan"),
)  # fmt: skip
_INTERESTING_INTS = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def mutate(data: bytes, rng: random.Random, others: Sequence[bytes] = (), max_len: int = 1 << 20) -> bytes:
    """A libFuzzer-like mutation: 1-8 stacked edits (bit flips, interesting integers, inserts,
    erasures, duplicated or spliced ranges, truncation)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        n = len(buf)
        op = rng.randrange(9)
        if op == 0 and n:
            buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[rng.randrange(n)] = rng.randrange(256)
        elif op == 2 and n >= 4:
            size = rng.choice((1, 2, 4))
            pos = rng.randrange(n - size + 1)
            value = rng.choice(_INTERESTING_INTS) & ((1 << (8 * size)) - 1)
            buf[pos : pos + size] = value.to_bytes(size, rng.choice(("little", "big")))
        elif op == 3:
            pos = rng.randrange(n + 1)
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 4 and n:
            pos = rng.randrange(n)
            del buf[pos : pos + rng.randint(1, max(1, n // 8))]
        elif op == 5 and n:
            pos = rng.randrange(n)
            chunk = buf[pos : pos + rng.randint(1, 64)]
            at = rng.randrange(n + 1)
            buf[at:at] = chunk
        elif op == 6 and others:
            other = rng.choice(others)
            if other:
                start = rng.randrange(len(other))
                at = rng.randrange(n + 1)
                buf[at:] = other[start : start + rng.randint(1, len(other))]
        elif op == 7 and n:
            del buf[rng.randrange(n) :]
        elif op == 8 and n:  # ASCII digits: lengths and numbers in text headers / JSON
            pos = rng.randrange(n)
            buf[pos : pos + 1] = str(rng.choice(INTERESTING_NUMBERS)).encode()
    return bytes(buf[:max_len])
