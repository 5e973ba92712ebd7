"""Calibration in the manifest (applied in postprocess), interval metrics, resize interpolation
against PIL, numeric fractions, float frames: the numpy side of bringing your own model."""

from __future__ import annotations

import numpy as np
import pytest

from edgedx import calibration, metrics, postprocess, preprocess
from edgedx import manifest as manifest_mod
from edgedx.errors import InputError, ModelError, UsageError
from tests.factories import manifest_dict, tiny_cnn


def _manifest(**changes) -> manifest_mod.Manifest:
    data = manifest_dict()
    data.update(changes)
    return manifest_mod.from_dict(data)


# -- calibration in postprocess ---------------------------------------------------------------------


def test_platt_in_manifest_is_applied_to_softmax_logits():
    m = _manifest(calibration={"method": "platt", "a": 2.0, "b": -0.5})
    raw = np.array([[0.3, 1.1], [2.0, -1.0], [0.0, 0.0]])
    p = postprocess.probabilities(raw, m)
    pos = m.positive_index
    expected = 1 / (1 + np.exp(-(2.0 * (raw[:, pos] - raw[:, 1 - pos]) - 0.5)))
    np.testing.assert_allclose(p[:, pos], expected, rtol=1e-12)
    np.testing.assert_allclose(p.sum(1), 1.0)


def test_platt_on_a_one_unit_sigmoid_uses_the_logit():
    data = manifest_dict()
    data["output"]["activation"] = "sigmoid"
    m = manifest_mod.from_dict({**data, "calibration": {"method": "platt", "a": 0.5, "b": 1.0}})
    z = np.array([[-3.0], [0.2], [4.0]])
    p = postprocess.probabilities(z, m)
    np.testing.assert_allclose(p[:, m.positive_index], 1 / (1 + np.exp(-(0.5 * z[:, 0] + 1.0))), rtol=1e-12)


def test_temperature_keeps_the_argmax_and_softens():
    data = manifest_dict()
    data.update(labels=["a", "b", "c"], positive_label=None, threshold=None, calibration={"method": "temperature", "temperature": 2.0})
    m = manifest_mod.from_dict(data)
    raw = np.array([[4.0, 1.0, 0.0], [0.0, 0.5, 3.0]])
    p = postprocess.probabilities(raw, m)
    e = np.exp(raw / 2.0)
    np.testing.assert_allclose(p, e / e.sum(1, keepdims=True), rtol=1e-12)
    assert (p.argmax(1) == raw.argmax(1)).all()


@pytest.mark.parametrize("section, message", [
    ({"method": "isotonic"}, "calibration.method"),
    ({"method": "platt", "a": "x", "b": 0}, "calibration.a"),
    ({"method": "temperature", "temperature": 0}, "calibration.temperature"),
])
def test_bad_calibration_sections_are_named(section, message):
    with pytest.raises(ModelError, match=message):
        _manifest(calibration=section)


def test_platt_needs_a_positive_label():
    data = manifest_dict()
    data.update(positive_label=None, threshold=None, calibration={"method": "platt", "a": 1.0, "b": 0.0})
    with pytest.raises(ModelError, match="platt scaling is for binary models"):
        manifest_mod.from_dict(data)


def test_fit_platt_recovers_a_known_miscalibration():
    rng = np.random.default_rng(0)
    margin = rng.normal(0, 2, 20000)
    y = rng.random(20000) < calibration.sigmoid(0.5 * margin - 0.7)
    a, b = calibration.fit_platt(margin, y)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-0.7, abs=0.07)


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (20000, 4))
    true_p = calibration.softmax(logits / 2.5)
    y = np.array([rng.choice(4, p=row) for row in true_p])
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert calibration.fit_temperature(logp, y) == pytest.approx(2.5, rel=0.06)


# -- interval metrics ---------------------------------------------------------------------------------


def test_wilson_interval_known_values():
    low, high = metrics.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert metrics.wilson_interval(0, 0) is None
    assert metrics.wilson_interval(10, 10) == pytest.approx([0.7225, 1.0], abs=1e-4)


def test_delong_interval_agrees_with_a_bootstrap():
    rng = np.random.default_rng(2)
    y = rng.random(400) < 0.4
    s = rng.normal(y * 1.0, 1.0)
    auc, (lo, hi) = metrics.auc_delong(y, s)
    assert auc == pytest.approx(metrics.roc_auc(y, s), abs=1e-12)
    boots = []
    for _ in range(1000):
        i = rng.integers(0, 400, 400)
        boots.append(metrics.roc_auc(y[i], s[i]))
    b_lo, b_hi = np.percentile(boots, [2.5, 97.5])
    assert lo == pytest.approx(b_lo, abs=0.015) and hi == pytest.approx(b_hi, abs=0.015)


