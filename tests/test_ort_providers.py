"""ONNX Runtime providers: ask for CUDA where onnxruntime-gpu offers it, report what really runs."""

from __future__ import annotations

import pytest

from edgedx import Classifier
from edgedx.backends import SessionOptions
from edgedx.backends import onnxruntime as ortb
from edgedx.errors import BackendUnavailable
from tests.factories import manifest_dict, tiny_cnn


@pytest.fixture
def model(tmp_path):
    return tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())


def test_cpu_only_build_runs_on_the_cpu(model):
    with Classifier(model) as clf:
        assert clf.session.describe()["providers"] == ["CPUExecutionProvider"]


def test_missing_cuda_libraries_fall_back_visibly(model, monkeypatch, caplog):
    """onnxruntime-gpu without CUDA libraries: ORT drops the provider silently; edgedx says so."""
    real = ortb.ort.InferenceSession
    asked = {}

    def session(path, sess_options=None, providers=None):
        asked["providers"] = providers
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ortb.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ortb.ort, "InferenceSession", session)
    monkeypatch.setattr(ortb.log, "propagate", True)
    with caplog.at_level("WARNING", logger="edgedx"), Classifier(model) as clf:
        detail = clf.session.describe()
    assert asked["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert detail["providers"] == ["CPUExecutionProvider"]
    assert "could not use CUDAExecutionProvider" in caplog.text


def test_asking_for_a_provider_this_build_lacks_is_exit_3(model):
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu") as err:
        Classifier(model, "onnxruntime", session_options=SessionOptions(providers=("CUDAExecutionProvider",)))
    assert err.value.exit_code == 3
