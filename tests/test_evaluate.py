"""edgedx.evaluate: labelled data loading, evaluation at the operating threshold, verify and the gate."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedx import metrics
from edgedx.api import Classifier
from edgedx.errors import UsageError
from edgedx.evaluate import Gate, evaluate, load_dataset, verify
from tests.conftest import XRAY, need
from tests.factories import manifest_dict, tiny_cnn

onnx = pytest.importorskip("onnx")


def brightness_cnn(path: Path, *, size: int = 32, manifest: dict | None = None, shift: float = 0.0) -> Path:
    """A hand-set CNN whose PNEUMONIA logit grows with image brightness: it really separates
    :func:`brightness_npz`'s classes, so a damaged copy visibly loses accuracy and AUC."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.full((4, 1, 3, 3), 1 / 9, np.float32)
    b = np.array([0.0, -0.5, 0.5, 1.0], np.float32)
    fw = np.array([[-1.0] * 4, [1.0] * 4], np.float32)
    fb = np.array([0.0, -3.0 - shift], np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "brightness",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (fw, "fw"), (fb, "fb"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"edgedx.manifest": json.dumps(manifest or manifest_dict(size=size))})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def brightness_images(n: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Gray images whose class (1 = PNEUMONIA) shows in their mean brightness, with overlap."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    means = np.where(labels == 1, rng.normal(150, 20, n), rng.normal(105, 20, n))
    images = np.clip(means[:, None, None] + rng.normal(0, 10, (n, size, size)), 0, 255).astype(np.uint8)
    return images, labels


def brightness_npz(path: Path, n: int = 80, splits=("test", "val")) -> Path:
    arrays = {}
    for i, split in enumerate(splits):
        images, labels = brightness_images(n, seed=i)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None]
    np.savez(path, **arrays)
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return brightness_cnn(tmp_path / "bright.onnx")


# -- loading -------------------------------------------------------------------------------------


def test_folder_labels_map_case_insensitively_and_unknown_folders_are_refused(tmp_path: Path):
    for folder, value in (("normal", 60), ("Pneumonia", 200)):
        (tmp_path / "d" / folder).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(tmp_path / "d" / folder / f"{i}.png"), np.full((20, 20), value + i, np.uint8))
    data = load_dataset(tmp_path / "d", ("NORMAL", "PNEUMONIA"))
    assert data.targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.image(3).mean() == 200
    (tmp_path / "d" / "covid").mkdir()
    with pytest.raises(UsageError, match="covid"):
        load_dataset(tmp_path / "d", ("NORMAL", "PNEUMONIA"))


def test_npz_split_defaults_to_test_then_val(tmp_path: Path):
    both = brightness_npz(tmp_path / "both.npz", n=6)
    assert load_dataset(both, ("a", "b")).split == "test"
    assert load_dataset(both, ("a", "b"), split="val").split == "val"
    only_val = brightness_npz(tmp_path / "val.npz", n=6, splits=("val", "train"))
    assert load_dataset(only_val, ("a", "b")).split == "val"
    with pytest.raises(UsageError, match="no test_images"):
        load_dataset(only_val, ("a", "b"), split="test")
    with pytest.raises(UsageError, match="labels range 0..1"):
        load_dataset(both, ("only",))


def test_limit_spreads_over_the_classes(tmp_path: Path):
    data = load_dataset(brightness_npz(tmp_path / "d.npz", n=40), ("a", "b")).limit(10)
    assert len(data) == 10 and set(data.targets.tolist()) == {0, 1}


# -- evaluate ------------------------------------------------------------------------------------


def test_evaluate_on_real_xrays_matches_metrics_summarize(tmp_path: Path):
    root = need(XRAY)
    path = tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict(threshold=0.4))
    with Classifier(path, "onnxruntime") as clf:
        data = load_dataset(root, clf.manifest.labels).limit(20)
        report = evaluate(clf, data)
        images = [data.image(i) for i in range(len(data))]
        expected = metrics.summarize(data.targets, clf.predict_proba(images), 1, 0.4)
    assert report["n"] == 20 and set(data.targets.tolist()) == {0, 1}
    assert report["threshold"] == 0.4 and report["positive_label"] == "PNEUMONIA"
    assert sum(map(sum, report["confusion"])) == 20
    for key in ("accuracy", "auc", "sensitivity", "specificity", "f1", "confusion"):
        assert report[key] == expected[key], key


