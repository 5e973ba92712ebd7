"""Two or three examples per command, shown at the end of ``--help`` (kept here, one place for all).

:func:`add_examples` attaches them to a Typer app's registered commands as their epilog, so the
command modules (edgedx/cli.py, export/cli.py, ...) stay free of help prose.
"""

from __future__ import annotations

from typing import Any

EXAMPLES: dict[str, tuple[str, ...]] = {
    "classify": (
        "edgedx classify scans/ --json > results.ndjson      # progress and summary stay on stderr",
        "edgedx classify scan.dcm --model chest_xray_cnn_fp32 --threshold 0.9",
        "edgedx classify scans/ --format csv -o results.csv --audit audit.ndjson",
    ),
    "info": (
        "edgedx info chest_xray_cnn_int8",
        "edgedx info --versions                              # for a support request",
        "EDGEDX_BATCH_SIZE=16 edgedx info --config           # what classify and bench will use",
    ),
    "bench": (
        "edgedx bench -m chest_xray_cnn_int8 --iterations 500",
        "edgedx bench --compare chest_xray_cnn_fp32 chest_xray_cnn_int8 chest_xray_cnn_int8@openvino --images xrays/ --limit 400",
        "edgedx bench --compare model_fp16.engine model_int8.engine --images xrays/ --markdown > BENCH.md",
    ),
    "models": (
        "edgedx models",
        "edgedx models --json",
        "edgedx classify scans/ --model chest_xray_cnn_fp32",
    ),
    "eval": (
        "edgedx eval chest_xray_cnn_int8 xrays/             # one subfolder per label",
        "edgedx eval model.onnx chestmnist.npz --split test --json",
    ),
    "export onnx": (
        "edgedx export onnx model.pt --arch resnet --size 224 --labels NORMAL,PNEUMONIA --positive PNEUMONIA -o model.onnx",
        "edgedx export onnx model.keras -o model.onnx --images scans/",
    ),
    "export quantize": (
        "edgedx export quantize model.onnx -o model_int8.onnx --calib scans/ --eval xrays/",
        "edgedx export quantize chest_xray_cnn_fp32 -o int8_trt.onnx --calib scans/ --target tensorrt",
    ),
    "export fp16": (
        "edgedx export fp16 model.onnx -o model_fp16.onnx --images scans/",
        "edgedx export fp16 chest_xray_cnn_fp32 -o fp16.onnx",
    ),
    "export verify": (
        "edgedx export verify model.onnx model_int8.onnx xrays/",
        "edgedx export verify model.onnx model.engine xrays/ --backend tensorrt --json",
    ),
    "export engine": (
        "edgedx export engine model.onnx --precision fp16",
        "edgedx export engine model_int8_trt.onnx --precision int8 -o model_int8.engine",
    ),
}


def epilog(command: str) -> str | None:
    """The ``Examples:`` block of ``command`` ("classify", "export quantize"), or None."""
    lines = EXAMPLES.get(command)
    if not lines:
        return None
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def add_examples(app: Any, prefix: str = "") -> None:
    """Set the epilog of every command registered on the Typer ``app`` that has examples and none yet.

    Args:
        app: a ``typer.Typer``; call before the CLI runs (commands are built on the first call).
        prefix: the app's mount point, e.g. ``"export "``.
    """
    for info in app.registered_commands:
        name = info.name or (info.callback.__name__.replace("_", "-") if info.callback else "")
        if info.epilog is None:
            info.epilog = epilog(prefix + name)
