"""FP32 ONNX -> INT8 (static, Q/DQ) for the CPU or TensorRT, and FP16 for TensorRT.

    quantize("model_fp32.onnx", "model_int8.onnx", calib_files, target="cpu", method="percentile")
    to_fp16("model_fp32.onnx", "model_fp16.onnx")

Calibration images go through edgedx's own decoding and :func:`edgedx.preprocess.apply_batch`
with the model's manifest spec, exactly as at run time.

Targets:
    cpu       QUInt8 activations, QInt8 per-channel weights (U8S8): ONNX Runtime's fast x86/ARM
              integer kernels.
    tensorrt  QInt8 activations and per-channel weights, both symmetric (zero points 0), biases
              left float: the INT8 Q/DQ form TensorRT's ONNX parser accepts (it dequantizes only
              8-bit tensors, so ONNX Runtime's int32 bias DequantizeLinear nodes are refused).

Both targets keep the layer that reads the image in float by default (``float_input_layer``).

Calibration ranges are cached next to the output (``<input stem>.calib-<key>.json``), keyed by the
model's sha256, the method and the calibration images' contents, so requantizing with other
exclusions or the other target skips the data pass (ONNX Runtime's ``calibration_cache_path``).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgedx import decode, preprocess
from edgedx.errors import InputError, ModelError, UsageError
from edgedx.evaluate import Gate, GateFailed
from export.contract import require_manifest
from export.options import Method, Target
from export.to_onnx import Tolerance, compare, load_images, require, save_with_manifest

from export.quiet import quiet

log = logging.getLogger("edgedx")


@dataclass(frozen=True)
class QuantizeOptions:
    """Args:
    target: cpu (U8S8) or tensorrt (symmetric S8S8).
    method: how activation ranges are calibrated.
    num_images: calibration images to use (evenly spread over the given files).
    exclude: node names or op types to keep in float.
    percentile: the percentile method's cut-off.
    cache: reuse (and write) the calibration-range cache.
    cache_dir: where the cache lives (default: next to the output).
    batch_size: images per calibration inference.
    float_input_layer: keep the layer that reads the image (every node fed by the graph input) in
        float. ONNX Runtime's fused U8S8 int8 kernels saturate on x86 CPUs without VNNI (AVX2
        only): the bundled chest X-ray CNN's quantized first convolution then scores up to 0.93
        off FP32 (29 of 150 decisions flipped), although the same Q/DQ model is within 0.03 of
        FP32 without those kernels (optimization level BASIC). Kept float, 0 of 299 flip.
    reduce_range: CPU target: 7-bit weights. ONNX Runtime's U8S8 integer kernels on x86 CPUs
        without VNNI (AVX2, plain AVX-512) multiply with int16 saturation, which full-range int8
        weights overflow: a model quantized without it can lose most of its accuracy there
        (observed: the old bundled model's validation specificity 0.99 -> 0.58 on an AVX2 EPYC)
        while a VNNI machine shows nothing wrong. On by default, so a CPU INT8 model holds up on
        any x86 CPU. Not applied for TensorRT, whose int8 kernels accumulate in int32.
    """

    target: Target = Target.CPU
    method: Method = Method.PERCENTILE
    num_images: int = 200
    exclude: tuple[str, ...] = ()
    percentile: float = 99.999
    cache: bool = True
    cache_dir: Path | None = None
    batch_size: int = 8
    float_input_layer: bool = True
    reduce_range: bool = True


def calibration_reader_class():
    """:class:`ImageCalibrationReader`, defined on first use (it subclasses an onnxruntime class)."""
    global _Reader
    if _Reader is None:
        from onnxruntime.quantization import CalibrationDataReader

        class ImageCalibrationReader(CalibrationDataReader):
            """Batches of preprocessed calibration images; counts what it decodes.

            Supports ``len`` and ``set_range`` (in batches) so ONNX Runtime can calibrate in chunks
            and never hold every image's activations at once.
            """

            def __init__(self, files: Sequence[Path], spec: preprocess.PreprocessSpec, input_name: str, batch_size: int = 8) -> None:
                self.files, self.spec, self.input_name, self.batch_size = list(files), spec, input_name, batch_size
                self.n_batches = -(-len(self.files) // batch_size)
                self.images_read = 0
                self.skipped: list[str] = []
                self.set_range(0, self.n_batches)

            def __len__(self) -> int:
                return self.n_batches

            def set_range(self, start_index: int, end_index: int) -> None:
                self._next, self._end = start_index, min(end_index, self.n_batches)

            def get_next(self) -> dict[str, np.ndarray] | None:
                while self._next < self._end:
                    chunk = self.files[self._next * self.batch_size : (self._next + 1) * self.batch_size]
                    self._next += 1
                    images = []
                    for f in chunk:
                        try:
                            images.append(decode.decode_file(f)[0].image)
                        except InputError as exc:
                            self.skipped.append(f"{f}: {exc}")
                    self.images_read += len(images)
                    if images:
                        return {self.input_name: preprocess.apply_batch(images, self.spec)}
                return None

        _Reader = ImageCalibrationReader
    return _Reader


_Reader = None


def select_images(files: Sequence[Path], n: int) -> list[Path]:
    """``n`` files evenly spread over ``files`` sorted (so every class folder keeps its share)."""
    files = sorted(Path(f) for f in files)
    if n <= 0:
        raise UsageError(f"--num-images must be >= 1, got {n}")
    if n >= len(files):
        return files
    return [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]


def calibration_key(model_sha256: str, method: Method, percentile: float, files: Sequence[Path]) -> str:
    """Hash of what calibration ranges depend on: the model, the method and the images' bytes."""
    h = hashlib.sha256(f"{model_sha256}|{method.value}|{percentile if method is Method.PERCENTILE else ''}".encode())
    for f in files:
        h.update(hashlib.sha256(Path(f).read_bytes()).digest())
    return h.hexdigest()


def quantize(
    onnx_in: str | Path,
    onnx_out: str | Path,
    calib_files: Sequence[Path],
    options: QuantizeOptions = QuantizeOptions(),
    *,
    eval_data: str | Path | None = None,
    split: str | None = None,
    gate: Gate = Gate(),
) -> dict[str, Any]:
    """Static INT8 quantization of an edgedx FP32 ONNX model, calibrated on real images.

    Args:
        calib_files: calibration image/DICOM files; ``options.num_images`` of them are used.
        eval_data: labelled data (folder or .npz); when given, the output must pass ``gate``
            against the input on it.

    Returns:
        A summary: output, calibration (cache hit or miss, images read), excluded nodes, and the
        gate report when ``eval_data`` was given.

    Raises:
        ModelError: the input carries no edgedx manifest.
        UsageError: no calibration images, or ``exclude`` names nothing in the model.
        GateFailed: the INT8 model fell past ``gate``; it is kept as ``<output>.gate-failed.onnx``.
    """
    onnx = require("onnx")
    q = require("onnxruntime.quantization", "pip install onnxruntime")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgedx.api import file_sha256

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    manifest = require_manifest(onnx_in)
    if manifest.precision != "fp32":
        raise UsageError(f"{onnx_in.name} is {manifest.precision}; quantize the FP32 export")
    files = select_images(calib_files, options.num_images)
    if not files:
        raise UsageError("no calibration images: give a folder or files of real scans")
    sha = file_sha256(onnx_in)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgedx-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        with quiet():
            quant_pre_process(str(onnx_in), str(prepared))
        model = onnx.load(str(prepared))
        if _name_nodes(model):  # --exclude and the float input layer name nodes
            onnx.save(model, str(prepared))
        excluded = _resolve_exclude(model, options.exclude)
        if options.float_input_layer:
            excluded += [n for n in input_layer(model) if n not in excluded]
        reader = calibration_reader_class()(files, manifest.preprocess, model.graph.input[0].name, options.batch_size)
        cache_path = None
        kwargs: dict[str, Any] = {}
        if options.cache:
            if "calibration_cache_path" in inspect.signature(q.quantize_static).parameters:
                key = calibration_key(sha, options.method, options.percentile, files)
                cache_path = (options.cache_dir or onnx_out.parent) / f"{onnx_in.stem}.calib-{key[:16]}.json"
                kwargs["calibration_cache_path"] = str(cache_path)
            else:
                log.warning("this onnxruntime has no calibration cache (quantize_static(calibration_cache_path=...)); calibrating on every run")
        hit = cache_path is not None and cache_path.is_file()
        raw_out = Path(tmp) / "quantized.onnx"
        with quiet(), _calibration_errors(reader):  # the calibrators print progress (shown with -v)
            q.quantize_static(
                str(prepared),
                str(raw_out),
                None if hit else reader,
                quant_format=q.QuantFormat.QDQ,
                per_channel=True,
                reduce_range=options.reduce_range and options.target is Target.CPU,
                activation_type=q.QuantType.QUInt8 if options.target is Target.CPU else q.QuantType.QInt8,
                weight_type=q.QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=_METHODS[options.method](q.CalibrationMethod),
                extra_options=_extra_options(options),
                **kwargs,
            )
        if reader.skipped:
            log.warning("calibration skipped %d unreadable files (first: %s)", len(reader.skipped), reader.skipped[0])
        calibration = {"method": options.method.value, "images": len(files), "images_read": reader.images_read,
                       "cache": None if cache_path is None else ("hit" if hit else "written"),
                       "cache_path": None if cache_path is None else str(cache_path)}
        provenance = {**dict(manifest.provenance), "quantization": {
            "method": options.method.value, "images": len(files), "target": options.target.value,
            "activations": "uint8" if options.target is Target.CPU else "int8 symmetric",
            "weights": "int8 symmetric per-channel" + (", 7-bit (reduce_range)" if options.reduce_range and options.target is Target.CPU else ""),
            "excluded": excluded, "source_sha256": sha,
            **({"percentile": options.percentile} if options.method is Method.PERCENTILE else {}),
            "onnxruntime": _ort_version(), "date": time.strftime("%Y-%m-%d"),
        }}
        quantized = onnx.load(str(raw_out))
        save_with_manifest(quantized, onnx_out, manifest.with_changes(precision="int8", provenance=provenance))
    summary: dict[str, Any] = {"output": str(onnx_out), "sha256": file_sha256(onnx_out), "bytes": onnx_out.stat().st_size,
                               "source": str(onnx_in), "target": options.target.value, "excluded": excluded,
                               "calibration": calibration, "seconds": round(time.perf_counter() - started, 2)}
    if eval_data is not None:
        summary["verify"] = check_gate(onnx_in, onnx_out, eval_data, split, gate)
    return summary


def check_gate(reference: Path, candidate: Path, data: str | Path, split: str | None, gate: Gate) -> dict[str, Any]:
    """Run :func:`edgedx.evaluate.verify` on ONNX Runtime; on failure move the candidate aside and raise."""
    from edgedx import evaluate
    from edgedx.api import Classifier

    with Classifier(reference, "onnxruntime") as ref, Classifier(candidate, "onnxruntime") as cand:
        dataset = evaluate.load_dataset(data, ref.manifest.labels, split)
        report = evaluate.verify(ref, cand, dataset, gate)
    if not report["gate"]["passed"]:
        rejected = candidate.with_name(candidate.stem + ".gate-failed.onnx")
        shutil.move(str(candidate), str(rejected))
        report["rejected_output"] = str(rejected)
        raise GateFailed(report)
    return report


def to_fp16(onnx_in: str | Path, onnx_out: str | Path, *, images: Sequence[Path | np.ndarray] | None = None,
            atol: float = 1e-2, min_agreement: float = 1.0, keep_io_types: bool = True) -> dict[str, Any]:
    """An FP16 copy for TensorRT's strongly typed networks; inputs and outputs stay float32.

    Uses ONNX Runtime's own float16 converter (``onnxruntime.transformers.float16``, the one
    onnxconverter-common ships), then sorts the nodes it appends for the boundary casts.

    Args:
        images: when given, the FP16 model runs on ONNX Runtime and must match the FP32 model's
            probabilities within ``atol`` (and top-1 agreement ``min_agreement``).

    Raises:
        ExportMismatch: past that tolerance.
    """
    onnx = require("onnx")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from edgedx.api import file_sha256

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    manifest = require_manifest(onnx_in)
    if manifest.precision != "fp32":
        raise UsageError(f"{onnx_in.name} is {manifest.precision}; convert the FP32 export")
    model = onnx.load(str(onnx_in))
    try:
        half = convert_float_to_float16(model, keep_io_types=keep_io_types)
    except Exception as exc:
        raise ModelError(f"FP16 conversion failed: {exc}") from exc
    _toposort(half.graph)
    provenance = {**dict(manifest.provenance), "fp16": {"source_sha256": file_sha256(onnx_in), "io": "float32" if keep_io_types else "float16",
                                                        "date": time.strftime("%Y-%m-%d")}}
    save_with_manifest(half, onnx_out, manifest.with_changes(precision="fp16", provenance=provenance))
    result: dict[str, Any] = {"output": str(onnx_out), "sha256": file_sha256(onnx_out), "bytes": onnx_out.stat().st_size, "source": str(onnx_in)}
    if images:
        from edgedx.api import Classifier

        decoded = load_images(images, manifest.preprocess)
        with Classifier(onnx_in, "onnxruntime", batch_size=8) as ref:
            reference = ref.predict_proba(decoded)
        result["comparison"] = compare(onnx_out, decoded, reference, Tolerance(atol, min_agreement))
    return result


# -- helpers --------------------------------------------------------------------------------------

_METHODS = {
    Method.MINMAX: lambda c: c.MinMax,
    Method.ENTROPY: lambda c: c.Entropy,
    Method.PERCENTILE: lambda c: c.Percentile,
}


def _extra_options(options: QuantizeOptions) -> dict[str, Any]:
    extra: dict[str, Any] = {
        # One collect pass per batch: histogram methods otherwise keep every image's activations in
        # memory until the end, and stack batches of different sizes (the last one) into one array.
        "CalibStridedMinMax": 1,
    }
    if options.method is Method.PERCENTILE:
        extra["CalibPercentile"] = options.percentile
    if options.target is Target.TENSORRT:
        # TensorRT's ONNX parser dequantizes int8/uint8/fp8/int4 only: ONNX Runtime's default int32
        # bias DequantizeLinear nodes are rejected ("input has type Int32"), so biases stay float
        # and TensorRT fuses them into the int8 convolution/GEMM itself.
        extra.update(ActivationSymmetric=True, WeightSymmetric=True, QuantizeBias=False)
    return extra


def _name_nodes(model: Any) -> bool:
    """Give every unnamed node a unique name (``Conv_0``...); True when any was renamed."""
    taken = {n.name for n in model.graph.node if n.name}
    renamed = False
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            renamed = True
    return renamed


def input_layer(model: Any) -> list[str]:
    """Names of the nodes that read the graph's (first) input: the layer that sees the image."""
    name = model.graph.input[0].name
    return [n.name for n in model.graph.node if name in n.input and n.name]


def _resolve_exclude(model: Any, names: Sequence[str]) -> list[str]:
    """Node names for ``names`` (node names or op types) in the prepared model."""
    if not names:
        return []
    nodes = list(model.graph.node)
    out: list[str] = []
    unknown = []
    for name in names:
        matched = [n.name for n in nodes if n.name == name or n.op_type == name]
        if not matched:
            unknown.append(name)
        out.extend(m for m in matched if m not in out)
    if unknown:
        sample = ", ".join(n.name for n in nodes[:12])
        raise UsageError(f"--exclude {unknown}: no such node name or op type in the model (nodes: {sample}, ...)")
    return out


def _toposort(graph: Any) -> None:
    """Reorder ``graph.node`` so every node follows its inputs' producers."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ModelError(f"FP16 graph has a cycle or a dangling input at node {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


@contextlib.contextmanager
def _calibration_errors(reader: Any):
    """ONNX Runtime's "No data is collected" -> a usage error naming the unreadable files."""
    try:
        yield
    except ValueError:
        if reader.images_read == 0 and reader.skipped:
            raise UsageError(f"none of the {len(reader.skipped)} calibration files could be decoded (first: {reader.skipped[0]})") from None
        raise


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
