"""Small ONNX models that are wrong in one way each, built with onnx.helper (nothing downloaded).

Each must give exit code 4 with one line, or (non-finite outputs) an error record per input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgedx.manifest import METADATA_KEY
from tests.factories import manifest_dict


def _save(path: Path, nodes, inputs, outputs, inits=(), manifest: dict | None = None, check: bool = True) -> Path:
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph(nodes, "bad", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if manifest is not None:
        helper.set_model_props(model, {METADATA_KEY: json.dumps(manifest)})
    if check:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _pool(x: str = "input"):
    from onnx import helper

    return [helper.make_node("GlobalAveragePool", [x], ["g"]), helper.make_node("Flatten", ["g"], ["f"])]


def _io(name: str, elem: int, shape: list):
    from onnx import helper

    return helper.make_tensor_value_info(name, elem, shape)


def scaled(path: Path, factor: float, *, rows: slice | None = None, manifest: dict | None = None) -> Path:
    """Two logits (mean pixel, 0) times ``factor``: NaN or inf gives non-finite outputs for every
    input; a huge finite factor overflows the activation."""
    from onnx import TensorProto, helper

    w = np.array([[1.0], [0.0]], np.float32) * np.float32(1.0)
    nodes = [*_pool(), helper.make_node("MatMul", ["f", "w"], ["m"]), helper.make_node("Mul", ["m", "k"], ["logits"])]
    return _save(
        path, nodes,
        [_io("input", TensorProto.FLOAT, ["N", 1, 32, 32])], [_io("logits", TensorProto.FLOAT, ["N", 2])],
        [("w", w.T.copy()), ("k", np.array([factor], np.float32))],
        manifest if manifest is not None else manifest_dict(),
    )  # fmt: skip


def nan_for_dark_inputs(path: Path) -> Path:
    """NaN for inputs whose mean (after normalization) is below 0, finite scores otherwise:
    log(mean + 1) is NaN for mean < -1 (a black image under mean 0.5, std 0.25 is -2)."""
    from onnx import TensorProto, helper

    nodes = [
        *_pool(),
        helper.make_node("Add", ["f", "one"], ["s"]),
        helper.make_node("Log", ["s"], ["l"]),
        helper.make_node("Concat", ["l", "f"], ["logits"], axis=1),
    ]
    return _save(
        path, nodes,
        [_io("input", TensorProto.FLOAT, ["N", 1, 32, 32])], [_io("logits", TensorProto.FLOAT, ["N", 2])],
        [("one", np.array([[1.0]], np.float32))], manifest_dict(),
    )  # fmt: skip


def single_column(path: Path, *, dynamic: bool = True) -> Path:
    """One output column for two labels with softmax (the width dynamic: only known when run)."""
    from onnx import TensorProto

    return _save(
        path, _pool()[:1] + [_flatten()],
        [_io("input", TensorProto.FLOAT, ["N", 1, 32, 32])],
        [_io("f", TensorProto.FLOAT, ["N", "K"] if dynamic else ["N", 1])], (), manifest_dict(),
    )  # fmt: skip


def _flatten():
    from onnx import helper

    return helper.make_node("Flatten", ["g"], ["f"])


def no_outputs(path: Path) -> Path:
    """A graph that declares no outputs."""
    from onnx import TensorProto

    return _save(path, _pool(), [_io("input", TensorProto.FLOAT, ["N", 1, 32, 32])], [], (), manifest_dict(), check=False)


def int64_input(path: Path) -> Path:
    """An int64 image input (a label-index model, a tokenizer): not an image model edgedx can feed."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT), *_pool("x")]
    nodes += [helper.make_node("Concat", ["f", "f"], ["logits"], axis=1)]
    return _save(
        path, nodes, [_io("input", TensorProto.INT64, ["N", 1, 32, 32])], [_io("logits", TensorProto.FLOAT, ["N", 2])],
        (), manifest_dict(),
    )  # fmt: skip


def ignores_batch(path: Path) -> Path:
    """Always one row of scores, whatever the batch (a model exported with its batch reduced away)."""
    from onnx import TensorProto, helper

    nodes = [*_pool(), helper.make_node("ReduceMean", ["f"], ["r"], axes=[0], keepdims=1),
             helper.make_node("Concat", ["r", "r"], ["logits"], axis=1)]  # fmt: skip
    return _save(
        path, nodes, [_io("input", TensorProto.FLOAT, ["N", 1, 32, 32])], [_io("logits", TensorProto.FLOAT, ["M", 2])],
        (), manifest_dict(),
    )  # fmt: skip
