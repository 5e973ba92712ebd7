"""Decode + preprocess cost per image: edgedx (OpenCV, pydicom) against the PIL way, and JPEG
reduced-scale decoding against full decode + resize.

    python -m benchmarks.preprocess [--model P] [--quick] [--out DIR]

Inputs: (a) a 224 px chest X-ray JPEG from the train set, (b) a 2048x2048 16-bit PNG generated
deterministically (smooth gradient + noise), (c) the real DICOM RG1_UNCR.dcm, and for the reduced
decode (d) a 2048x2048 8-bit JPEG made from RG1_UNCR's pixels.

Every row is one image, one thread (OpenCV's pool is set to one thread): file read + decode +
resize to the model's input + normalize into a float32 model input. Median over repeated runs on a
file already in the page cache.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks import _common as C
from edgedx import decode, manifest, preprocess
from edgedx.preprocess import PreprocessSpec

REDUCED = {
    1: cv2.IMREAD_GRAYSCALE,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    duration = args.duration or (0.3 if args.quick else 2.0)
    spec, spec_source = _spec(args.model)
    cv2.setNumThreads(1)
    out: dict[str, Any] = {
        "machine": C.machine_info(),
        "spec": spec_source,
        "duration_s": duration,
        "rows": [],
        "reduced": [],
    }
    with tempfile.TemporaryDirectory(prefix="edgedx-bench-") as tmp:
        inputs = {
            "jpeg 224 (chest X-ray)": C.select_files(args.images, 1)[0],
            "png 2048 16-bit": make_png16(Path(tmp) / "gradient_2048_u16.png"),
            "dicom RG1_UNCR": args.dicom,
        }
        big_jpeg = make_big_jpeg(args.dicom, Path(tmp) / "rg1_2048.jpg")
        for name, path in inputs.items():
            ref = edgedx_pipeline(path, spec)
            pil = pil_dicom if name.startswith("dicom") else pil_raster
            pipelines = {
                "edgedx (OpenCV)": lambda p=path: edgedx_pipeline(p, spec),
                "PIL": lambda p=path, f=pil: f(p, spec),
            }
            for impl, fn in pipelines.items():
                C.log(f"{name}: {impl}")
                row = _time(fn, duration)
                row.update(
                    input=name,
                    impl=impl,
                    file_bytes=path.stat().st_size,
                    max_abs_diff_vs_edgedx=float(np.abs(fn() - ref).max()),
                )
                out["rows"].append(row)
        out["reduced"] = reduced_decode(big_jpeg, spec, duration)
    out["notes"] = [
        (
            "PIL rows: Image.open -> convert('L') (8-bit) -> resize(BILINEAR, which filters like an area resize when "
            "shrinking) -> numpy normalize; 16-bit PNG resized as I;16 then scaled by 255/65535 (convert('L') would clip it)."
        ),
        (
            "PIL DICOM row: pydicom pixel_array -> min-max to 0..255 uint8 (the tutorial recipe, not the file's VOI "
            "window, so its difference from edgedx is mostly windowing) -> PIL resize."
        ),
        "max_abs_diff values are in model-input units (after mean/std); x std / scale gives 0..255 pixel levels.",
    ]
    C.write_json(args.out / "preprocess.json", out)
    print(render(out))
    C.log(f"wrote {args.out / 'preprocess.json'}")
    return 0


def _spec(model: Path | None) -> tuple[PreprocessSpec, str]:
    """The model's preprocessing, or the training recipe's when no model is at hand."""
    if model is not None and model.is_file():
        found = manifest.load(model)
        if found is not None:
            return found.preprocess, str(model)
    return PreprocessSpec(
        224, 224, 1, mean=(0.5,), std=(0.25,)
    ), "224x224 gray, mean 0.5, std 0.25 (training recipe; no model)"


def _time(fn: Callable[[], object], duration: float) -> dict[str, Any]:
    samples = C.time_loop(fn, duration_s=duration, warmup=2, min_iters=3)
    median = float(np.median(samples)) * 1000
    return {
        "median_ms": median,
        "p90_ms": float(np.percentile(samples, 90)) * 1000,
        "images_per_s": 1000 / median,
        "iterations": len(samples),
    }


# -- the pipelines ---------------------------------------------------------------------------------


def edgedx_pipeline(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """Includes: read, sniff, header check, decode (OpenCV or pydicom + VOI window), resize, normalize."""
    return preprocess.apply(decode.decode_file(path)[0].image, spec)


def pil_raster(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """Includes: Image.open, convert, resize (BILINEAR), numpy normalize, as the tutorials write it."""
    from PIL import Image

    img = Image.open(path)
    domain = 1.0
    if img.mode.startswith("I;16"):
        domain = 255.0 / 65535.0
    elif img.mode != "L":
        img = img.convert("L")
    x = np.asarray(img.resize((spec.width, spec.height), Image.BILINEAR), np.float32)
    return ((x * (domain * spec.scale) - spec.mean[0]) / spec.std[0])[None]


def pil_dicom(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """Includes: pydicom.dcmread, pixel_array, min-max to uint8, MONOCHROME1 inversion, PIL resize, normalize."""
    import pydicom
    from PIL import Image

    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.float32)
    arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-6) * 255.0
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        arr = 255.0 - arr
    img = Image.fromarray(arr.astype(np.uint8)).resize((spec.width, spec.height), Image.BILINEAR)
    return ((np.asarray(img, np.float32) * spec.scale - spec.mean[0]) / spec.std[0])[None]


# -- reduced-scale JPEG decoding ---------------------------------------------------------------------


def reduced_decode(path: Path, spec: PreprocessSpec, duration: float) -> list[dict[str, Any]]:
    """cv2.imread at full size and at 1/2, 1/4, 1/8 (libjpeg's DCT scaling), each + edgedx resize/normalize.

    Reports the time and how far each model input is from the full-decode one (max and mean abs).
    Scales whose decoded size falls below the model input are marked: they upsample.
    """
    full = preprocess.apply(cv2.imread(str(path), REDUCED[1]), spec)
    to_pixels = spec.std[0] / spec.scale
    rows = []
    for k, flag in REDUCED.items():
        C.log(f"reduced decode 1/{k}")
        img = cv2.imread(str(path), flag)
        x = preprocess.apply(img, spec)
        row = _time(lambda f=flag: preprocess.apply(cv2.imread(str(path), f), spec), duration)
        diff = np.abs(x - full)
        row.update(
            scale=f"1/{k}",
            decoded=f"{img.shape[1]}x{img.shape[0]}",
            upsamples=img.shape[1] < spec.width,
            max_abs_diff=float(diff.max()),
            mean_abs_diff=float(diff.mean()),
            max_abs_diff_pixels=float(diff.max() * to_pixels),
        )
        rows.append(row)
    for label, options in (("edgedx decode_file (full)", decode.DecodeOptions()),
                           ("edgedx as Classifier decodes", decode.DecodeOptions(target_size=(spec.width, spec.height),
                                                                                target_channels=spec.channels))):
        C.log(f"reduced decode: {label}")
        first = decode.decode_file(path, options)[0]
        row = _time(lambda o=options: preprocess.apply(decode.decode_file(path, o)[0].image, spec), duration)
        diff = np.abs(preprocess.apply(first.image, spec) - full)
        row.update(
            scale=label,
            decoded=f"{first.image.shape[1]}x{first.image.shape[0]}",
            upsamples=False,
            max_abs_diff=float(diff.max()),
            mean_abs_diff=float(diff.mean()),
            max_abs_diff_pixels=float(diff.max() * to_pixels),
        )
        rows.append(row)
    return rows


# -- generated inputs --------------------------------------------------------------------------------


def make_png16(path: Path, size: int = 2048) -> Path:
    """A deterministic 16-bit gray PNG: a diagonal gradient, a soft disc, and Gaussian noise (seed 0)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    disc = np.exp(-((xx - 0.5) ** 2 + (yy - 0.45) ** 2) / 0.05)
    noise = np.random.default_rng(0).normal(0, 0.02, (size, size)).astype(np.float32)
    img = np.clip(0.2 + 0.4 * (xx + yy) / 2 + 0.35 * disc + noise, 0, 1)
    cv2.imwrite(str(path), (img * 65535).astype(np.uint16))
    return path


def make_big_jpeg(dicom: Path, path: Path, size: int = 2048) -> Path:
    """A 2048x2048 8-bit gray JPEG (quality 95) of a real radiograph: RG1_UNCR as edgedx windows it, resized."""
    img = decode.decode_file(dicom)[0].image
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(path), np.clip(img + 0.5, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path


def render(out: dict[str, Any]) -> str:
    rows = [
        [r["input"], r["impl"], r["median_ms"], r["p90_ms"], r["images_per_s"], r["max_abs_diff_vs_edgedx"]]
        for r in out["rows"]
    ]
    red = [
        [
            r["scale"],
            r["decoded"],
            r["median_ms"],
            r["images_per_s"],
            r["max_abs_diff"],
            r["mean_abs_diff"],
            r["max_abs_diff_pixels"],
            "yes" if r["upsamples"] else "",
        ]
        for r in out["reduced"]
    ]
    return (
        f"## decode + preprocess, one thread, spec: {out['spec']}\n\n"
        + C.md_table(["input", "pipeline", "median ms", "p90 ms", "img/s", "max |diff| vs edgedx"], rows)
        + "\n\n## 2048x2048 JPEG: reduced-scale decode + resize vs full decode + resize\n\n"
        + C.md_table(
            ["decode", "decoded size", "median ms", "img/s", "max |diff|", "mean |diff|", "max |diff| px", "upsamples"],
            red,
        )
        + "\n\n"
        + "\n".join(f"note: {n}" for n in out["notes"])
    )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    from edgedx import bundled

    p = argparse.ArgumentParser(prog="python -m benchmarks.preprocess", description=__doc__.splitlines()[0])
    default_model = next(
        (
            m
            for m in (bundled.MODELS_DIR / bundled.DEFAULT_CPU, bundled.MODELS_DIR / bundled.DEFAULT_FP32)
            if m.is_file()
        ),
        None,
    )
    p.add_argument(
        "--model",
        type=Path,
        default=default_model,
        help="model whose manifest gives the preprocessing (default: bundled)",
    )
    p.add_argument("--images", type=Path, default=C.DEFAULT_IMAGES)
    p.add_argument("--dicom", type=Path, default=C.DEFAULT_DICOM)
    p.add_argument("--duration", type=float, default=None, help="seconds per row (default 2, --quick 0.3)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=C.DEFAULT_OUT)
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