def test_roc_points_reach_both_corners_and_ece_sees_miscalibration():
    rng = np.random.default_rng(3)
    p = rng.random(5000)
    y = rng.random(5000) < p  # calibrated by construction
    roc = metrics.roc_points(y, p)
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0) and (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert len(roc["fpr"]) <= 200 and all(np.diff(roc["fpr"]) >= 0)
    probs = np.stack([1 - p, p], 1)
    assert metrics.reliability(y.astype(int), probs, 1)["ece"] < 0.03
    over = np.stack([1 - p**0.3, p**0.3], 1)  # overconfident in the positive class
    assert metrics.reliability(y.astype(int), over, 1)["ece"] > 0.15
    assert metrics.brier(y.astype(int), probs, 1) == pytest.approx(np.mean((p - y) ** 2))


# -- resize interpolation: the one preprocessing, against PIL ----------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cubic"])
def test_antialiased_resize_matches_pil(kind):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(4)
    img = (rng.random((301, 257, 3)) * 255).astype(np.uint8)
    for w, h in ((64, 48), (100, 130)):
        spec = preprocess.PreprocessSpec(width=w, height=h, interpolation=kind, antialias=True)
        ours = preprocess.resize(img, spec)
        pil = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR if kind == "linear" else Image.BICUBIC))
        assert ours.dtype == np.uint8 and np.abs(ours.astype(int) - pil.astype(int)).max() <= 1


def test_nearest_matches_pil_and_differs_from_area():
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(5)
    img = (rng.random((200, 180)) * 255).astype(np.uint8)
    spec = preprocess.PreprocessSpec(width=50, height=40, channels=1, interpolation="nearest")
    pil = np.asarray(Image.fromarray(img).resize((50, 40), Image.NEAREST))
    np.testing.assert_array_equal(preprocess.resize(img, spec), pil)
    area = preprocess.resize(img, spec.with_changes(interpolation="area"))
    assert np.abs(area.astype(int) - pil.astype(int)).mean() > 10


def test_interpolation_in_the_manifest_round_trips_and_defaults_to_area(tmp_path):
    data = manifest_dict()
    assert manifest_mod.from_dict(data).preprocess.interpolation.value == "area"  # manifests from before the field
    data["preprocess"].update(interpolation="linear", antialias=True)
    m = manifest_mod.from_dict(data)
    assert m.preprocess.interpolation.value == "linear" and m.preprocess.antialias is True
    assert manifest_mod.from_dict(m.to_dict()) == m
    path = tiny_cnn(tmp_path / "m.onnx", manifest=m.to_dict())
    assert manifest_mod.load(path).preprocess.antialias is True


@pytest.mark.parametrize("pre, message", [({"interpolation": "lanczos"}, "interpolation"),
                                          ({"interpolation": "nearest", "antialias": True}, "antialias"),
                                          ({"interpolation": "linear", "antialias": "yes"}, "antialias")])
def test_bad_interpolation_is_named(pre, message):
    data = manifest_dict()
    data["preprocess"].update(pre)
    with pytest.raises(ModelError, match=message):
        manifest_mod.from_dict(data)


# -- numeric options and float frames ---------------------------------------------------------------


def test_fractions_in_numeric_options():
    from export.contract import number, numbers

    assert number("1/255", "--scale") == pytest.approx(1 / 255)
    assert numbers("0.485,1/2", "--mean") == (0.485, 0.5)
    with pytest.raises(UsageError, match="--scale must be a number or a fraction"):
        number("1/0", "--scale")
    with pytest.raises(UsageError, match="--std"):
        numbers("a,b", "--std")


def test_float_frames_in_a_stated_range(tmp_path, caplog):
    from edgedx.api import Classifier

    path = tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())
    rng = np.random.default_rng(6)
    unit = rng.random((64, 64)).astype(np.float32)  # a 0..1 frame with real content
    with Classifier(path, "onnxruntime") as plain:
        read_as_255 = plain.classify(unit)
    assert read_as_255.status == "rejected" and "constant" in read_as_255.reason
    assert "float_range=(0, 1)" in caplog.text
    with Classifier(path, "onnxruntime", float_range=(0, 1)) as clf:
        r = clf.classify(unit)
        assert r.status == "ok"
    with Classifier(path, "onnxruntime") as ref:
        expected = ref.classify(unit * 255)
    assert r.scores == pytest.approx(expected.scores, abs=1e-6)
    with pytest.raises(InputError, match="float range"):
        Classifier(path, "onnxruntime", float_range=(1, 1))


def test_classify_takes_a_fractional_scale_for_a_model_without_a_manifest(tmp_path, capsys):
    from edgedx.cli import main

    path = tiny_cnn(tmp_path / "bare.onnx", size=32)
    frame = tmp_path / "x.png"
    import cv2

    cv2.imwrite(str(frame), (np.random.default_rng(7).random((40, 40)) * 255).astype(np.uint8))
    capsys.readouterr()
    assert main(["classify", str(frame), "--model", str(path), "--scale", "1/255", "--mean", "1/2", "--json", "--no-gate"]) == 0
    assert '"status": "ok"' in capsys.readouterr().out
    assert main(["classify", str(frame), "--model", str(path), "--scale", "1/x"]) == 2
    assert "--scale must be a number or a fraction" in capsys.readouterr().err
