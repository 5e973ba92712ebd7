from __future__ import annotations

import json

import pytest

from edgedx import manifest, onnxfile
from edgedx.errors import ModelError
from tests.factories import manifest_dict, tiny_cnn


def test_round_trip_through_onnx_metadata(tmp_path):
    path = tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())
    m = manifest.load(path)
    assert m.labels == ("NORMAL", "PNEUMONIA")
    assert m.positive_label == "PNEUMONIA" and m.threshold == 0.5
    assert m.preprocess.mean == (0.5,) and m.preprocess.width == 32
    assert manifest.from_dict(m.to_dict()) == m


def test_model_without_manifest_loads_as_none(tmp_path):
    assert manifest.load(tiny_cnn(tmp_path / "m.onnx")) is None


def test_engine_sidecar_is_read(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    manifest.sidecar_path(engine).write_text(json.dumps(manifest_dict()))
    assert manifest.load(engine).labels == ("NORMAL", "PNEUMONIA")


def test_every_problem_is_named():
    bad = manifest_dict()
    bad.update(labels=[], threshold=3, schema_version=99)
    bad["input"].pop("width")
    bad["output"]["activation"] = "tanh"
    with pytest.raises(ModelError) as err:
        manifest.from_dict(bad)
    text = str(err.value)
    for expected in ("labels", "threshold", "schema_version", "input.width", "output.activation"):
        assert expected in text


def test_positive_label_must_be_a_label():
    with pytest.raises(ModelError, match="positive_label"):
        manifest.from_dict(manifest_dict(positive="CANCER"))


def test_not_json():
    with pytest.raises(ModelError, match="not JSON"):
        manifest.from_json("{nope", "x")


def test_not_an_onnx_file(tmp_path):
    f = tmp_path / "fake.onnx"
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(ModelError, match="not an ONNX model"):
        onnxfile.read_metadata(f)


def test_assumed_manifest_reports_what_was_assumed():
    m, assumed = manifest.assumed(input_shape=(None, 3, 224, 224), num_outputs=3)
    assert m.preprocess.channels == 3 and m.preprocess.layout.value == "NCHW"
    assert len(m.labels) == 3
    assert any("mean" in a for a in assumed) and any("labels" in a for a in assumed)
    m2, assumed2 = manifest.assumed(input_shape=(None, 150, 150, 3), num_outputs=1, labels=["Normal", "Abnormal"], mean=(0.0,), std=(1.0,), scale=1 / 255)
    assert m2.preprocess.layout.value == "NHWC" and m2.activation.value == "sigmoid"
    assert m2.positive_label == "Abnormal" and m2.threshold == 0.5
    assert not any("mean" in a for a in assumed2)


def test_boolean_threshold_is_refused():
    with pytest.raises(ModelError, match="threshold"):
        manifest.from_dict(manifest_dict(threshold=True))
