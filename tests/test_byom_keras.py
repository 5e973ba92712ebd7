"""A Keras model with its own Rescaling layer, walked as a user would: scaling twice is refused by
name, the resize follows flow_from_directory (nearest), and after calibration edgedx classify gives
Keras's own probabilities (loaded with keras.utils.load_img) within 2e-3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from edgedx import manifest as manifest_mod  # noqa: E402
from tests.byom_helpers import classify_scores, edgedx, edgedx_json, platt, xrays  # noqa: E402
from tests.conftest import XRAY, need  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SIZE = 64


@pytest.fixture(scope="module")
def rescaling_model(keras, tmp_path_factory) -> Path:
    from keras import layers

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)), layers.Rescaling(1.0 / 255),
        layers.Conv2D(8, 3, activation="relu"), layers.MaxPooling2D(), layers.Conv2D(8, 3, activation="relu"),
        layers.MaxPooling2D(), layers.Flatten(), layers.Dense(1, activation="sigmoid"),
    ])
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel * 4.0, bias])  # spread the untrained answers
    path = tmp_path_factory.mktemp("keras") / "xray_cnn.keras"
    model.save(path)
    return path


def test_scale_on_top_of_a_rescaling_layer_is_refused_by_name(tmp_path: Path, capsys, rescaling_model: Path):
    rc, _, err = edgedx(capsys, "export", "onnx", rescaling_model, "-o", tmp_path / "x.onnx", "--labels", "NORMAL,PNEUMONIA",
                        "--scale", "1/255")
    assert rc == 2 and "layer 'rescaling'" in err and "Rescaling(scale=0.00392157" in err and "--force-scale" in err
    assert not (tmp_path / "x.onnx").exists()
    forced = edgedx_json(capsys, "export", "onnx", rescaling_model, "-o", tmp_path / "forced.onnx", "--labels", "NORMAL,PNEUMONIA",
                         "--scale", "1/255", "--force-scale")
    assert forced["manifest"]["preprocess"]["scale"] == pytest.approx(1 / 255)


def test_keras_model_comes_in_calibrated_and_matches_keras(keras, tmp_path: Path, capsys, rescaling_model: Path):
    held_out, _ = xrays(6, offset=1)
    out = tmp_path / "keras.onnx"
    code, stdout, err = edgedx(capsys, "export", "onnx", rescaling_model, "-o", out, "--labels", "NORMAL,PNEUMONIA",
                               *[x for f in held_out[:4] for x in ("--images", f)])
    assert code == 0, err
    assert "Keras flow_from_directory's default (nearest neighbour)" in err and "scales its own input" in err
    p = manifest_mod.load(out).preprocess
    assert (p.scale, p.interpolation.value, p.layout.value) == (1.0, "nearest", "NHWC")  # 0..255 in: the model scales

    calibrated = tmp_path / "calibrated.onnx"
    cal = edgedx_json(capsys, "export", "calibrate", out, need(XRAY), "--limit", "120", "-o", calibrated)
    assert cal["calibration"]["method"] == "platt" and cal["after"]["log_loss"] <= cal["before"]["log_loss"] + 1e-9, cal

    batch = np.stack([keras.utils.img_to_array(keras.utils.load_img(f, target_size=(SIZE, SIZE), interpolation="nearest"))
                      for f in held_out])
    model = keras.models.load_model(rescaling_model, compile=False)
    source = np.asarray(keras.ops.convert_to_numpy(model(batch, training=False)), np.float64)[:, 0]
    expected = platt(np.log(source) - np.log1p(-source), cal["calibration"])
    got = classify_scores(capsys, calibrated, held_out, "PNEUMONIA")
    assert np.abs(got - expected).max() <= 2e-3 and np.ptp(source) > 0.05  # the source answers differ per image


def test_a_normalization_layer_is_detected_too(keras, tmp_path: Path, capsys):
    from keras import layers

    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)), layers.Normalization(mean=[120.0, 120.0, 120.0], variance=[3600.0, 3600.0, 3600.0]),
        layers.Conv2D(4, 3, activation="relu"), layers.GlobalAveragePooling2D(), layers.Dense(2, activation="softmax"),
    ])
    model.save(tmp_path / "norm.keras")
    rc, _, err = edgedx(capsys, "export", "onnx", tmp_path / "norm.keras", "-o", tmp_path / "x.onnx", "--labels", "a,b",
                        "--mean", "0.5", "--std", "0.25")
    assert rc == 2 and "Normalization(mean=[120" in err and "--mean/--std on top would scale twice" in err
    ok = edgedx_json(capsys, "export", "onnx", tmp_path / "norm.keras", "-o", tmp_path / "n.onnx", "--labels", "a,b",
                     "--interpolation", "linear")
    pre = ok["manifest"]["preprocess"]
    assert (pre["scale"], pre["mean"], pre["interpolation"], pre["antialias"]) == (1.0, [0.0], "linear", False)
