"""export.to_onnx: PyTorch and Keras sources -> one self-contained ONNX file with its manifest, compared
with the source on real X-rays through edgedx's own preprocessing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from typer.testing import CliRunner  # noqa: E402

from edgedx import manifest as manifest_mod  # noqa: E402
from edgedx.api import Classifier  # noqa: E402
from edgedx.errors import BackendUnavailable, ModelError, UsageError  # noqa: E402
from export import cli  # noqa: E402
from export.models import ResNet, ScreeningCNN  # noqa: E402
from export.from_keras import export_keras  # noqa: E402
from export.to_onnx import ExportMismatch, export_torch  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),  # keras
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning"),  # TorchScript is still a source
]

SMALL = {"in_channels": 1, "num_classes": 2, "widths": [4, 8, 8]}


def xray_manifest(size: int = 64, channels: int = 1, **changes) -> manifest_mod.Manifest:
    data = {
        "schema_version": 1,
        "labels": ["NORMAL", "PNEUMONIA"],
        "input": {"layout": "NCHW", "height": size, "width": size, "channels": channels},
        "preprocess": {"resize": "stretch", "scale": 1 / 255, "mean": [0.48], "std": [0.24]},
        "output": {"activation": "softmax"},
        "positive_label": "PNEUMONIA",
        "threshold": 0.3,
        "provenance": {"source_model": "test"},
        **changes,
    }
    return manifest_mod.from_dict(data)


def assert_self_contained(path: Path) -> onnx.ModelProto:
    model = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    onnx.checker.check_model(model)
    return model


# -- PyTorch -------------------------------------------------------------------------------------


def test_resnet_module_matches_torch_on_real_xrays(tmp_path: Path, xray_files: list[Path]):
    torch.manual_seed(0)
    module = ResNet(3, 2, width=8)
    m = xray_manifest(channels=3, preprocess={"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    out = tmp_path / "resnet.onnx"
    result = export_torch(module, out, m, images=xray_files)

    c = result["comparison"]
    assert c["images"] == len(xray_files) and c["max_abs_error"] <= 1e-4 and c["top1_agreement"] == 1.0
    model = assert_self_contained(out)
    assert list(tmp_path.iterdir()) == [out]
    assert model.opset_import[0].version == 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    embedded = manifest_mod.load(out)
    assert embedded.labels == m.labels and embedded.precision == "fp32" and embedded.threshold == 0.3
    assert embedded.input_name == "input" and embedded.output_name == "logits"
    assert embedded.provenance["export"]["from"] == "module"
    with Classifier(out, "onnxruntime", batch_size=5) as clf:  # a batch other than the traced one
        assert clf.predict_proba([np.full((80, 60), 90, np.uint8)] * 5).shape == (5, 2)


def test_state_dict_and_torchscript_sources(tmp_path: Path, xray_files: list[Path]):
    torch.manual_seed(1)
    module = ScreeningCNN(**SMALL).eval()
    torch.save(module.state_dict(), tmp_path / "model.pt")
    torch.jit.script(module).save(str(tmp_path / "model.ts"))
    m = xray_manifest()

    from_sd = export_torch(tmp_path / "model.pt", tmp_path / "sd.onnx", m, images=xray_files, architecture="screening_cnn", arch_kwargs=SMALL)
    from_ts = export_torch(tmp_path / "model.ts", tmp_path / "ts.onnx", m, images=xray_files)
    assert from_sd["from"] == "state_dict" and from_ts["from"] == "torchscript"
    assert from_sd["comparison"]["max_abs_error"] <= 1e-4 and from_ts["comparison"]["max_abs_error"] <= 1e-4
    with Classifier(tmp_path / "sd.onnx", "onnxruntime") as a, Classifier(tmp_path / "ts.onnx", "onnxruntime") as b:
        img = [np.random.default_rng(0).integers(0, 255, (100, 90), np.uint8)]
        np.testing.assert_allclose(a.predict_proba(img), b.predict_proba(img), atol=1e-6)

    with pytest.raises(UsageError, match="architecture"):
        export_torch(tmp_path / "model.pt", tmp_path / "x.onnx", m, images=xray_files)
    with pytest.raises(ModelError, match="does not fit"):
        export_torch(tmp_path / "model.pt", tmp_path / "x.onnx", m, images=xray_files, architecture="resnet")


class _Pickled:  # not a tensor: weights_only=True must refuse it
    pass


def test_pickled_objects_are_refused(tmp_path: Path):
    torch.save({"weights": _Pickled()}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="weights_only"):
        export_torch(tmp_path / "evil.pt", tmp_path / "x.onnx", xray_manifest(), architecture="screening_cnn")


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic-batch", "batch-1"])
def test_exported_program_source(tmp_path: Path, xray_files: list[Path], dynamic: bool):
    pytest.importorskip("onnxscript", reason="the dynamo exporter (.pt2 sources) needs onnxscript")
    module = ScreeningCNN(**SMALL).eval()
    if dynamic:
        program = torch.export.export(module, (torch.randn(2, 1, 64, 64),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        program = torch.export.export(module, (torch.randn(1, 1, 64, 64),))
    torch.export.save(program, str(tmp_path / "model.pt2"))
    result = export_torch(tmp_path / "model.pt2", tmp_path / "ep.onnx", xray_manifest(), images=xray_files)
    assert result["from"] == "exported_program" and result["opset"] >= 18
    assert result["comparison"]["max_abs_error"] <= 1e-4 and result["comparison"]["images"] == len(xray_files)
    batch = onnx.load(str(tmp_path / "ep.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert (batch.dim_param == "batch") if dynamic else (batch.dim_value == 1)


class _Branchy(torch.nn.Module):
    """Data-dependent control flow: tracing freezes one branch, so the export is wrong on the other."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16 * 16, 2)

    def forward(self, x):
        logits = self.fc(x.flatten(1))
        return logits if bool(x.mean() > 0) else -logits


