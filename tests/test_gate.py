from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edgedx import Classifier, gate, manifest
from edgedx.errors import ModelError
from tests.factories import frame, manifest_dict, tiny_cnn


def dicom_info(modality="CR", photometric="MONOCHROME2", width=64, height=64, channels=1):
    return SimpleNamespace(format="dicom", modality=modality, photometric=photometric, width=width, height=height, channels=channels)


@pytest.mark.parametrize(
    "image, code",
    [
        (np.zeros((64, 64), np.uint8), "constant_image"),
        (np.full((64, 64), 65535, np.uint16), "constant_image"),
        (np.where(np.arange(64 * 64).reshape(64, 64) % 50 == 0, 128, 255).astype(np.uint8), "saturated_image"),
    ],
)
def test_content_checks(image, code):
    assert gate.check(image, None, {}).code == code


def test_real_looking_image_passes():
    assert gate.check(frame(64, 64), None, {}) is None
    assert gate.check(frame(64, 64).astype(np.uint16) * 200, None, {}) is None


def test_accepts_section():
    accepts = {"modalities": ["CR", "DX"], "photometric": ["MONOCHROME1", "MONOCHROME2"], "min_size": 32, "channels": [1]}
    img = frame(64, 64)
    assert gate.check(img, dicom_info("MR"), accepts).code == "modality_not_accepted"
    assert gate.check(img, dicom_info(photometric="RGB"), accepts).code == "photometric_not_accepted"
    assert gate.check(frame(16, 64), dicom_info(height=16), accepts).code == "too_small"
    assert gate.check(frame(64, 64, 3), None, accepts).code == "channels_not_accepted"
    # the file's own size and channels count, not those of a reduced or gray-decoded image
    assert gate.check(frame(32, 32), dicom_info(width=2048, height=2048), accepts | {"min_size": 100}) is None
    assert gate.check(frame(64, 64), dicom_info(channels=3), accepts).code == "channels_not_accepted"
    assert gate.check(img, dicom_info(), accepts) is None
    # a PNG has no modality: the modality rule applies to DICOM only
    png = SimpleNamespace(format="png", modality=None, photometric=None, width=64, height=64, channels=1)
    assert gate.check(img, png, accepts) is None


def test_bad_accepts_is_a_manifest_error():
    d = manifest_dict()
    d["accepts"] = {"modalities": "CR", "colour": [1]}
    with pytest.raises(ModelError) as err:
        manifest.from_dict(d)
    assert "accepts.modalities" in str(err.value) and "accepts.colour" in str(err.value)


def test_classifier_abstains_and_no_gate_turns_it_off(tmp_path):
    d = manifest_dict()
    d["accepts"] = {"min_size": 40}
    model = tiny_cnn(tmp_path / "m.onnx", manifest=d)
    blank = np.zeros((64, 64), np.uint8)
    with Classifier(model) as clf:
        r = clf.classify(blank)
        small = clf.classify(frame(20, 20))
    assert r.status == "rejected" and r.label is None and r.reason_code == "constant_image" and r.reason and not r.reason.startswith("constant_image")
    assert small.status == "rejected" and small.reason_code == "too_small"
    with Classifier(model, use_gate=False) as clf:
        assert clf.classify(blank).status == "ok"
