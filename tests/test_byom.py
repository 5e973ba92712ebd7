"""Bring your own model, walked as a user would: an ONNX file from torch's default exporter, a
PyTorch class of one's own, a torchvision-layout ResNet state dict; each brought in, calibrated on
real X-rays, and classified by edgedx with the source framework's probabilities (within 2e-3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from edgedx import manifest as manifest_mod  # noqa: E402
from tests.byom_helpers import (  # noqa: E402
    IMAGENET_MEAN, IMAGENET_STD, classify_scores, edgedx, edgedx_json, pil_batch, platt, train_briefly, xrays,
)
from tests.conftest import XRAY, need  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
MEAN = ",".join(map(str, IMAGENET_MEAN))
STD = ",".join(map(str, IMAGENET_STD))
LABELS = "NORMAL,PNEUMONIA"
SIZE = 64


class SmallNet(torch.nn.Module):
    def __init__(self, softmax: bool = False) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 2))
        self.softmax = softmax

    def forward(self, x):
        y = self.body(x)
        return torch.softmax(y, 1) if self.softmax else y


def _images(files: list[Path]) -> list:
    return [x for f in files for x in ("--images", f)]


def _torch_default_export(model, path: Path) -> None:
    """What a user gets from torch 2.13's default ``torch.onnx.export``: weights in ``.data``, batch 1."""
    pytest.importorskip("onnxscript", reason="torch 2.13's default exporter needs onnxscript")
    from export.quiet import quiet

    with quiet():
        torch.onnx.export(model, (torch.randn(1, 3, SIZE, SIZE),), str(path))


@pytest.fixture(scope="module")
def trained() -> tuple[SmallNet, list[Path], list[Path]]:
    """A small CNN trained briefly on real X-rays with torchvision-style preprocessing; held-out files."""
    train_files, y = xrays(40, offset=0)
    torch.manual_seed(0)  # the initial weights too: the test must not depend on a lucky draw
    model = train_briefly(SmallNet(), pil_batch(train_files, SIZE), y)
    held_out, _ = xrays(8, offset=1)
    return model, train_files, held_out


