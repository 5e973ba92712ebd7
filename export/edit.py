"""``edgedx export manifest``: change a model's manifest in a copy (labels, threshold, accepts, preprocessing).

The graph is not touched. The new manifest is validated like every manifest, and the copy is
opened with ONNX Runtime to check that the manifest still fits the graph before it is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from edgedx import manifest as manifest_mod
from edgedx.errors import ModelError, UsageError
from export.contract import manifest_of_model, staged
from export.to_onnx import require, save_with_manifest

#: The preprocess fields a copy may change (size and layout are the graph's).
PREPROCESS_FIELDS = ("scale", "mean", "std", "resize", "interpolation", "antialias", "pad_value")


def edit_manifest(model: str | Path, output: str | Path, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``output``: ``model`` with ``changes`` applied to its manifest.

    Args:
        changes: top-level fields (``labels``, ``positive_label``, ``threshold``, ``accepts``,
            ``activation``, ``calibration``) and preprocess fields (:data:`PREPROCESS_FIELDS`);
            ``None`` values are ignored, ``calibration={}`` removes a calibration.

    Returns:
        ``{"output", "sha256", "changed": [...], "manifest": {...}}``.

    Raises:
        UsageError: the changes make an invalid manifest, or one that does not fit the graph.
        ModelError: the model carries no manifest.
    """
    from edgedx.api import Classifier, file_sha256

    onnx = require("onnx")
    model, output = Path(model), Path(output)
    found = manifest_of_model(model, output)
    data = found.to_dict()
    changed = []
    for key, value in changes.items():
        if value is None:
            continue
        if key in PREPROCESS_FIELDS:
            data["preprocess"][key] = list(value) if isinstance(value, tuple) else value
        elif key == "activation":
            data["output"]["activation"] = value
        elif key in ("labels", "positive_label", "threshold", "accepts", "calibration"):
            data[key] = list(value) if isinstance(value, tuple) else value
        else:
            raise UsageError(f"the manifest field {key!r} cannot be changed here")
        changed.append(key)
    if not changed:
        raise UsageError("nothing to change: give --labels, --positive, --threshold, --accepts or a preprocessing option")
    if "labels" in changes and changes["labels"] is not None and len(changes["labels"]) != len(found.labels):
        raise UsageError(f"--labels gives {len(changes['labels'])} labels; the model has {len(found.labels)} {list(found.labels)}")
    if data.get("positive_label") is not None and data.get("threshold") is None:
        data["threshold"] = 0.5
    if data.get("positive_label") is not None and data["positive_label"] not in data["labels"] and found.positive_label is not None \
            and "labels" in changed and "positive_label" not in changed:
        data["positive_label"] = data["labels"][found.labels.index(found.positive_label)]  # renamed with its label
    try:
        new = manifest_mod.from_dict(data, "the edited manifest")
    except ModelError as exc:
        raise UsageError(str(exc)) from None
    graph = onnx.load(str(model))
    with staged(output) as tmp:
        save_with_manifest(graph, tmp, new)
        try:
            Classifier(tmp, "onnxruntime").close()  # the manifest must still fit the graph
        except ModelError as exc:
            raise UsageError(f"the edited manifest does not fit the model: {exc}") from None
    return {"output": str(output), "sha256": file_sha256(output), "changed": changed, "manifest": new.to_dict()}