def test_export_that_differs_from_its_source_fails(tmp_path: Path):
    dark, bright = np.full((16, 16), 20, np.uint8), np.full((16, 16), 230, np.uint8)
    images = [dark, dark] + [bright] * 6  # traced on the dark pair; the source's batch mean is bright
    m = xray_manifest(size=16, preprocess={"scale": 1 / 255, "mean": [0.5], "std": [0.25]})
    with pytest.raises(ExportMismatch, match="top-1 agreement 0.000"):
        export_torch(_Branchy(), tmp_path / "b.onnx", m, images=images)


def test_simplify(tmp_path: Path, xray_files: list[Path]):
    pytest.importorskip("onnxslim")
    plain = export_torch(ScreeningCNN(**SMALL), tmp_path / "plain.onnx", xray_manifest(), images=xray_files[:2])
    slim = export_torch(ScreeningCNN(**SMALL), tmp_path / "slim.onnx", xray_manifest(), images=xray_files[:2], simplify=True)
    assert slim["simplified"] and slim["comparison"]["max_abs_error"] <= 1e-4
    assert len(onnx.load(str(tmp_path / "slim.onnx")).graph.node) < len(onnx.load(str(tmp_path / "plain.onnx")).graph.node)
    assert plain["comparison"]["top1_agreement"] == 1.0


