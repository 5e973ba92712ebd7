"""CAM and feature outputs in the exported graph, flip TTA, and what classify does with them."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.factories import frame, manifest_dict

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from export import explain
from export.models import ResNet, ScreeningCNN


def test_cam_mean_plus_bias_is_the_logit_and_flip_tta_averages_views():
    torch.manual_seed(0)
    model = ScreeningCNN(1, 2, (4, 8, 8)).eval()
    x = torch.randn(3, 1, 32, 32)
    wrapped, names, why_not = explain.explainable(model)
    assert why_not is None and names == ["logits", "features", "cam"]
    with torch.no_grad():
        logits, feats, cam = wrapped(x)
        assert torch.allclose(logits, model(x), atol=1e-5)
        assert torch.allclose(cam.mean((2, 3)) + model.head[-1].bias, logits, atol=1e-5)
        assert feats.shape == (3, 8)
        tta, _, _ = explain.explainable(model, flip_tta=True)[0](x)
        assert torch.allclose(tta, 0.5 * (model(x) + model(torch.flip(x, dims=[3]))), atol=1e-5)


def test_models_without_gap_linear_head_say_why():
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

        def forward(self, x):
            return self.head(x)

    why = explain.gap_linear_parts(Flat())
    assert isinstance(why, str) and "not global average pooling" in why
    assert isinstance(explain.gap_linear_parts(torch.nn.Conv2d(1, 1, 3)), str)
    assert not isinstance(explain.gap_linear_parts(ResNet(1, 2, width=4)), str)


def test_torchvision_layout_is_explained_only_when_its_forward_is_its_children_in_order():
    from export.models import resnet18

    torch.manual_seed(0)
    x = torch.randn(2, 1, 64, 64)
    net = resnet18(num_classes=2, in_channels=1).eval()
    wrapped, names, why_not = explain.explainable(net, example=x)
    assert why_not is None and names == ["logits", "features", "cam"]
    with torch.no_grad():
        logits, feats, cam = wrapped(x)
        assert torch.allclose(logits, net(x), atol=1e-5) and feats.shape == (2, 512) and cam.shape == (2, 2, 2, 2)

    class Tricky(torch.nn.Module):  # torchvision's names, but forward does more than apply them in order
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.flatten(self.avgpool(torch.relu(self.conv(x))), 1))

    model, names, why_not = explain.explainable(Tricky().eval(), example=x)
    assert names == ["logits"] and "rebuilt logits differ" in why_not and isinstance(model, Tricky)


@pytest.fixture(scope="module")
def explained_onnx(tmp_path_factory):
    from edgedx import manifest as manifest_mod
    from export.to_onnx import export_torch

    tmp = tmp_path_factory.mktemp("explained")
    torch.manual_seed(0)
    model = ResNet(1, 2, width=4, blocks=(1, 1)).eval()
    m = manifest_mod.from_dict(manifest_dict(size=64))
    out = tmp / "resnet.onnx"
    export_torch(model, out, m, images=[frame(64, 64, seed=i) for i in range(4)], explain=True)
    return out


def test_export_adds_features_and_cam_outputs(explained_onnx):
    import onnxruntime as ort

    from edgedx import manifest as manifest_mod

    m = manifest_mod.load(explained_onnx)
    assert m.features_output == "features" and m.cam_output == "cam"
    sess = ort.InferenceSession(str(explained_onnx), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "features", "cam"]
    x = np.random.default_rng(0).normal(size=(2, 1, 64, 64)).astype(np.float32)
    _, feats, cam = sess.run(None, {"input": x})
    assert cam.shape[:2] == (2, 2) and feats.shape == (2, 8)


def test_classify_writes_one_heatmap_per_input_without_name_collisions(explained_onnx, tmp_path):
    from edgedx.cli import main

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "scan.png"), frame(80, 80, seed=ord(folder)))
    out = tmp_path / "records.ndjson"
    code = main(["classify", str(tmp_path / "a"), str(tmp_path / "b"), "-m", str(explained_onnx), "--heatmap",
                 str(tmp_path / "maps"), "--json", "-o", str(out), "-q"])
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    paths = {r["heatmap"] for r in records}
    assert len(paths) == 2 and all(p and cv2.imread(p).shape == (64, 64, 3) for p in paths)
    assert all(r["status"] == "ok" for r in records)


def test_heatmap_needs_a_cam_output(tmp_path):
    from edgedx.cli import main
    from tests.factories import tiny_cnn

    model = tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())
    cv2.imwrite(str(tmp_path / "x.png"), frame(64, 64))
    assert main(["classify", str(tmp_path / "x.png"), "-m", str(model), "--heatmap", str(tmp_path / "maps"), "-q"]) == 2


def test_eval_heatmap_summary(explained_onnx, tmp_path):
    from edgedx.cli import main

    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(tmp_path / "data" / label / f"{i}.png"), frame(64, 64, seed=i + 10 * len(label)))
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["eval", str(explained_onnx), str(tmp_path / "data"), "--heatmap-summary", "--json"])
    assert code == 0
    h = json.loads(buf.getvalue())["heatmap_summary"]
    assert h["all"]["n"] == 6 and 0.0 <= h["all"]["border"] <= 1.0 and h["uniform"]["border"] == pytest.approx(0.36, abs=0.03)


@pytest.fixture()
def layout_model(explained_onnx, tmp_path):
    """The explained ResNet with an OOD section whose image-layout part was fitted on two-field images."""
    import shutil

    from edgedx import manifest as manifest_mod
    from edgedx import ood, preprocess
    from export import trust_fit
    from tests.factories import two_fields

    rng = np.random.default_rng(3)
    model = shutil.copy(explained_onnx, tmp_path / "layout.onnx")
    spec = manifest_mod.load(model).preprocess
    train = [two_fields(rng, 128) for _ in range(300)]
    _, outs = trust_fit.run_outputs(model, train)
    params = trust_fit.fit_params(outs["features"], [preprocess.resize(im, spec) for im in train])
    held = [two_fields(rng, 128) for _ in range(200)]
    scores = ood.layout_scorer(params).score(np.stack([ood.layout(preprocess.resize(im, spec)) for im in held]))
    params["layout"]["threshold"] = float(scores.max() * 1.2)
    trust_fit.set_ood(model, params, None)  # the feature part never rejects here: only the layout decides
    return model


def _layout_inputs(tmp_path):
    from tests.factories import two_fields

    rng = np.random.default_rng(4)
    blob = np.full((128, 128), 200, np.uint8)
    cv2.circle(blob, (64, 50), 30, 60, -1)
    files = {"chest0.png": two_fields(rng, 128), "chest1.png": two_fields(rng, 128), "lesion.png": blob,
             "turned.png": two_fields(rng, 128).T.copy()}
    for name, img in files.items():
        cv2.imwrite(str(tmp_path / name), img)
    return [str(tmp_path / n) for n in files]


@pytest.mark.parametrize("extras", [True, False], ids=["features_returned", "no_extra_outputs"])
def test_image_layout_rejects_before_inference_on_any_backend(layout_model, tmp_path, monkeypatch, extras):
    from edgedx import Classifier
    from edgedx.backends.base import Session

    if not extras:  # a backend that returns no extra outputs: the layout part still runs
        monkeypatch.setattr(Session, "supports_extra_outputs", property(lambda self: False))
    with Classifier(layout_model, "onnxruntime") as clf:
        results = {Path(r.path).name: r for r in clf.classify_many(_layout_inputs(tmp_path))}
    assert results["chest0.png"].status == results["chest1.png"].status == "ok"
    assert (results["chest0.png"].ood_score is not None) == extras
    for name in ("lesion.png", "turned.png"):
        r = results[name]
        assert r.status == "rejected" and r.reason_code == "out_of_distribution", r
        assert r.reason.startswith("image layout distance"), r.reason
        assert r.score is None


def test_classify_without_the_gate_skips_the_layout(layout_model, tmp_path):
    from edgedx import Classifier

    with Classifier(layout_model, "onnxruntime", use_gate=False) as clf:
        results = list(clf.classify_many(_layout_inputs(tmp_path)))
    assert all(r.status == "ok" for r in results)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_resnet18_exported_with_explain_gives_heatmaps_on_every_cpu_backend(tmp_path, backend):
    """`edgedx export onnx --explain` on a torchvision-layout ResNet-18, then `classify --heatmap`:
    one PNG per answer on ONNX Runtime and OpenVINO, and the same CAM from both."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    from edgedx import Classifier
    from edgedx.cli import main
    from export.models import resnet18

    torch.manual_seed(0)
    net = resnet18(num_classes=2, in_channels=1).eval()
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    scans = []
    for i in range(3):
        scans.append(str(tmp_path / f"scan{i}.png"))
        cv2.imwrite(scans[-1], frame(96, 96, seed=i))
    model = tmp_path / "r18.onnx"
    assert main(["export", "onnx", str(tmp_path / "r18.pth"), "-o", str(model), "--arch", "resnet18", "--arch-kwargs", '{"in_channels": 1}',
                 "--labels", "NORMAL,PNEUMONIA", "--positive", "PNEUMONIA", "--size", "64", "--channels", "1", "--explain",
                 "--images", scans[0], "--json"]) == 0
    out = tmp_path / "records.ndjson"
    assert main(["classify", *scans, "-m", str(model), "--backend", backend, "--heatmap", str(tmp_path / backend), "--json",
                 "-o", str(out), "-q"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["backend"] for r in records] == [backend] * 3
    assert all(r["heatmap"] and cv2.imread(r["heatmap"]).shape == (64, 64, 3) for r in records)
    images = [frame(96, 96, seed=i) for i in range(3)]
    from edgedx import preprocess

    with Classifier(model, backend) as clf, Classifier(model, "onnxruntime") as ref:
        batch = preprocess.apply_batch(images, clf.manifest.preprocess)
        _, got = clf.session.run_with(batch, ("cam",))
        _, want = ref.session.run_with(batch, ("cam",))
    assert got["cam"].shape == (3, 2, 2, 2) and np.abs(got["cam"] - want["cam"]).max() <= 1e-3 * max(1.0, np.abs(want["cam"]).max())


def test_onnx_graph_ending_in_pooling_and_gemm_gets_the_trust_outputs(tmp_path):
    import onnx
    import onnxruntime as ort

    from export.explain_onnx import add_trust_outputs, example_batch
    from tests.factories import tiny_cnn

    model = onnx.load(str(tiny_cnn(tmp_path / "t.onnx", size=32)))
    x = example_batch(np.random.default_rng(0).normal(size=(2, 1, 32, 32)).astype(np.float32))
    assert add_trust_outputs(model, x) is None
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, feats, cam = sess.run(None, {"input": x})
    assert [o.name for o in sess.get_outputs()] == ["logits", "features", "cam"]
    assert feats.shape == (4, 8) and cam.shape[:2] == (4, 2)
    bias = logits - cam.mean((2, 3))
    assert np.ptp(bias, axis=0).max() < 1e-4

    # an ending that is not pooling + one linear layer: left as it was, with the reason
    other = onnx.load(str(tiny_cnn(tmp_path / "u.onnx", size=32)))
    last = other.graph.output[0].name
    for node in other.graph.node:
        if last in node.output:
            node.output[0] = "pre_relu"
    other.graph.node.append(onnx.helper.make_node("Relu", ["pre_relu"], [last]))
    before = other.SerializeToString()
    why = add_trust_outputs(other, x)
    assert "Relu" in why and other.SerializeToString() == before


@pytest.mark.parametrize("source", ["onnx", "keras"])
def test_export_onnx_explain_for_onnx_and_keras_sources(tmp_path, source, request):
    """A plain ONNX ResNet-18 (torch.onnx, no edgedx) and a Keras CNN with GlobalAveragePooling2D
    and a Dense softmax: `edgedx export onnx --explain` adds the outputs, `classify --heatmap` uses them."""
    from edgedx import manifest as manifest_mod
    from edgedx.cli import main

    scans = []
    for i in range(3):
        scans.append(str(tmp_path / f"scan{i}.png"))
        cv2.imwrite(scans[-1], frame(96, 96, seed=i))
    if source == "onnx":
        from export.models import resnet18

        torch.manual_seed(0)
        net = resnet18(num_classes=2, in_channels=1).eval()
        src = tmp_path / "plain.onnx"
        torch.onnx.export(net, torch.randn(1, 1, 64, 64), str(src), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
        extra = ["--channels", "1"]
    else:
        keras = request.getfixturevalue("keras")
        inp = keras.Input((48, 48, 1))
        h = keras.layers.Conv2D(8, 3, activation="relu")(inp)
        h = keras.layers.Conv2D(8, 3, activation="relu")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        out = keras.layers.Dense(2, activation="softmax")(h)
        src = tmp_path / "k.keras"
        keras.Model(inp, out).save(str(src))
        extra = []
    model = tmp_path / "out.onnx"
    assert main(["export", "onnx", str(src), "-o", str(model), "--labels", "NORMAL,PNEUMONIA", "--positive", "PNEUMONIA",
                 *extra, "--explain", "--images", scans[0], "--json"]) == 0
    m = manifest_mod.load(model)
    assert m.features_output == "features" and m.cam_output == "cam"
    out = tmp_path / "records.ndjson"
    assert main(["classify", *scans, "-m", str(model), "--heatmap", str(tmp_path / "maps"), "--json", "-o", str(out), "-q"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and all(r["heatmap"] and cv2.imread(r["heatmap"]) is not None for r in records)


def test_bundle_thresholds_come_from_clean_and_pooled_shifted_scores(layout_model):
    """finish_one sets each OOD part's threshold at the higher of its quantile on the clean set and
    on every shifted set pooled (one draw of a few hundred images gave a noisy 99.5% quantile)."""
    from edgedx import manifest as manifest_mod
    from edgedx import ood, preprocess
    from export import trust_fit
    from export.train import Dataset
    from tests.factories import two_fields

    rng = np.random.default_rng(5)

    def data(n, contrast):
        images = [np.clip(two_fields(rng, 128).astype(np.float32) * contrast, 0, 255).astype(np.uint8) for _ in range(n)]
        return Dataset(images, np.arange(n) % 2, [str(i) for i in range(n)])

    sets = {"val": data(40, 1.0), "shifted_val": data(30, 0.7), "shifted_more": data(60, 1.3)}
    entry = trust_fit.finish_one(layout_model, sets, reject=0.05, layout_reject=0.02)
    m = manifest_mod.load(layout_model)
    _, outs = trust_fit.run_outputs(layout_model, [im for d in sets.values() for im in d.images])
    feats = ood.Scorer(m.ood).score(outs["features"])
    clean, shifted = feats[:40], feats[40:]
    assert m.ood["threshold"] == pytest.approx(max(np.quantile(clean, 0.95), np.quantile(shifted, 0.95)), rel=1e-5)
    lay = ood.layout_scorer(m.ood).score(np.stack([ood.layout(preprocess.resize(im, m.preprocess))
                                                   for d in sets.values() for im in d.images]))
    assert m.ood["layout"]["threshold"] == pytest.approx(max(np.quantile(lay[:40], 0.98), np.quantile(lay[40:], 0.98)), rel=1e-5)
    assert set(entry["ood_rejected"]) == {"val", "shifted_val", "shifted_more"} and "pooled" in m.ood["threshold_rule"]
    assert set(m.ood["validation_rejected_either"]) == {"val", "shifted_val", "shifted_more"}