def test_existing_onnx_comes_in_calibrated_and_matches_torch(tmp_path: Path, capsys, trained):
    model, _, held_out = trained
    src = tmp_path / "user" / "model.onnx"
    src.parent.mkdir()
    _torch_default_export(model, src)
    assert (src.parent / "model.onnx.data").is_file()  # the weights sit beside the graph

    imported = tmp_path / "imported.onnx"
    result = edgedx_json(capsys, "export", "onnx", src, "-o", imported, "--labels", LABELS, "--positive", "PNEUMONIA",
                         "--scale", "1/255", "--mean", MEAN, "--std", STD, "--interpolation", "linear", "--antialias",
                         "--images", held_out[0], "--images", held_out[-1],
                         "--accepts", '{"modalities": ["CR", "DX"], "min_size": 64}')
    assert result["from"] == "onnx" and result["external_data"] == ["model.onnx.data"]
    assert result["batch"].startswith("dynamic") and result["comparison"]["max_abs_error"] <= 1e-5
    graph = onnx.load(str(imported), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    m = manifest_mod.load(imported)
    p = m.preprocess
    assert (p.width, p.height, p.channels, p.layout.value) == (SIZE, SIZE, 3, "NCHW")  # from the graph
    assert (p.interpolation.value, p.antialias, p.scale) == ("linear", True, pytest.approx(1 / 255))
    assert dict(m.accepts) == {"modalities": ["CR", "DX"], "min_size": 64}

    calibrated = tmp_path / "calibrated.onnx"
    cal = edgedx_json(capsys, "export", "calibrate", imported, need(XRAY), "--limit", "160", "--target-sensitivity", "0.9",
                      "-o", calibrated)
    section = cal["calibration"]
    assert section["method"] == "platt" and cal["n"] == 160
    assert cal["after"]["log_loss"] <= cal["before"]["log_loss"] + 1e-9
    assert 0.0 < cal["threshold"] < 1.0 and cal["at_threshold"]["sensitivity"] >= 0.9
    m = manifest_mod.load(calibrated)
    assert m.calibration["method"] == "platt" and m.threshold == cal["threshold"]
    assert "Wilson" in m.provenance["calibration"]["threshold_rule"]

    # edgedx classify vs torch on PIL-preprocessed images, with the same Platt scaling applied by hand.
    with torch.no_grad():
        logits = model(torch.from_numpy(pil_batch(held_out, SIZE))).numpy().astype(np.float64)
    expected = platt(logits[:, 1] - logits[:, 0], section)
    got = classify_scores(capsys, calibrated, held_out, "PNEUMONIA")
    assert np.abs(got - expected).max() <= 2e-3
    assert np.ptp(expected) > 0.05  # a model whose answers differ, so the comparison means something


def test_final_softmax_moves_into_the_manifest(tmp_path: Path, capsys, trained):
    model, _, held_out = trained
    with_softmax = SmallNet(softmax=True)
    with_softmax.load_state_dict(model.state_dict())
    src = tmp_path / "sm.onnx"
    _torch_default_export(with_softmax.eval(), src)
    code, out, err = edgedx(capsys, "export", "onnx", src, "-o", tmp_path / "out.onnx", "--labels", LABELS, *_images(held_out[:2]))
    assert code == 0, err
    assert "ends in Softmax" in err and "interpolation: area" in err  # an ONNX file keeps today's default, and says so
    graph = onnx.load(str(tmp_path / "out.onnx"))
    assert "Softmax" not in {n.op_type for n in graph.graph.node}
    assert manifest_mod.load(tmp_path / "out.onnx").activation.value == "softmax"
    kept = edgedx_json(capsys, "export", "onnx", src, "-o", tmp_path / "kept.onnx", "--labels", LABELS, "--activation", "none",
                       *_images(held_out[:2]))
    assert kept["manifest"]["output"]["activation"] == "none" and kept["comparison"]["max_abs_error"] <= 1e-6
    assert "Softmax" in {n.op_type for n in onnx.load(str(tmp_path / "kept.onnx")).graph.node}


def _onnx_graph(path: Path, inputs: int = 1, outputs: int = 1, dims=("N", 3, 32, 32), width: int = 2, external: str | None = None):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((width, 3), 0.1, np.float32), "w")
    nodes = [helper.make_node("ReduceMean", ["x0"], ["m"], axes=[2, 3], keepdims=0), helper.make_node("Gemm", ["m", "w"], ["y0"], transB=1)]
    ins = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, list(dims)) for i in range(inputs)]
    outs = [helper.make_tensor_value_info("y0", TensorProto.FLOAT, ["N", width])]
    for i in range(1, outputs):
        nodes.append(helper.make_node("Identity", ["y0"], [f"y{i}"]))
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["N", width]))
    model = helper.make_model(helper.make_graph(nodes, "g", ins, outs, [w]), opset_imports=[helper.make_opsetid("", 17)])
    if external is not None:
        from onnx.external_data_helper import set_external_data

        (path.parent / "w.bin").write_bytes(numpy_helper.to_array(w).tobytes())
        tensor = model.graph.initializer[0]
        set_external_data(tensor, external)
        tensor.data_location = TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("kind, args, code, message", [
    ("two_inputs", {"inputs": 2}, 4, "has 2 inputs"),
    ("two_outputs", {"outputs": 2}, 4, "has 2 outputs"),
    ("three_classes", {"width": 3}, 4, "outputs 3 values but 2 labels were given"),
    ("dynamic_size", {"dims": ("N", 3, "H", "W")}, 2, "--size"),
    ("outside", {"external": "../w.bin"}, 4, "outside the model's folder"),
])
def test_onnx_that_cannot_come_in_says_why(tmp_path: Path, capsys, kind, args, code, message):
    folder = tmp_path / "m"
    folder.mkdir()
    path = _onnx_graph(folder / f"{kind}.onnx", **args)
    if kind == "outside":
        (tmp_path / "w.bin").write_bytes(np.zeros(6, np.float32).tobytes())
    rc, out, err = edgedx(capsys, "export", "onnx", path, "-o", tmp_path / "out.onnx", "--labels", "a,b")
    assert rc == code and message in err and err.startswith("edgedx: error:")
    assert not (tmp_path / "out.onnx").exists()


