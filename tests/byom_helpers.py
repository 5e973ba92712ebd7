"""What a user brings: a small model trained their own way (torchvision-style preprocessing with
PIL), and the edgedx command line run as they would run it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import XRAY, need

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def xrays(per_class: int, offset: int = 0) -> tuple[list[Path], np.ndarray]:
    """``per_class`` real chest X-rays of each class (NORMAL=0, PNEUMONIA=1), spread over the folder."""
    root = need(XRAY)
    files, labels = [], []
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        found = sorted((root / name).glob("*.jpeg"))
        idx = np.linspace(0, len(found) - 1, per_class * 3).round().astype(int)[offset::3][:per_class]
        files += [found[i] for i in idx]
        labels += [label] * len(idx)
    return files, np.asarray(labels)


def pil_batch(files: list[Path], size: int, interpolation: str = "bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD,
              channels: int = 3) -> np.ndarray:
    """torchvision's ``Resize(size) + ToTensor() + Normalize(mean, std)`` on PIL images, as NCHW float32."""
    from PIL import Image

    resample = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[interpolation]
    out = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB" if channels == 3 else "L").resize((size, size), resample)
            x = np.asarray(im, np.float32) / 255.0
        x = x.reshape(size, size, channels)
        out.append(((x - np.asarray(mean[:channels], np.float32)) / np.asarray(std[:channels], np.float32)).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def train_briefly(model, x: np.ndarray, y: np.ndarray, steps: int = 40, lr: float = 3e-3, seed: int = 0):
    """A few Adam steps so the model's scores spread out (an untrained model answers 0.5 everywhere)."""
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(xt), (32,))
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def edgedx(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``edgedx ARGV`` in process; (exit code, stdout, stderr)."""
    from edgedx.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def edgedx_json(capsys, *argv: str) -> dict:
    code, out, err = edgedx(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def classify_scores(capsys, model: Path, files: list[Path], positive: str) -> np.ndarray:
    """``edgedx classify --json``: the positive label's probability per file, in input order."""
    code, out, err = edgedx(capsys, "classify", *files, "--model", model, "--backend", "onnxruntime", "--json", "--no-gate")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [r["status"] for r in records] == ["ok"] * len(files)
    return np.array([r["scores"][positive] for r in records])


def platt(margin: np.ndarray, section: dict) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(section["a"] * margin + section["b"])))
