"""The double-buffered path of classify_many, driven by a fake two-slot session on the CPU.

The fake keeps TensorRT's contract (edgedx/backends/tensorrt.py): at most two batches in flight,
outputs in submission order, and a slot's buffer may be reused only after its batch was waited for.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from edgedx import Classifier
from edgedx.backends.onnxruntime import OnnxRuntimeSession
from edgedx.errors import BackendError, UsageError
from tests.factories import manifest_dict, tiny_cnn


class TwoSlotSession(OnnxRuntimeSession):
    overlapped = True
    fail_on: set[int] = set()

    def _open(self) -> None:
        super()._open()
        self._slots = [np.empty((8, 1, 32, 32), np.float32) for _ in range(2)]
        self._fifo: deque = deque()
        self._next = 0
        self.submits = 0
        self.max_in_flight = 0

    def input_buffer(self, batch_size):
        if len(self._fifo) >= 2:
            raise UsageError("both slots are in flight")
        busy = {id(buf) for buf, _ in self._fifo}
        free = [s for s in self._slots if id(s) not in busy]
        return free[0][:batch_size]

    def submit(self, batch):
        self.submits += 1
        if self.submits in self.fail_on:
            raise BackendError("simulated enqueue failure")
        if len(self._fifo) >= 2:
            raise UsageError("two batches already pending")
        base = next(s for s in self._slots if np.shares_memory(s, batch))  # zero copy: a slot view
        self._fifo.append((base, batch))
        self.max_in_flight = max(self.max_in_flight, len(self._fifo))

    def wait(self):
        _, batch = self._fifo.popleft()
        return self._run(batch.copy())


@pytest.fixture
def model(tmp_path):
    return tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())


def overlapped_classifier(model, monkeypatch, fail_on=()):
    from edgedx.backends import base

    monkeypatch.setattr(TwoSlotSession, "fail_on", set(fail_on))
    monkeypatch.setattr(base, "session_class", lambda name: TwoSlotSession)
    return Classifier(model, batch_size=2, workers=0)


def test_overlapped_matches_serial_and_keeps_two_in_flight(model, xray_files, tmp_path, monkeypatch):
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"\xff\xd8\xff")
    inputs = [*xray_files, bad, *xray_files]
    with Classifier(model, batch_size=2, workers=0) as serial:
        expected = list(serial.classify_many(inputs))
    with overlapped_classifier(model, monkeypatch) as clf:
        got = list(clf.classify_many(inputs))
        assert clf.session.max_in_flight == 2
    assert [r.path for r in got] == [r.path for r in expected]
    assert [r.status for r in got] == [r.status for r in expected]
    for a, b in zip(got, expected):
        if a.scores:
            assert a.scores == pytest.approx(b.scores, abs=1e-6)


def test_overlapped_failure_fails_only_that_batch(model, xray_files, monkeypatch):
    with overlapped_classifier(model, monkeypatch, fail_on={2}) as clf:
        got = list(clf.classify_many(xray_files))
    assert [r.status for r in got] == ["ok", "ok", "error", "error", "ok", "ok"]
    assert "simulated enqueue failure" in got[2].error
