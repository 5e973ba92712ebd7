"""The training recipe: a one-epoch smoke run on a few real images, and its building blocks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import XRAY, need

torch = pytest.importorskip("torch")

from export import train  # noqa: E402
from export.models import ScreeningCNN  # noqa: E402


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
    assert summary["calibration"]["platt"]["fitted_on"] == "validation split"
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
    patients = lambda names: {train.patient_id(n) for n in names}  # noqa: E731
    assert not patients(val) & patients(tr)
    assert all(p.is_symlink() for p in (tmp_path / "split").rglob("*.jpeg"))
