"""Untrusted model files: not ONNX, or external data pointing outside the model's folder."""

from __future__ import annotations

import numpy as np
import pytest

from edgedx import Classifier, onnxfile
from edgedx.errors import ModelError
from tests.factories import manifest_dict, tiny_cnn

onnx = pytest.importorskip("onnx")


def with_external_data(src, dest, location):
    """Rewrite ``src`` so its first initializer lives in the external file ``location``."""
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    model = onnx.load(str(src))
    init = model.graph.initializer[0]
    array = numpy_helper.to_array(init)
    (dest.parent / "w.bin").write_bytes(array.tobytes())
    set_external_data(init, location=location, length=array.nbytes)
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    onnx.save(model, str(dest))
    return dest


def test_external_data_inside_the_folder_is_allowed(tmp_path):
    m = with_external_data(tiny_cnn(tmp_path / "src.onnx", manifest=manifest_dict()), tmp_path / "ext.onnx", "w.bin")
    assert onnxfile.external_data_locations(m) == ["w.bin"]
    with Classifier(m) as clf:
        assert clf.session.inputs[0].name == "input"


@pytest.mark.parametrize("location", ["../w.bin", "/etc/passwd", "sub/../../w.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    m = with_external_data(tiny_cnn(tmp_path / "src.onnx", manifest=manifest_dict()), tmp_path / "ext.onnx", location)
    with pytest.raises(ModelError, match="outside its folder") as err:
        Classifier(m)
    assert err.value.exit_code == 4


def test_self_contained_model_has_no_external_data(tmp_path):
    assert onnxfile.external_data_locations(tiny_cnn(tmp_path / "m.onnx")) == []


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, b"\xff" * 100, np.random.default_rng(0).bytes(4096)])
def test_garbage_is_not_an_onnx_model(tmp_path, content):
    f = tmp_path / "x.onnx"
    f.write_bytes(content)
    with pytest.raises(ModelError):
        onnxfile.read_metadata(f)
