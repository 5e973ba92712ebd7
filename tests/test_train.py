"""The training recipe: a one-epoch smoke run on a few real images, and its building blocks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import XRAY, need

torch = pytest.importorskip("torch")

from export import train
from export.models import ScreeningCNN


def test_one_epoch_smoke_run_writes_a_finalized_model(tmp_path):
    need(XRAY)
    out = tmp_path / "run"
    code = train.main([str(XRAY), "--out", str(out), "--limit-per-class", "12", "--epochs", "1", "--size", "32",
                       "--widths", "8,8,16", "--batch-size", "8", "--bn-recalibrate"])
    assert code == 0
    summary = json.loads((out / "training.json").read_text())
    assert summary["labels"] == ["NORMAL", "PNEUMONIA"] and summary["positive_label"] == "PNEUMONIA"
    assert 0.0 <= summary["threshold"] <= 1.0
    assert summary["training"]["epochs_run"] == 1 and summary["training"]["split"].startswith("patient-grouped")
    assert summary["calibration"]["platt"]["fitted_on"] == "shifted validation set"
    assert summary["validation_shifted"]["n"] > 0 and summary["selected_on"] == "shifted validation AUC"
    assert summary["threshold"] == summary["calibration"]["threshold_shifted"]  # the default: set on the shifted set
    assert "shifted validation set" in summary["calibration"]["threshold_rule"]
    assert set(summary["validation"]) >= {"accuracy", "auc", "sensitivity", "specificity", "confusion"}
    state = torch.load(out / "model.pt", weights_only=True)
    model = ScreeningCNN(1, 2, (8, 8, 16))
    model.load_state_dict(state)
    assert (out / "model_raw.pt").exists()
    assert summary["calibration"]["batchnorm"].startswith("re-estimated")


def test_split_keeps_each_patient_on_one_side():
    names = ["person1_bacteria_1.jpeg", "person1_bacteria_2.jpeg", "person2_virus_3.jpeg", "IM-0001-0001.jpeg",
             "NORMAL2-IM-0002-0001.jpeg", "NORMAL2-IM-0002-0002.jpeg"] * 3
    groups = [train.patient_id(n) + str(i // 6) for i, n in enumerate(names)]
    labels = np.array([1, 1, 1, 0, 0, 0] * 3)
    data = train.Dataset(list(range(len(names))), labels, groups)
    a, b = train.split_by_group(data, 0.4, seed=0)
    assert not set(a.groups) & set(b.groups)
    assert len(a.labels) + len(b.labels) == len(names)
    assert train.patient_id("person12_virus_3.jpeg") == "person12"
    assert train.patient_id("NORMAL2-IM-0123-0001.jpeg") == "NORMAL2-IM-0123"


def test_platt_fit_and_fold_give_calibrated_softmax():
    rng = np.random.default_rng(0)
    y = rng.random(20000) < 0.6
    z = np.where(y, rng.normal(1.0, 1.0, y.size), rng.normal(-1.0, 1.0, y.size))
    margin = 0.25 * z - 0.5  # a miscalibrated margin; the true logit is 2 z + log(0.6 / 0.4)
    a, b = train.fit_platt(margin, y)
    assert a == pytest.approx(8.0, rel=0.05) and b == pytest.approx(4.0 + np.log(1.5), rel=0.05)
    model = ScreeningCNN(1, 2, (4, 4)).eval()
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        before = model(x).numpy()
        train.fold_platt(model, a, b, pos_index=1)
        after = torch.softmax(model(x), 1).numpy()[:, 1]
    expected = 1 / (1 + np.exp(-(a * (before[:, 1] - before[:, 0]) + b)))
    np.testing.assert_allclose(after, expected, rtol=1e-5)


def test_augmenter_keeps_shape_range_and_changes_the_image():
    aug = train.Augmenter(np.random.default_rng(0))
    img = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    out = [aug(img) for _ in range(5)]
    assert all(o.shape == img.shape and o.dtype == np.float32 and o.min() >= 0 and o.max() <= 255 for o in out)
    assert any(np.abs(o - img).mean() > 1 for o in out)


def test_platt_fit_converges_on_skewed_imbalanced_margins():
    # The shape seen on PneumoniaMNIST, where undamped Newton steps diverged to a = 20, b = -42.
    rng = np.random.default_rng(1)
    y = rng.random(524) < 0.74
    margin = np.where(y, rng.normal(1.0, 2.2, y.size), rng.normal(-5.9, 1.4, y.size))
    a, b = train.fit_platt(margin, y)
    assert 0.3 < a < 5.0 and -5.0 < b < 10.0
    p = 1 / (1 + np.exp(-(a * margin + b)))
    assert abs(p.mean() - y.mean()) < 0.02  # calibrated in the large


def test_link_split_matches_the_training_split(tmp_path):
    root = tmp_path / "data"
    for cls, names in (("NORMAL", ["IM-0001-0001.jpeg", "IM-0001-0002.jpeg", "IM-0002-0001.jpeg", "IM-0003-0001.jpeg"]),
                       ("PNEUMONIA", ["person1_virus_1.jpeg", "person1_virus_2.jpeg", "person2_bacteria_3.jpeg", "person3_virus_4.jpeg"])):
        (root / cls).mkdir(parents=True)
        for n in names:
            (root / cls / n).write_bytes(b"x")
    assert train.main([str(root), "--out", str(tmp_path / "run"), "--link-split", str(tmp_path / "split"), "--val-fraction", "0.34"]) == 0
    val = {p.name for p in (tmp_path / "split" / "val").rglob("*.jpeg")}
    tr = {p.name for p in (tmp_path / "split" / "train").rglob("*.jpeg")}
    assert val and tr and not val & tr and len(val | tr) == 8
    patients = lambda names: {train.patient_id(n) for n in names}
    assert not patients(val) & patients(tr)
    assert all(p.is_symlink() for p in (tmp_path / "split").rglob("*.jpeg"))


def test_shifted_validation_is_reproducible_with_the_asked_class_mix():
    from export.shift import class_mix, shifted_copy

    rng = np.random.default_rng(0)
    labels = np.array([1] * 300 + [0] * 100)
    idx = class_mix(labels, 1, 0.625, rng)
    assert abs(labels[idx].mean() - 0.625) < 0.01 and (labels[idx] == 0).sum() == 100
    images = [rng.integers(0, 256, (48, 40), dtype=np.uint8) for _ in range(len(labels))]
    a, _, ia = shifted_copy(images, labels, 1, seed=3)
    b, _, ib = shifted_copy(images, labels, 1, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and np.array_equal(ia, ib)
    assert a[0].dtype == np.uint8 and a[0].shape == (48, 40)
    assert any(not np.array_equal(x, images[i]) for x, i in zip(a, ia))


def test_augmenter_keeps_shape_and_range():
    from export.shift import Augmenter

    aug = Augmenter(np.random.default_rng(0))
    img = np.random.default_rng(1).integers(0, 256, (64, 56)).astype(np.uint8)
    outs = [aug(img) for _ in range(20)]
    assert all(o.shape == (64, 56) and o.dtype == np.float32 and 0 <= o.min() and o.max() <= 255 for o in outs)
    assert len({o.tobytes() for o in outs}) == 20


def test_warm_start_from_a_folded_onnx_export_reproduces_the_model(tmp_path):
    pytest.importorskip("onnx")
    from edgedx import manifest as manifest_mod
    from export.models import load_folded_onnx
    from export.to_onnx import export_torch
    from tests.factories import frame, manifest_dict

    torch.manual_seed(0)
    model = ScreeningCNN(1, 2, (4, 8, 8))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    out = tmp_path / "m.onnx"
    export_torch(model, out, manifest_mod.from_dict(manifest_dict(size=32)), images=[frame(32, 32, seed=i) for i in range(2)])
    again = ScreeningCNN(1, 2, (4, 8, 8))
    assert load_folded_onnx(again, str(out)) == 6  # 5 convolutions and the head
    again.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), again(x), atol=1e-4)
    with pytest.raises(ValueError):
        load_folded_onnx(ScreeningCNN(1, 2, (4, 8)), str(out))
    # The bundled models carry a class-activation head (a 1x1 convolution writing the `cam` output):
    # it is not a layer of the network, so a warm start from them loads the same layers.
    explained = tmp_path / "explained.onnx"
    export_torch(model, explained, manifest_mod.from_dict(manifest_dict(size=32)), images=[frame(32, 32, seed=i) for i in range(2)],
                 explain=True)
    third = ScreeningCNN(1, 2, (4, 8, 8))
    assert load_folded_onnx(third, str(explained)) == 6
    third.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), third(x), atol=1e-4)
