"""edgedx eval with 95% intervals, calibration error, ROC points and --plot; export verify naming the
flipped and near-threshold files; export manifest editing a copy; export calibrate on .npz data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")

from edgedx import manifest as manifest_mod  # noqa: E402
from tests.byom_helpers import edgedx, edgedx_json  # noqa: E402
from tests.conftest import DATA, need  # noqa: E402
from tests.factories import manifest_dict, tiny_cnn  # noqa: E402

PMNIST = DATA / "pneumoniamnist" / "pneumoniamnist_trainval.npz"


def _model(tmp_path: Path, name: str = "m.onnx", seed: int = 0, threshold: float = 0.5) -> Path:
    data = manifest_dict()
    data["labels"] = ["normal", "pneumonia"]
    data.update(positive_label="pneumonia", threshold=threshold)
    data["input"].update(width=28, height=28)
    return tiny_cnn(tmp_path / name, size=28, manifest=data, seed=seed)


def test_eval_reports_intervals_calibration_error_roc_and_a_plot(tmp_path: Path, capsys):
    pytest.importorskip("matplotlib")
    data = need(PMNIST)
    model = _model(tmp_path)
    plot = tmp_path / "report.png"
    r = edgedx_json(capsys, "eval", model, data, "--split", "val", "--limit", "200", "--plot", plot)
    assert r["n"] == 200
    for key in ("sensitivity", "specificity", "ppv", "npv", "accuracy", "auc"):
        if r[key] is not None:
            low, high = r[f"{key}_ci"]
            assert 0.0 <= low <= r[key] <= high <= 1.0, key
    tp = r["confusion"][1][1]
    positives = sum(r["confusion"][1])
    assert r["sensitivity_ci"] == pytest.approx(_wilson(tp, positives))
    assert 0.0 <= r["brier"] <= 1.0 and 0.0 <= r["ece"] <= 1.0 and r["auc_ci_method"] == "DeLong"
    roc = r["roc"]
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0 and len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and r["plot"] == str(plot)

    code, out, _ = edgedx(capsys, "eval", model, data, "--split", "val", "--limit", "50")
    assert code == 0 and "95% CI [" in out and "ece" in out and "npv" in out


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> list[float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [centre - half, centre + half]


def test_verify_names_flipped_and_near_threshold_files(tmp_path: Path, capsys):
    data = need(PMNIST)
    ref, cand = _model(tmp_path, "ref.onnx", seed=0), _model(tmp_path, "cand.onnx", seed=1)
    code, out, _ = edgedx(capsys, "export", "verify", ref, cand, data, "--split", "val", "--limit", "120", "--json")
    report = json.loads(out)
    assert report["flips"]["count"] > 0  # two different random models disagree somewhere
    assert len(report["flipped"]) == min(report["flips"]["count"], 50)
    first = report["flipped"][0]
    assert first["file"].startswith("pneumoniamnist_trainval.npz:val[") and first["truth"] in ("normal", "pneumonia")
    t = report["threshold"]
    assert (first["reference"] >= t) != (first["candidate"] >= t)
    near = report["near_threshold"]
    for item in near["files"]:
        assert min(abs(item["reference"] - t), abs(item["candidate"] - t)) < near["margin"]
        assert (item["reference"] >= t) == (item["candidate"] >= t)
    code, text, _ = edgedx(capsys, "export", "verify", ref, cand, data, "--split", "val", "--limit", "120")
    assert "flipped    pneumoniamnist_trainval.npz:val[" in text


def test_calibrate_npz_and_edit_the_manifest_in_a_copy(tmp_path: Path, capsys):
    data = need(PMNIST)
    model = _model(tmp_path)
    cal = edgedx_json(capsys, "export", "calibrate", model, data, "--split", "val", "--limit", "200", "-o", tmp_path / "cal.onnx")
    # no target: the decisions stay those of the old threshold, mapped through the fit
    assert cal["threshold_rule"].startswith("the previous threshold 0.5")
    section = cal["calibration"]
    assert cal["threshold"] == pytest.approx(1 / (1 + np.exp(-section["b"])))
    before = manifest_mod.load(model)

    edited = tmp_path / "edited.onnx"
    r = edgedx_json(capsys, "export", "manifest", tmp_path / "cal.onnx", "-o", edited, "--labels", "NORMAL,PNEUMONIA",
                    "--threshold", "1/4", "--accepts", '{"modalities": ["CR", "DX"], "min_size": 16}', "--interpolation", "linear",
                    "--antialias")
    m = manifest_mod.load(edited)
    assert m.labels == ("NORMAL", "PNEUMONIA") and m.positive_label == "PNEUMONIA" and m.threshold == 0.25
    assert dict(m.accepts) == {"modalities": ["CR", "DX"], "min_size": 16} and m.preprocess.antialias is True
    assert m.calibration == manifest_mod.load(tmp_path / "cal.onnx").calibration and "labels" in r["changed"]
    assert manifest_mod.load(model) == before  # the input is never modified

    for args, message in ((["--labels", "a,b,c"], "3 labels"), (["--accepts", '{"modality": ["CR"]}'], "accepts.modality"),
                          (["--interpolation", "nearest", "--antialias"], "antialias"), (["--threshold", "2"], "0..1"),
                          ([], "nothing to change")):
        code, _, err = edgedx(capsys, "export", "manifest", edited, "-o", tmp_path / "bad.onnx", *args)
        assert code == 2 and message in err, (args, err)
        assert not (tmp_path / "bad.onnx").exists()


def test_eval_takes_labels_for_a_model_without_a_manifest(tmp_path: Path, capsys):
    data = need(PMNIST)
    bare = tiny_cnn(tmp_path / "bare.onnx", size=28)
    r = edgedx_json(capsys, "eval", bare, data, "--split", "val", "--limit", "40", "--labels", "normal,pneumonia")
    assert r["labels"] == ["normal", "pneumonia"] and r["n"] == 40
    code, _, err = edgedx(capsys, "eval", _model(tmp_path), data, "--split", "val", "--labels", "a,b")
    assert code == 2 and "export manifest" in err


def test_multiclass_calibration_is_temperature_and_keeps_decisions(tmp_path: Path, capsys):
    data = need(DATA / "retinamnist" / "retinamnist_trainval.npz")
    m = manifest_dict()
    m.update(labels=["g0", "g1", "g2", "g3", "g4"], positive_label=None, threshold=None)
    m["input"].update(width=28, height=28, channels=3)
    model = tiny_cnn(tmp_path / "retina.onnx", size=28, channels=3, classes=5, manifest=m, seed=2)
    cal = edgedx_json(capsys, "export", "calibrate", model, data, "--split", "val", "-o", tmp_path / "cal.onnx")
    assert cal["calibration"]["method"] == "temperature" and cal["threshold"] is None
    assert cal["after"]["log_loss"] <= cal["before"]["log_loss"] + 1e-9
    before = edgedx_json(capsys, "eval", model, data, "--split", "val")
    after = edgedx_json(capsys, "eval", tmp_path / "cal.onnx", data, "--split", "val")
    assert after["confusion"] == before["confusion"]  # temperature never changes the arg-max
    assert after["auc_ci_method"].startswith("bootstrap") and len(after["auc_ci"]) == 2
    code, _, err = edgedx(capsys, "export", "calibrate", model, data, "--split", "val", "--target-sensitivity", "0.9",
                          "-o", tmp_path / "x.onnx")
    assert code == 2 and "--target-sensitivity needs a binary model" in err
