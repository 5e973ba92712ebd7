"""The one submit/wait loop of the pipeline, driven by a fake two-slot session on the CPU.

The fake keeps TensorRT's contract (edgedx/backends/tensorrt.py) through the Session protocol's
hooks only (``slots``, ``_input_buffer``, ``_submit``, ``_wait``): at most two batches in flight,
outputs in submission order, and a slot's buffer may be reused only after its batch was waited for.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from edgedx import Classifier
from edgedx.backends.onnxruntime import OnnxRuntimeSession
from edgedx.bench import bench_model
from edgedx.errors import BackendError, UsageError
from tests.factories import frame, manifest_dict, tiny_cnn


class TwoSlotSession(OnnxRuntimeSession):
    """ONNX Runtime behind two pinned-like slots; counts the copies a real device would make."""

    slots = 2
    fail_on: set[int] = set()

    def _open(self) -> None:
        super()._open()
        self._slot_memory = [np.full((8, 1, 32, 32), np.nan, np.float32) for _ in range(2)]
        self._fifo: deque = deque()
        self.submits = 0
        self.copies = 0
        self.max_in_flight = 0

    def _input_buffer(self, batch_size):
        if len(self._fifo) >= 2:
            raise UsageError("both slots are in flight: call wait() first")
        busy = {id(base) for base, _ in self._fifo}
        return next(s for s in self._slot_memory if id(s) not in busy)[:batch_size]

    def _submit(self, batch):
        self.submits += 1
        if self.submits in self.fail_on:
            raise BackendError("simulated enqueue failure")
        busy = {id(base) for base, _ in self._fifo}
        base = next((s for s in self._slot_memory if np.shares_memory(s, batch)), None)
        if base is None:  # a pageable batch: the device would copy it into the free slot
            self.copies += 1
            base = next(s for s in self._slot_memory if id(s) not in busy)
            base[: len(batch)] = batch
        self._fifo.append((base, base[: len(batch)]))
        self.max_in_flight = max(self.max_in_flight, len(self._fifo))

    def _wait(self):
        _, batch = self._fifo.popleft()
        return self._run(batch.copy())


@pytest.fixture
def model(tmp_path):
    return tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())


def two_slot_classifier(model, monkeypatch, fail_on=(), **kwargs):
    from edgedx.backends import base

    monkeypatch.setattr(TwoSlotSession, "fail_on", set(fail_on))
    monkeypatch.setattr(base, "session_class", lambda name: TwoSlotSession)
    return Classifier(model, **{"batch_size": 2, "workers": 0, **kwargs})


def test_one_slot_and_two_slot_sessions_give_identical_records(model, xray_files, tmp_path, monkeypatch):
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"\xff\xd8\xff")
    inputs = [*xray_files, bad, frame(8, 8) * 0, *xray_files]  # a bad file and a constant (rejected) frame
    with Classifier(model, batch_size=2, workers=0) as serial:
        assert serial.session.slots == 1
        expected = [r.to_dict() for r in serial.classify_many(inputs)]
    with two_slot_classifier(model, monkeypatch) as clf:
        got = [r.to_dict() for r in clf.classify_many(inputs)]
        assert clf.session.max_in_flight == 2
        assert clf.session.copies == 0  # every batch was normalized straight into its slot
    assert [r["status"] for r in expected].count("ok") == 2 * len(xray_files)
    assert {r["status"] for r in expected} == {"ok", "error", "rejected"}
    assert got == expected  # the same records, field for field (same backend name: ONNX Runtime runs both)


def test_two_slot_failure_fails_only_that_batch(model, xray_files, monkeypatch):
    with two_slot_classifier(model, monkeypatch, fail_on={2}) as clf:
        got = list(clf.classify_many(xray_files))
        assert clf.session.pending == 0
    assert [r.status for r in got] == ["ok", "ok", "error", "error", "ok", "ok"]
    assert "simulated enqueue failure" in got[2].error


def test_stopping_early_leaves_the_session_usable(model, xray_files, monkeypatch):
    with two_slot_classifier(model, monkeypatch) as clf:
        run = clf.classify_many(xray_files)
        first = next(run)
        run.close()  # batches still in flight are collected, the turn is given back
        assert clf.session.pending == 0
        again = clf.classify(xray_files[0])
    assert again.scores == pytest.approx(first.scores)


def test_model_only_bench_copies_nothing_in_the_timed_region(model, monkeypatch):
    with two_slot_classifier(model, monkeypatch, batch_size=4) as clf:
        result = bench_model(clf, batch_size=4, iterations=7, warmup=0)
        assert clf.session.copies == 0
        assert clf.session.pending == 0
    assert result.iterations == 7 and result.latency_ms["median"] > 0


@pytest.mark.parametrize("two_slots", [False, True], ids=["one-slot", "two-slot"])
def test_use_after_close_raises_and_writes_nothing(model, monkeypatch, two_slots):
    clf = two_slot_classifier(model, monkeypatch) if two_slots else Classifier(model, batch_size=2, workers=0)
    buffer = clf.session.input_buffer(2)  # a view a careless caller kept
    before = buffer.copy()
    clf.close()
    with pytest.raises(UsageError, match="closed"):
        clf.predict_proba([frame(40, 40), frame(40, 40)])
    with pytest.raises(UsageError, match="closed"):
        clf.classify(frame(40, 40))
    with pytest.raises(UsageError, match="closed"):
        clf.session.input_buffer(1)
    np.testing.assert_array_equal(buffer, before)  # NaN-filled slot memory stays as it was


def test_session_protocol_rejects_misuse(model):
    with OnnxRuntimeSession(model) as sess:
        assert sess.slots == 1 and sess.manifest is not None and sess.manifest.labels == ("NORMAL", "PNEUMONIA")
        buf = sess.input_buffer(3)
        buf[:] = 0.25
        sess.submit(buf)
        with pytest.raises(UsageError, match="call wait"):
            sess.submit(buf)
        with pytest.raises(UsageError, match="wait\\(\\) for them first"):
            sess.run(buf)
        out = sess.wait()
        assert out.shape == (3, 2) and out.dtype == np.float32
        with pytest.raises(UsageError, match="no batch submitted"):
            sess.wait()
        np.testing.assert_array_equal(sess.run(buf), out)
