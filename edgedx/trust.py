"""What the classifier does with a model's extra outputs: the out-of-distribution gate and heatmaps.

:class:`Plan` decides once per classifier which extra graph outputs to fetch (the manifest's
``output.features`` when it carries an ``ood`` section and the gate is on; ``output.cam`` when
heatmaps are asked for) and whether the backend can return them. Per resized input,
:func:`check_layout` applies the image-layout part of the OOD score (no graph output needed, so
on every backend, before inference). Per answered input, :func:`judge` turns the features into a
rejection (reason ``out_of_distribution``) and writes the heatmap PNG.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgedx import heatmap as heatmap_mod
from edgedx.errors import UsageError
from edgedx.gate import Rejection
from edgedx.manifest import Manifest
from edgedx.ood import Scorer, layout, layout_scorer

log = logging.getLogger("edgedx")


@dataclass
class Plan:
    names: tuple[str, ...] = ()
    scorer: Scorer | None = None
    layout: Scorer | None = None
    heatmap_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    rejected: Rejection | None = None
    ood_score: float | None = None
    heatmap: str | None = None


def plan(manifest: Manifest, session: Any, use_gate: bool, heatmap_dir: str | Path | None) -> Plan:
    """The extra outputs to fetch for this model, backend and options.

    Raises:
        UsageError: heatmaps were asked for but the model has no CAM output.
    """
    out = Plan()
    outputs = {t.name for t in session.outputs}
    can = bool(getattr(session, "supports_extra_outputs", False))
    if heatmap_dir is not None:
        if not manifest.cam_output or manifest.cam_output not in outputs:
            raise UsageError("--heatmap needs a model with a class-activation-map output (output.cam in its manifest); "
                             "models with global average pooling and one linear layer get one at export (edgedx export onnx --explain)")
        if not can:
            raise UsageError(f"the {session.name} backend cannot return the model's CAM output yet; use --backend onnxruntime")
        out.heatmap_dir = Path(heatmap_dir)
        out.names += (manifest.cam_output,)
    if use_gate and manifest.ood:
        out.layout = layout_scorer(manifest.ood)
    if use_gate and manifest.ood and manifest.features_output in outputs:
        if can:
            out.scorer = Scorer(manifest.ood)
            out.names += (manifest.features_output,)
        else:
            still = "; its image-layout part still runs" if out.layout is not None else ""
            out.notes.append(f"the {session.name} backend returns no feature output: the out-of-distribution check "
                             f"by the model's features is off{still}")
            log.warning("%s", out.notes[-1])
    return out


def check_layout(p: Plan, sample: np.ndarray) -> Rejection | None:
    """The image-layout verdict for one input resized as the model takes it (None: it passes or no check)."""
    if p.layout is None:
        return None
    detail = p.layout.reason(float(p.layout.score(layout(sample, p.layout.size))))
    return Rejection("out_of_distribution", detail) if detail is not None else None


def attach(items: list[Any], extras: dict[str, np.ndarray]) -> None:
    """Give each run item its rows of the extra outputs (``item.extras``)."""
    for row, item in enumerate(items):
        item.extras = {name: value[row] for name, value in extras.items()}


def judge(p: Plan, manifest: Manifest, item: Any, label_index: int) -> Verdict:
    """The OOD verdict and heatmap for one answered item (``item.extras``, ``item.seen``, ``item.path``)."""
    v = Verdict()
    extras = getattr(item, "extras", None) or {}
    if p.scorer is not None and manifest.features_output in extras:
        v.ood_score = float(p.scorer.score(extras[manifest.features_output]))
        detail = p.scorer.reason(v.ood_score)
        if detail is not None:
            v.rejected = Rejection("out_of_distribution", detail)
    if p.heatmap_dir is not None and manifest.cam_output in extras and getattr(item, "seen", None) is not None:
        m = heatmap_mod.decision_map(extras[manifest.cam_output], manifest.positive_index, label_index)
        name = heatmap_mod.file_name(item.path, item.frame, item.index)
        try:
            v.heatmap = heatmap_mod.write(p.heatmap_dir, name, heatmap_mod.overlay(item.seen, m))
        except OSError as exc:
            log.warning("cannot write heatmap %s: %s", name, exc.strerror or exc)
    return v
