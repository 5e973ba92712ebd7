"""``edgedx export triton --check``: does a repository on disk still hold what edgedx wrote?

Reads every config of one ensemble as Triton's ModelConfig protobuf and checks, reporting every
problem at once: the steps exist and carry the same manifest; the model file's tensors (names,
data types, dims) match its config and the manifest; each step's outputs feed the next step's
inputs with the same type and dims; the Python steps' ``model.py`` load the right edgedx class;
the labels file holds one label per output index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgedx.errors import EdgedxError, ModelError, UsageError
from edgedx.serving.triton_models import IMAGE, INPUT, LOGITS, MANIFEST_PARAMETER, MODEL_FILE_PARAMETER, RECORD, STATUS
from export import triton_config as tr
from export.triton_io import ModelIO, inspect_model


def find_ensembles(repository: Path) -> list[str]:
    """Names of the edgedx ensembles in ``repository`` (configs with platform ensemble and a manifest)."""
    out = []
    for cfg_path in sorted(repository.glob("*/config.pbtxt")):
        if cfg_path.parent.name.startswith("."):
            continue
        try:
            cfg = tr.read_config(cfg_path.parent)
        except ModelError:
            continue
        if cfg.platform == "ensemble" and MANIFEST_PARAMETER in cfg.parameters:
            out.append(cfg_path.parent.name)
    return out


def check_ensemble(repository: Path, name: str) -> tr.RepositoryReport:
    """Check ensemble ``name`` and its three steps.

    Raises:
        ModelError: naming every problem.
    """
    pb = tr.model_config_pb2()
    problems: list[str] = []
    ens = tr.read_config(repository / name)
    if ens.platform != "ensemble":
        raise ModelError(f"{name}: platform is {ens.platform!r}, not an ensemble")
    manifest = tr.manifest_of(ens)
    steps = list(ens.ensemble_scheduling.step)
    if len(steps) != 3:
        raise ModelError(f"{name}: an edgedx ensemble has 3 steps (preprocess, model, postprocess), this one has {len(steps)}")
    cfgs = [tr.read_config(repository / s.model_name) for s in steps]
    pre, mid, post = cfgs
    batch = ens.max_batch_size
    if batch < 1:
        problems.append(f"{name}: max_batch_size must be >= 1, got {batch}")
    for cfg in cfgs:
        if cfg.max_batch_size != batch:
            problems.append(f"{cfg.name}: max_batch_size {cfg.max_batch_size} differs from the ensemble's {batch}")
        try:
            if tr.manifest_of(cfg).to_dict() != manifest.to_dict():
                problems.append(f"{cfg.name}: its manifest differs from the ensemble's")
        except EdgedxError as exc:
            problems.append(str(exc))
        for size in cfg.dynamic_batching.preferred_batch_size:
            if size > batch:
                problems.append(f"{cfg.name}: preferred batch size {size} exceeds max_batch_size {batch}")

    _expect_tensors(problems, ens, "input", [(IMAGE, "TYPE_STRING", [1])])
    _expect_tensors(problems, ens, "output", [(RECORD, "TYPE_STRING", [1])])
    for cfg, cls in ((pre, "PreprocessModel"), (post, "PostprocessModel")):
        if cfg.backend != "python":
            problems.append(f"{cfg.name}: backend is {cfg.backend!r}, expected python")
        _expect_model_py(problems, repository / cfg.name, cls)

    io, variant = _model_io(problems, repository, mid, pb)
    if io is not None:
        _expect_tensors(problems, mid, "input", [(io.input_name, io.input_dtype, list(io.input_dims))])
        _expect_tensors(problems, mid, "output", [(io.output_name, io.output_dtype, list(io.output_dims))])
        layout = {"NCHW": pb.ModelInput.FORMAT_NCHW, "NHWC": pb.ModelInput.FORMAT_NHWC}[manifest.preprocess.layout.value]
        if mid.input and mid.input[0].format != layout:
            problems.append(f"{mid.name}: input format {pb.ModelInput.Format.Name(mid.input[0].format)} but the manifest's layout is {manifest.preprocess.layout.value}")
        _expect_tensors(problems, pre, "input", [(IMAGE, "TYPE_STRING", [1])])
        _expect_tensors(problems, pre, "output", [(INPUT, io.input_dtype, list(io.input_dims)), (STATUS, "TYPE_STRING", [1])])
        _expect_tensors(problems, post, "input", [(LOGITS, io.output_dtype, list(io.output_dims)), (STATUS, "TYPE_STRING", [1])])
        _expect_tensors(problems, post, "output", [(RECORD, "TYPE_STRING", [1])])
        _expect_labels(problems, repository / mid.name, mid, tr.output_labels(manifest, io.output_dims[-1]))
        _expect_wiring(problems, name, steps, io)
        if io.profile_max_batch is not None and batch > io.profile_max_batch:
            problems.append(f"{name}: max_batch_size {batch} exceeds the engine profile's max batch {io.profile_max_batch}")
    if problems:
        raise ModelError(f"Triton repository {repository}, ensemble {name}: " + "; ".join(problems))
    assert io is not None
    return tr.RepositoryReport(
        repository=repository, ensemble=name,
        steps={c.name: c.platform or c.backend for c in cfgs},
        model_file=ens.parameters["edgedx_source"].string_value if "edgedx_source" in ens.parameters else io.source_name,
        max_batch_size=batch,
        input={"name": io.input_name, "data_type": io.input_dtype, "dims": list(io.input_dims)},
        output={"name": io.output_name, "data_type": io.output_dtype, "dims": list(io.output_dims)},
        labels=list(manifest.labels),
        notes=[f"model step: {variant}"],
    )


def _model_io(problems: list[str], repository: Path, mid: Any, pb: Any) -> tuple[ModelIO | None, str]:
    """Inspect the model file the middle step serves."""
    version = repository / mid.name / "1"
    if mid.backend == "python":
        variant = "python (edgedx session)"
        filename = mid.parameters[MODEL_FILE_PARAMETER].string_value if MODEL_FILE_PARAMETER in mid.parameters else ""
        _expect_model_py(problems, repository / mid.name, "SessionModel")
    elif mid.platform in ("onnxruntime_onnx", "tensorrt_plan"):
        variant = mid.platform
        filename = mid.default_model_filename or ("model.onnx" if mid.platform == "onnxruntime_onnx" else "model.plan")
    else:
        problems.append(f"{mid.name}: platform {mid.platform!r} / backend {mid.backend!r} is not one edgedx writes")
        return None, ""
    if not filename or not (version / filename).is_file():
        problems.append(f"{mid.name}: model file {version / (filename or '?')} is missing")
        return None, variant
    try:
        return inspect_model(version / filename)[1], variant
    except EdgedxError as exc:
        problems.append(f"{mid.name}: {exc}")
        return None, variant


def _expect_tensors(problems: list[str], cfg: Any, kind: str, expected: list[tuple[str, str, list[int]]]) -> None:
    pb = tr.model_config_pb2()
    got = [(t.name, pb.DataType.Name(t.data_type), [int(d) for d in t.dims]) for t in getattr(cfg, kind)]
    if got != expected:
        problems.append(f"{cfg.name}: {kind}s are {_fmt(got)}, expected {_fmt(expected)}")


def _fmt(tensors: list[tuple[str, str, list[int]]]) -> str:
    return ", ".join(f"{n} {t} {d}" for n, t, d in tensors) or "none"


def _expect_model_py(problems: list[str], folder: Path, cls: str) -> None:
    path = folder / "1" / "model.py"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        problems.append(f"{folder.name}: {path} is missing")
        return
    if f"import {cls} as TritonPythonModel" not in text:
        problems.append(f"{folder.name}: {path} does not load edgedx.serving.triton_models.{cls}")


def _expect_labels(problems: list[str], folder: Path, mid: Any, labels: list[str]) -> None:
    name = mid.output[0].label_filename if mid.output else ""
    if not name:
        problems.append(f"{mid.name}: its output has no label_filename (Triton's classification extension)")
        return
    try:
        found = (folder / name).read_text(encoding="utf-8").splitlines()
    except OSError:
        problems.append(f"{mid.name}: labels file {name} is missing")
        return
    if found != labels:
        problems.append(f"{mid.name}: {name} holds {found}, the manifest gives {labels}")


def _expect_wiring(problems: list[str], name: str, steps: list[Any], io: ModelIO) -> None:
    """Each step's outputs feed the next step's inputs; IMAGE in, RECORD out."""
    ins = [dict(s.input_map) for s in steps]
    outs = [dict(s.output_map) for s in steps]
    expected_ins = [{IMAGE: IMAGE}, {io.input_name: outs[0].get(INPUT)}, {LOGITS: outs[1].get(io.output_name), STATUS: outs[0].get(STATUS)}]
    if set(outs[0]) != {INPUT, STATUS} or set(outs[1]) != {io.output_name} or outs[2] != {RECORD: RECORD}:
        problems.append(f"{name}: step outputs {outs} do not match the edgedx wiring")
    if ins != expected_ins or None in expected_ins[1].values():
        problems.append(f"{name}: step inputs {ins}, expected {expected_ins}")


def check(repository: Path, ensemble: str | None = None) -> tr.RepositoryReport:
    """Re-validate an edgedx ensemble in ``repository`` (the only one there when ``ensemble`` is None).

    Raises:
        ModelError: every problem found, in one message.
    """
    if not repository.is_dir():
        raise UsageError(f"{repository} is not a folder")
    names = [ensemble] if ensemble else find_ensembles(repository)
    if not names:
        raise ModelError(f"{repository} holds no edgedx ensemble (a config.pbtxt with platform 'ensemble' and an {MANIFEST_PARAMETER} parameter)")
    if len(names) > 1:
        raise UsageError(f"{repository} holds several edgedx ensembles ({', '.join(names)}): choose one with --name")
    return check_ensemble(repository, names[0])