def test_cli_onnx_from_state_dict(tmp_path: Path, xray_files: list[Path]):
    torch.save(ScreeningCNN(**SMALL).state_dict(), tmp_path / "model.pt")
    args = ["onnx", str(tmp_path / "model.pt"), "-o", str(tmp_path / "m.onnx"), "--arch", "screening_cnn",
            "--arch-kwargs", json.dumps(SMALL), "--labels", "NORMAL,PNEUMONIA", "--positive", "PNEUMONIA", "--threshold", "0.25",
            "--size", "64", "--channels", "1", "--mean", "0.48", "--std", "0.24", "--images", str(xray_files[0].parent), "--num-images", "4", "--json"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["comparison"]["images"] == 4 and report["manifest"]["threshold"] == 0.25
    assert manifest_mod.load(tmp_path / "m.onnx").preprocess.mean == (0.48,)

    missing = CliRunner().invoke(cli.app, ["onnx", str(tmp_path / "model.pt"), "-o", str(tmp_path / "n.onnx")])
    assert isinstance(missing.exception, UsageError) and "--labels and --size" in str(missing.exception)


# -- Keras ---------------------------------------------------------------------------------------


def tutorial_cnn(keras, size: int, head: tuple[int, str], widths=(4, 8, 8, 16)):
    """The tutorials' Sequential CNN layer for layer, with fewer filters to keep the test fast."""
    from keras import layers

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((size, size, 3)),
        layers.Conv2D(widths[0], (3, 3), activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(widths[1], (3, 3), activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(widths[2], (3, 3), activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(widths[3], activation="relu"), layers.Dropout(0.5),
        layers.Dense(head[0], activation=head[1]),
    ])


def keras_files(keras, model, tmp_path: Path, name: str) -> list[Path]:
    paths = [tmp_path / f"{name}.keras"]
    model.save(paths[0])
    try:
        import h5py  # noqa: F401
    except ImportError:
        return paths
    paths.append(tmp_path / f"{name}.h5")
    model.save(paths[1])
    return paths


def test_keras_binary_sigmoid_tutorial(keras, tmp_path: Path, xray_files: list[Path]):
    model = tutorial_cnn(keras, 150, (1, "sigmoid"))
    for path in keras_files(keras, model, tmp_path, "binary"):
        out = tmp_path / f"{path.suffix[1:]}.onnx"
        result = export_keras(path, out, ["Normal", "Abnormal"], images=xray_files)
        assert result["comparison"]["max_abs_error"] <= 1e-4 and result["comparison"]["top1_agreement"] == 1.0
        m = manifest_mod.load(out)
        assert m.activation.value == "sigmoid" and m.labels == ("Normal", "Abnormal")
        assert m.positive_label == "Abnormal" and m.threshold == 0.5
        p = m.preprocess
        assert (p.layout.value, p.width, p.height, p.channels) == ("NHWC", 150, 150, 3)
        assert p.scale == pytest.approx(1 / 255) and p.mean == (0.0,) and p.std == (1.0,)
        graph = onnx.load(str(out)).graph
        assert "Sigmoid" not in {n.op_type for n in graph.node}  # logits out; the manifest applies sigmoid
        assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim][1:] == [1]


def test_keras_softmax_tutorial(keras, tmp_path: Path, xray_files: list[Path]):
    model = tutorial_cnn(keras, 224, (3, "softmax"))
    path = keras_files(keras, model, tmp_path, "multi")[-1]
    result = export_keras(path, tmp_path / "multi.onnx", ["normal", "bacterial", "viral"], images=xray_files)
    assert result["comparison"]["max_abs_error"] <= 1e-4
    m = manifest_mod.load(tmp_path / "multi.onnx")
    assert m.activation.value == "softmax" and m.positive_label is None and m.preprocess.layout.value == "NHWC"
    with pytest.raises(ModelError, match="3 values but 2 labels"):
        export_keras(path, tmp_path / "x.onnx", ["a", "b"], images=xray_files)


def test_missing_keras_says_what_to_install(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)  # import keras -> ImportError
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    with pytest.raises(BackendUnavailable, match=r"pip install 'edgedx\[export\]'"):
        export_keras(tmp_path / "m.keras", tmp_path / "m.onnx", ["a", "b"])


def test_keras_one_unit_softmax_is_refused(keras, tmp_path: Path):
    model = tutorial_cnn(keras, 64, (1, "softmax"))
    model.save(tmp_path / "bad.keras")
    with pytest.raises(ModelError, match="always 1.0"):
        export_keras(tmp_path / "bad.keras", tmp_path / "bad.onnx", ["Normal", "Abnormal"])
    assert not (tmp_path / "bad.onnx").exists()


# -- the bundled model -----------------------------------------------------------------------------


def test_bundle_default_from_a_fake_run(tmp_path: Path, xray_files: list[Path]):
    from export.bundle import FP32_NAME, INT8_NAME, bundle_default

    run = tmp_path / "runs" / "default"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(ScreeningCNN(1, 2, (4, 8, 8)).state_dict(), run / "model.pt")
    training = {
        "architecture": "ScreeningCNN", "widths": [4, 8, 8], "labels": ["NORMAL", "PNEUMONIA"], "positive_label": "PNEUMONIA",
        "threshold": 0.31,
        "preprocess": {"width": 64, "height": 64, "channels": 1, "resize": "stretch", "scale": 1 / 255, "mean": [0.48], "std": [0.24]},
        "validation": {"n": 10, "accuracy": 0.9, "auc": 0.95, "sensitivity": 0.96, "specificity": 0.8, "confusion": [[4, 1], [0, 5]]},
        "training": {"command": "python -m export.train data --out runs/default", "data": "data", "minutes": 1.5,
                     "epochs_run": 3, "date": "2025-01-01", "torch": torch.__version__},
        "history": [],
    }
    (run / "training.json").write_text(json.dumps(training))
    out = tmp_path / "models"
    summary = bundle_default(run, out, xray_files, num_calib=6)

    assert sorted(p.name for p in out.iterdir()) == sorted([FP32_NAME, INT8_NAME])  # the calibration cache stays in the run
    assert summary["fp32"]["comparison"]["max_abs_error"] <= 1e-4
    fp32, int8 = manifest_mod.load(out / FP32_NAME), manifest_mod.load(out / INT8_NAME)
    assert fp32.threshold == int8.threshold == 0.31 and fp32.preprocess.mean == (0.48,)
    assert fp32.precision == "fp32" and int8.precision == "int8"
    prov = fp32.provenance
    assert prov["source_model"] == "default/model.pt" and prov["training_command"].startswith("python -m export.train")
    assert prov["validation"]["auc"] == 0.95 and "confusion" not in prov["validation"] and prov["trained"] == "2025-01-01"
    q = int8.provenance["quantization"]
    assert q["target"] == "cpu" and q["method"] == "percentile" and q["images"] == 6
    assert q["source_sha256"] == summary["fp32"]["sha256"]
