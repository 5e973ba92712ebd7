"""Tiny real ONNX models built with onnx.helper, for tests that must not depend on the bundled model."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgedx.manifest import METADATA_KEY


def tiny_cnn(
    path: Path,
    *,
    channels: int = 1,
    size: int = 32,
    classes: int = 2,
    manifest: dict | None = None,
    layout: str = "NCHW",
    seed: int = 0,
) -> Path:
    """Conv(3x3) -> ReLU -> GlobalAveragePool -> Flatten -> Gemm, dynamic batch; logits out.

    ``manifest`` (a dict) is embedded as the edgedx manifest when given.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, (8, channels, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, 8).astype(np.float32)
    fw = rng.normal(0, 0.5, (classes, 8)).astype(np.float32)
    fb = rng.normal(0, 0.1, classes).astype(np.float32)
    nodes = []
    in_shape = ["N", channels, size, size] if layout == "NCHW" else ["N", size, size, channels]
    x = "input"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["input"], ["x_nchw"], perm=[0, 3, 1, 2]))
        x = "x_nchw"
    nodes += [
        helper.make_node("Conv", [x, "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (fw, "fw"), (fb, "fb"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if manifest is not None:
        import json

        helper.set_model_props(model, {METADATA_KEY: json.dumps(manifest)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def manifest_dict(*, channels: int = 1, size: int = 32, labels=("NORMAL", "PNEUMONIA"), positive="PNEUMONIA", threshold=0.5, layout="NCHW", activation="softmax") -> dict:
    return {
        "schema": "edgedx.manifest",
        "schema_version": 1,
        "labels": list(labels),
        "input": {"name": "input", "layout": layout, "height": size, "width": size, "channels": channels},
        "preprocess": {"resize": "stretch", "scale": 1 / 255, "mean": [0.5], "std": [0.25]},
        "output": {"name": "logits", "activation": activation},
        "positive_label": positive,
        "threshold": threshold,
        "precision": "fp32",
        "provenance": {"source": "tests/factories.py"},
    }


def frame(height: int = 64, width: int = 48, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A non-constant uint8 frame (a gradient with noise) that the input gate accepts."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = (40 + 150 * (x + y) / (height + width) + rng.normal(0, 8, (height, width))).clip(0, 255).astype(np.uint8)
    return img if channels == 1 else np.repeat(img[:, :, None], channels, axis=2)


def two_fields(rng, size=96):
    """A chest-like layout: a bright frame with two dark fields either side of a bright band, jittered."""
    img = np.full((size, size), 200.0)
    for cx in (0.3, 0.7):
        c = (int(size * (cx + rng.normal(0, 0.02))), int(size * (0.5 + rng.normal(0, 0.03))))
        cv2.ellipse(img, c, (int(size * 0.14), int(size * 0.3)), 0, 0, 360, float(rng.uniform(40, 90)), -1)
    img = img * rng.uniform(0.7, 1.1) + rng.uniform(-20, 20) + rng.normal(0, 6, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def resolve_dotted(module, dotted: str):
    """``module.A.B`` for ``"A.B"``: the name checks against real TensorRT packages (AttributeError when missing)."""
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