def test_evaluate_threshold_override_and_unreadable_files(tmp_path: Path, model: Path):
    root = tmp_path / "d"
    images, labels = brightness_images(12)
    for i, (img, y) in enumerate(zip(images, labels)):
        (root / ["NORMAL", "PNEUMONIA"][y]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / ["NORMAL", "PNEUMONIA"][y] / f"{i}.png"), img)
    (root / "NORMAL" / "broken.png").write_bytes(b"not a png")
    with Classifier(model, "onnxruntime") as clf:
        data = load_dataset(root, clf.manifest.labels)
        strict = evaluate(clf, data, threshold=0.999)
        default = evaluate(clf, data)
    assert default["skipped"] == 1 and default["n"] == 12
    assert strict["threshold"] == 0.999 and strict["sensitivity"] == 0.0
    assert default["auc"] > 0.9 and default["accuracy"] > 0.8


# -- verify and the gate ---------------------------------------------------------------------------


def test_verify_identical_models_pass_with_no_drift(tmp_path: Path, model: Path):
    data_path = brightness_npz(tmp_path / "d.npz")
    with Classifier(model, "onnxruntime") as ref, Classifier(model, "onnxruntime") as cand:
        report = verify(ref, cand, load_dataset(data_path, ref.manifest.labels), Gate())
    assert report["gate"]["passed"] and report["gate"]["failures"] == []
    assert report["flips"] == {"count": 0, "rate": 0.0} and report["top1_agreement"] == 1.0
    assert report["score_drift"]["max_abs"] == 0.0 and report["delta"]["auc"] == 0.0
    assert report["reference"]["auc"] > 0.9


def test_verify_fails_a_degraded_candidate(tmp_path: Path, model: Path):
    data_path = brightness_npz(tmp_path / "d.npz")
    damaged = brightness_cnn(tmp_path / "shifted.onnx", shift=1.0)  # same ranking, scores shifted down
    with Classifier(model, "onnxruntime") as ref, Classifier(damaged, "onnxruntime") as cand:
        report = verify(ref, cand, load_dataset(data_path, ref.manifest.labels))
    assert report["delta"]["auc"] == pytest.approx(0.0, abs=1e-9)  # ranking kept ...
    assert report["flips"]["count"] > 0  # ... but decisions at the threshold move
    assert not report["gate"]["passed"]
    assert report["delta"]["sensitivity"] < -0.05
    assert any(f.startswith("sensitivity dropped") for f in report["gate"]["failures"])


def test_gate_limits():
    report = {
        "reference": {"auc": 0.95, "accuracy": 0.90, "sensitivity": 0.97},
        "candidate": {"auc": 0.944, "accuracy": 0.89, "sensitivity": 0.95},
        "delta": {"auc": -0.006, "accuracy": -0.01, "sensitivity": -0.02},
        "flips": {"count": 3, "rate": 0.03},
    }
    failures = Gate().failures(report)
    assert [f.split()[0] for f in failures] == ["auc", "sensitivity"]  # accuracy exactly at its limit passes
    assert Gate(max_auc_drop=0.01, max_sensitivity_drop=0.05).failures(report) == []
    assert "flipped" in Gate(max_auc_drop=1, max_sensitivity_drop=1, max_flip_rate=0.01).failures(report)[0]


# -- `edgedx eval` -----------------------------------------------------------------------------------


def eval_app():
    import typer

    from export.cli import eval_command

    app = typer.Typer()
    app.callback()(lambda: None)  # keep `eval` a subcommand, as under the edgedx app
    app.command("eval")(eval_command)
    return app


def test_eval_command_on_real_xrays(tmp_path: Path):
    from typer.testing import CliRunner

    root = need(XRAY)
    path = tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())
    runner = CliRunner()
    result = runner.invoke(eval_app(), ["eval", str(path), str(root), "--limit", "20", "--json", "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 20 and report["threshold"] == 0.5 and sum(map(sum, report["confusion"])) == 20

    text = runner.invoke(eval_app(), ["eval", str(path), str(root), "--limit", "20", "--threshold", "0.9"])
    assert text.exit_code == 0, text.output
    assert "decision     PNEUMONIA when p >= 0.9000" in text.stdout and "confusion" in text.stdout


def test_eval_command_on_npz(tmp_path: Path, model: Path):
    from typer.testing import CliRunner

    data = brightness_npz(tmp_path / "d.npz", n=40)
    result = CliRunner().invoke(eval_app(), ["eval", str(model), str(data), "--split", "val", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split"] == "val" and report["n"] == 40 and report["auc"] > 0.9
    bad = CliRunner().invoke(eval_app(), ["eval", str(model), str(data), "--split", "train"])
    assert isinstance(bad.exception, UsageError) and "no train_images" in str(bad.exception)
