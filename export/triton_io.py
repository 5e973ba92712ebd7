"""What a model file says about its tensors, in Triton's terms, checked against its edgedx manifest.

ONNX files are read with the ``onnx`` package (graph only, no weights); engines through their
sidecar (hash, profile) and, where it still exists, the ONNX they were built from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgedx import manifest as manifest_mod
from edgedx import postprocess
from edgedx.backends.base import ENGINE_SUFFIXES
from edgedx.errors import BackendUnavailable, ModelError
from edgedx.manifest import Manifest
from export.contract import require_manifest

#: ONNX TensorProto element type -> Triton data type.
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64",
                  9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}
#: Output types the postprocessing step reads.
FLOAT_TYPES = ("TYPE_FP32", "TYPE_FP16", "TYPE_FP64")


@dataclass(frozen=True)
class ModelIO:
    """The served model's first input and first output, without the batch axis.

    ``profile_max_batch`` is the engine profile's largest batch (None for ONNX).
    """

    kind: str  # "onnx" or "engine"
    source_name: str
    input_name: str
    input_dtype: str
    input_dims: tuple[int, ...]
    output_name: str
    output_dtype: str
    output_dims: tuple[int, ...]
    profile_max_batch: int | None = None


def inspect_model(path: Path) -> tuple[Manifest, ModelIO]:
    """The manifest and tensors of an ONNX file or engine, checked against each other.

    Raises:
        ModelError: no manifest, a static batch axis, or names, dims or types that disagree.
    """
    if path.suffix.lower() in ENGINE_SUFFIXES:
        if not path.is_file():
            raise ModelError(f"model not found: {path}")
        return _engine(path)
    manifest = require_manifest(path)
    io = _onnx_io(path, "onnx", path.name)
    _check(manifest, io, path.name)
    return manifest, io


def _onnx_io(path: Path, kind: str, source_name: str, batch_from: Path | None = None) -> ModelIO:
    try:
        import onnx
    except ImportError:
        raise BackendUnavailable("reading ONNX graphs needs the onnx package: pip install 'edgedx[export]'") from None
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise ModelError(f"cannot read ONNX model {path}: {exc}") from None
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1 or not graph.output:
        raise ModelError(f"{path.name}: edgedx serves models with one image input, got {len(inputs)} inputs and {len(graph.output)} outputs")

    def describe(value: object, what: str) -> tuple[str, str, tuple[int, ...]]:
        t = value.type.tensor_type  # type: ignore[attr-defined]
        dtype = ONNX_TO_TRITON.get(t.elem_type)
        if dtype is None:
            raise ModelError(f"{path.name}: {what} {value.name} has ONNX element type {t.elem_type}, which Triton cannot carry")  # type: ignore[attr-defined]
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if not dims or dims[0] != -1:
            raise ModelError(
                f"{path.name}: {what} {value.name} has a static batch axis {dims[:1]}; Triton's batching needs a dynamic one "  # type: ignore[attr-defined]
                "(export without --static-batch)"
            )
        if any(d < 1 for d in dims[1:]):
            raise ModelError(f"{path.name}: {what} {value.name} has dynamic dims {dims}; edgedx serves fixed-size inputs and outputs")  # type: ignore[attr-defined]
        return value.name, dtype, tuple(dims[1:])  # type: ignore[attr-defined]

    in_name, in_type, in_dims = describe(inputs[0], "input")
    out_name, out_type, out_dims = describe(graph.output[0], "output")
    return ModelIO(kind, source_name, in_name, in_type, in_dims, out_name, out_type, out_dims)


def _engine(path: Path) -> tuple[Manifest, ModelIO]:
    from edgedx.backends.trt_guard import fallback_onnx, file_problems, read_sidecar, sha256_file

    sidecar_path = manifest_mod.sidecar_path(path)
    sidecar = read_sidecar(sidecar_path)
    problems = file_problems(sidecar, sha256_file(path), sidecar_path.name)
    if problems:
        raise ModelError("; ".join(problems))
    manifest = manifest_mod.from_dict(sidecar, str(sidecar_path))
    profile = manifest.engine.get("profile")
    source = fallback_onnx(path, sidecar)
    if source is not None:
        io = _onnx_io(source, "engine", path.name)
    else:  # the source ONNX is gone: the manifest and the profile are all there is
        spec = manifest.preprocess
        width = 1 if len(manifest.labels) == 2 and manifest.activation.value == "sigmoid" else len(manifest.labels)
        io = ModelIO("engine", path.name, manifest.input_name or "input", "TYPE_FP32", spec.sample_shape(),
                     manifest.output_name or "output", "TYPE_FP32", (width,))
    if not isinstance(profile, dict):
        raise ModelError(f"{path.name} was built for a fixed batch (no optimization profile); Triton's batching needs a batch range: "
                         "rebuild with `edgedx export engine --batch MIN,OPT,MAX`")
    if profile.get("input") not in (None, io.input_name):
        raise ModelError(f"{path.name}: the profile is for input {profile.get('input')!r}, the model's input is {io.input_name!r}")
    max_shape = profile.get("max")
    if not (isinstance(max_shape, list) and len(max_shape) == len(io.input_dims) + 1 and all(isinstance(d, int) for d in max_shape)):
        raise ModelError(f"{path.name}: the profile's max shape {max_shape!r} does not fit input dims {list(io.input_dims)}")
    if tuple(max_shape[1:]) != io.input_dims:
        raise ModelError(f"{path.name}: the profile's max shape {max_shape} does not match input dims {list(io.input_dims)}")
    io = ModelIO(**{**io.__dict__, "profile_max_batch": int(max_shape[0])})
    _check(manifest, io, path.name)
    return manifest, io


def _check(m: Manifest, io: ModelIO, name: str) -> None:
    """The manifest must describe the tensors: names, input dims, one score per label, float types."""
    problems = []
    if m.input_name and m.input_name != io.input_name:
        problems.append(f"the manifest's input is {m.input_name!r}, the model's is {io.input_name!r}")
    if m.output_name and m.output_name != io.output_name:
        problems.append(f"the manifest's output is {m.output_name!r}, the model's first output is {io.output_name!r}")
    if tuple(io.input_dims) != m.preprocess.sample_shape():
        problems.append(f"the manifest's input {m.preprocess.layout.value} {list(m.preprocess.sample_shape())} "
                        f"does not match the model's input dims {list(io.input_dims)}")
    if io.input_dtype != "TYPE_FP32":
        problems.append(f"the model's input is {io.input_dtype}; edgedx preprocessing produces TYPE_FP32")
    if io.output_dtype not in FLOAT_TYPES:
        problems.append(f"the model's output is {io.output_dtype}; edgedx postprocessing reads floating-point scores")
    if len(io.output_dims) != 1:
        problems.append(f"the model's output dims {list(io.output_dims)}: edgedx expects one row of scores per image")
    else:
        try:
            postprocess.check_output(m, io.output_dims[0])
        except ModelError as exc:
            problems.append(str(exc))
    if problems:
        raise ModelError(f"{name}: " + "; ".join(problems))
