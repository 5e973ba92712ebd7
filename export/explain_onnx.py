"""The trust outputs of :mod:`export.explain`, added to an ONNX graph instead of a torch module.

For a classifier that ends in global average pooling and one linear layer, the graph gets two more
outputs: ``features``, the pooled vector the linear layer reads (the out-of-distribution score's
input), and ``cam``, a 1x1 convolution of the last feature map with the linear layer's weights
(N, K, h, w): its spatial mean plus the bias is the logit. Recognised endings, after an optional
final Softmax/Sigmoid:

- ``GlobalAveragePool`` or ``ReduceMean`` over axes (2, 3) of an NCHW feature map, then
  ``Flatten``/``Reshape``/``Squeeze``, then ``Gemm`` (PyTorch exports);
- ``ReduceMean`` over axes (1, 2) of an NHWC feature map, then ``MatMul`` (+ ``Add``) (Keras
  through tf2onnx); the map is transposed to (N, K, h, w).

The result is checked on an example batch (``cam`` must reproduce the logits); a graph that does
not fit is left as it was, with the reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from export.explain import CAM_NAME, FEATURES_NAME

_PASS_THROUGH = {"Flatten", "Reshape", "Squeeze", "Identity", "Cast"}
_SAME_VALUES = {"Identity", "Cast"}  # exporters (Keras's torch backend) put float-to-float casts between layers


def add_trust_outputs(model: Any, example: np.ndarray) -> str | None:
    """Add ``features`` and ``cam`` outputs to ``model`` (an ``onnx.ModelProto``, changed in place).

    Returns:
        None when they were added, else why not (a sentence for the export log).
    """
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    names = {o.name for o in g.output}
    if FEATURES_NAME in names or CAM_NAME in names:
        return None if {FEATURES_NAME, CAM_NAME} <= names else "the graph already has one of the features/cam outputs"
    producer = {out: n for n in g.node for out in n.output}
    init = {t.name: t for t in g.initializer}
    node = _skip(producer.get(g.output[0].name), producer)
    if node is not None and node.op_type in ("Softmax", "Sigmoid", "LogSoftmax"):
        node = _skip(producer.get(node.input[0]), producer)
    linear = _linear(node, producer, init)
    if isinstance(linear, str):
        return linear
    pooled_name, weight, logits_name = linear
    pool = producer.get(pooled_name)
    steps = 0
    while pool is not None and pool.op_type in _PASS_THROUGH and steps < 6:
        pool, steps = producer.get(pool.input[0]), steps + 1
    fmap_layout = _pooling(pool, init)
    if isinstance(fmap_layout, str):
        return fmap_layout
    fmap, layout = fmap_layout
    k, c = weight.shape
    backup = onnx.ModelProto()
    backup.CopyFrom(model)
    w_name, cam_raw = "edgedx_cam_weight", "edgedx_cam_nhwc"
    new_nodes = [helper.make_node("Identity", [pooled_name], [FEATURES_NAME], name="edgedx_features")]
    if layout == "NCHW":
        g.initializer.append(numpy_helper.from_array(weight.reshape(k, c, 1, 1).astype(np.float32), w_name))
        new_nodes.append(helper.make_node("Conv", [fmap, w_name], [CAM_NAME], name="edgedx_cam"))
    else:  # NHWC: (N, h, w, C) x (C, K) -> (N, h, w, K) -> (N, K, h, w)
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T).astype(np.float32), w_name))
        new_nodes.append(helper.make_node("MatMul", [fmap, w_name], [cam_raw], name="edgedx_cam_matmul"))
        new_nodes.append(helper.make_node("Transpose", [cam_raw], [CAM_NAME], perm=[0, 3, 1, 2], name="edgedx_cam"))
    g.node.extend(new_nodes)
    g.output.append(helper.make_tensor_value_info(FEATURES_NAME, onnx.TensorProto.FLOAT, ["N", c]))
    g.output.append(helper.make_tensor_value_info(CAM_NAME, onnx.TensorProto.FLOAT, ["N", k, "h", "w"]))
    why = _check(model, example, logits_name)
    if why is not None:
        model.CopyFrom(backup)
    return why


def example_batch(batch: np.ndarray) -> np.ndarray:
    """At least two different samples to check the outputs on: the batch and its mirror image."""
    return np.concatenate([batch, np.flip(batch, axis=-2)]).astype(np.float32)


def explain_file(path: Any, example: np.ndarray) -> str | None:
    """:func:`add_trust_outputs` on the ONNX file at ``path`` (rewritten only when they were added)."""
    import onnx

    model = onnx.load(str(path))
    why = add_trust_outputs(model, example)
    if why is None:
        onnx.save_model(model, str(path), save_as_external_data=False)
    return why


def _linear(node: Any, producer: dict[str, Any], init: dict[str, Any]) -> tuple[str, np.ndarray, str] | str:
    """(pooled input name, weight (K, C) with any scale folded in, logits name) of the last linear layer, or why not."""
    from onnx import helper, numpy_helper

    if node is None:
        return "the output is not computed by a node"
    logits = node.output[0]
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.input[1] not in init or attrs.get("transA", 0):
            return "the last Gemm's weights are not a constant"
        w = numpy_helper.to_array(init[node.input[1]]).astype(np.float64)
        w = (w if attrs.get("transB", 0) else w.T) * float(attrs.get("alpha", 1.0))
        return node.input[0], w, logits
    if node.op_type == "Add":
        mm = next((m for m in (_skip(producer.get(i), producer) for i in node.input) if m is not None and m.op_type == "MatMul"), None)
        if mm is None or not any(i in init for i in node.input):
            return "the output is an Add that is not a linear layer's bias"
        node = mm
    if node.op_type == "MatMul":
        if node.input[1] not in init:
            return "the last MatMul's weights are not a constant"
        w = numpy_helper.to_array(init[node.input[1]]).astype(np.float64)
        return (node.input[0], w.T, logits) if w.ndim == 2 else "the last MatMul's weights are not a matrix"
    return f"the output comes from {node.op_type}, not one linear layer"


def _skip(node: Any, producer: dict[str, Any]) -> Any:
    """The first node at or before ``node`` that is not an Identity or Cast."""
    steps = 0
    while node is not None and node.op_type in _SAME_VALUES and steps < 4:
        node, steps = producer.get(node.input[0]), steps + 1
    return node


def _pooling(pool: Any, init: dict[str, Any]) -> tuple[str, str] | str:
    """(feature map name, its layout) of the global average pooling before the linear layer, or why not."""
    from onnx import helper, numpy_helper

    if pool is None:
        return "the linear layer does not read a pooled feature map"
    if pool.op_type == "GlobalAveragePool":
        return pool.input[0], "NCHW"
    if pool.op_type == "ReduceMean":
        attrs = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
        axes = attrs.get("axes")
        if axes is None and len(pool.input) > 1 and pool.input[1] in init:  # opset 18: axes as an input
            axes = numpy_helper.to_array(init[pool.input[1]]).tolist()
        axes = sorted(int(a) % 4 for a in axes or [])
        if axes == [2, 3]:
            return pool.input[0], "NCHW"
        if axes == [1, 2]:
            return pool.input[0], "NHWC"
    return f"the linear layer reads {pool.op_type}, not global average pooling"


def _check(model: Any, example: np.ndarray, logits_name: str) -> str | None:
    """None when ``cam`` reproduces the logits on ``example`` (its spatial mean differs from them
    by the same bias for every sample), else why not. Runs one sample at a time (static batches)."""
    import onnx
    import onnxruntime as ort

    from export.quiet import quiet

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    if logits_name not in {o.name for o in probe.graph.output}:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(logits_name, onnx.TensorProto.FLOAT, None))
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    try:
        with quiet():
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            names = [o.name for o in sess.get_outputs()]
            for x in np.asarray(example, np.float32):
                outs = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x[None]})))
                rows.append((outs[logits_name], outs[FEATURES_NAME], outs[CAM_NAME]))
    except Exception as exc:  # ORT's own errors: the added nodes do not fit the graph
        return f"the added outputs do not run ({type(exc).__name__})"
    logits, feats, cam = (np.concatenate(parts) for parts in zip(*rows))
    if cam.ndim != 4 or feats.ndim != 2 or logits.shape != cam.shape[:2]:
        return f"the added outputs have shapes {feats.shape} and {cam.shape} for logits {logits.shape}"
    bias = logits.astype(np.float64) - cam.mean((2, 3))
    if len(bias) < 2 or np.ptp(bias, axis=0).max() > 1e-3 * max(1.0, float(np.abs(logits).max())):
        return "the class-activation map does not reproduce the logits (the layer before pooling is not the map the pooling reads)"
    return None