def test_a_failed_export_leaves_nothing_at_its_output(tmp_path: Path, capsys, monkeypatch):
    from export import to_onnx

    path = _onnx_graph(tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    out.write_bytes(b"the user's earlier file")

    def mismatch(*args, **kwargs):
        raise to_onnx.ExportMismatch("ONNX Runtime differs from the source model; nothing was written")

    monkeypatch.setattr(to_onnx, "compare", mismatch)
    rc, _, err = edgedx(capsys, "export", "onnx", path, "-o", out, "--labels", "a,b")
    assert rc == 4 and "nothing was written" in err
    assert out.read_bytes() == b"the user's earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]  # no partial file either
    rc, _, err = edgedx(capsys, "export", "onnx", path, "-o", path, "--labels", "a,b")
    assert rc == 2 and "is the input model" in err


USER_FILE = '''
import torch

class MyNet(torch.nn.Module):
    def __init__(self, classes=2, width=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, 2, 1)
        self.head = torch.nn.Linear(width, classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))
'''


def test_own_pytorch_class_from_a_file_or_a_module(tmp_path: Path, capsys, monkeypatch, trained):
    _, _, held_out = trained
    (tmp_path / "mynets").mkdir()
    (tmp_path / "mynets" / "__init__.py").write_text("")
    (tmp_path / "mynets" / "arch.py").write_text(USER_FILE)
    sys.path.insert(0, str(tmp_path))
    try:
        from mynets.arch import MyNet
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mynets.arch", None)
        sys.modules.pop("mynets", None)
    net = MyNet(width=6).eval()
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    common = ["--labels", LABELS, "--size", str(SIZE), "--mean", MEAN, "--std", STD, *_images(held_out[:4])]

    result = edgedx_json(capsys, "export", "onnx", tmp_path / "weights.pt", "-o", tmp_path / "a.onnx",
                         "--arch", f"{tmp_path / 'mynets' / 'arch.py'}:MyNet", "--arch-kwargs", '{"width": 6}', *common)
    assert result["from"] == "state_dict" and result["comparison"]["max_abs_error"] <= 1e-4
    p = manifest_mod.load(tmp_path / "a.onnx").preprocess
    assert (p.interpolation.value, p.antialias) == ("linear", True)  # torchvision Resize's default

    monkeypatch.chdir(tmp_path)
    result = edgedx_json(capsys, "export", "onnx", tmp_path / "weights.pt", "-o", tmp_path / "b.onnx",
                         "--arch", "mynets.arch:MyNet", "--arch-kwargs", '{"width": 6}', *common)
    assert result["comparison"]["max_abs_error"] <= 1e-4

    rc, _, err = edgedx(capsys, "export", "onnx", tmp_path / "weights.pt", "-o", tmp_path / "c.onnx", "--arch", "mynets.arch:MyNet", *common)
    assert rc == 4 and "shape differs" in err and "conv.weight (6, 3, 3, 3) vs (8, 3, 3, 3)" in err

    torch.save(SmallNet(), tmp_path / "whole.pt")  # a pickled module: the message says what to do, once
    rc, _, err = edgedx(capsys, "export", "onnx", tmp_path / "whole.pt", "-o", tmp_path / "d.onnx", *common)
    assert rc == 4 and "torch.save(model.state_dict()" in err and "--arch path/to/file.py:ClassName" in err


TORCHVISION_RESNET18_KEYS = 122  # len(torchvision.models.resnet18().state_dict())
TORCHVISION_RESNET50_KEYS = 320


def test_torchvision_resnet_state_dicts_load_by_name(tmp_path: Path, capsys, trained):
    from export.models import resnet18, resnet34, resnet50

    sd18, sd50 = resnet18().state_dict(), resnet50().state_dict()
    assert len(sd18) == TORCHVISION_RESNET18_KEYS and len(sd50) == TORCHVISION_RESNET50_KEYS
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
                "layer4.1.bn2.num_batches_tracked", "fc.bias"):
        assert key in sd18
    assert "layer4.2.conv3.weight" in sd50 and tuple(sd50["fc.weight"].shape) == (1000, 2048)

    _, _, held_out = trained
    torch.manual_seed(0)
    net = resnet18(num_classes=2).eval()
    with torch.no_grad():
        net.fc.weight.mul_(100.0)  # untrained features, but answers that differ from image to image
    torch.save({"state_dict": net.state_dict()}, tmp_path / "resnet18_xray.pth")  # a training checkpoint's layout
    out = tmp_path / "r18.onnx"
    result = edgedx_json(capsys, "export", "onnx", tmp_path / "resnet18_xray.pth", "-o", out, "--arch", "resnet18",
                         "--labels", LABELS, "--positive", "PNEUMONIA", "--size", str(SIZE), "--scale", "1/255",
                         "--mean", MEAN, "--std", STD, *_images(held_out[:4]))
    assert result["comparison"]["max_abs_error"] <= 1e-4  # 2 classes read from fc.weight
    with torch.no_grad():
        logits = net(torch.from_numpy(pil_batch(held_out, SIZE))).numpy().astype(np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    expected = (e / e.sum(1, keepdims=True))[:, 1]
    got = classify_scores(capsys, out, held_out, "PNEUMONIA")
    assert np.abs(got - expected).max() <= 2e-3 and np.ptp(expected) > 0.05

    torch.save(resnet34(num_classes=2).state_dict(), tmp_path / "r34.pth")
    rc, _, err = edgedx(capsys, "export", "onnx", tmp_path / "r34.pth", "-o", tmp_path / "x.onnx", "--arch", "resnet18",
                        "--labels", LABELS, "--size", "64")
    assert rc == 4 and "unexpected: layer1.2.conv1.weight" in err


def test_third_party_chatter_stays_off_stderr(tmp_path: Path):
    torch.save(SmallNet().state_dict(), tmp_path / "w.pt")
    (tmp_path / "net.py").write_text("from tests.test_byom import SmallNet\n")
    root = Path(__file__).resolve().parents[1]
    args = [sys.executable, "-m", "edgedx", "export", "onnx", str(tmp_path / "w.pt"), "-o", str(tmp_path / "o.onnx"),
            "--arch", f"{tmp_path / 'net.py'}:SmallNet", "--labels", LABELS, "--size", "32", "--interpolation", "area"]
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr
    assert all(line.startswith("edgedx: ") for line in done.stderr.splitlines()), done.stderr
    assert done.stdout.startswith("wrote ")
