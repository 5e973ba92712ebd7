"""Opening a model: only ``auto`` falls back, the reason is typed, and every record says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgedx import Classifier
from edgedx.backends import base
from edgedx.backends.onnxruntime import OnnxRuntimeSession
from edgedx.errors import BackendUnavailable
from edgedx.opening import Fallback, open_model
from tests.factories import frame, manifest_dict, tiny_cnn


@pytest.fixture
def engine_and_source(tmp_path, monkeypatch):
    """A '.engine' file whose backend refuses it here, naming its source ONNX as the way out."""
    source = tiny_cnn(tmp_path / "model.onnx", manifest=manifest_dict())
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")

    class RefusingEngine(OnnxRuntimeSession):
        name = "tensorrt"

        def _open(self) -> None:
            exc = BackendUnavailable("no CUDA device (test)")
            exc.fallback_onnx = source
            raise exc

    real = base.session_class
    monkeypatch.setattr(base, "session_class", lambda name: RefusingEngine if name == "tensorrt" else real(name))
    return engine, source


def test_auto_falls_back_with_a_typed_reason_on_every_record(engine_and_source):
    engine, source = engine_and_source
    with Classifier(engine, "auto") as clf:
        assert clf.fallback == Fallback("tensorrt", engine, "no CUDA device (test)", "onnxruntime", source)
        assert clf.backend == "onnxruntime" and clf.session.model_path == source
        r = clf.classify(frame(40, 40))
    assert r.status == "ok" and r.backend == "onnxruntime"
    assert r.backend_note == "tensorrt refused model.engine (no CUDA device (test)); ran source ONNX model.onnx on onnxruntime"
    assert r.model == str(engine)


def test_an_explicit_backend_never_falls_back(engine_and_source):
    engine, _ = engine_and_source
    with pytest.raises(BackendUnavailable, match="no CUDA device") as info:
        Classifier(engine, "tensorrt")
    assert info.value.exit_code == 3


def test_the_contract_is_the_one_the_backend_read_at_open(tmp_path):
    model = tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict(labels=("no", "yes"), positive="yes"))
    opened = open_model(model, "onnxruntime")
    try:
        assert opened.manifest is opened.session.manifest
        assert opened.manifest.labels == ("no", "yes") and opened.fallback is None
    finally:
        opened.close()
    assert opened.session.closed


def test_missing_model_is_a_model_error(tmp_path):
    with pytest.raises(Exception, match="model not found") as info:
        open_model(Path(tmp_path / "nope.onnx"))
    assert info.value.exit_code == 4
