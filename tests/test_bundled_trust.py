"""The bundled model abstains on what it was not made for, keeps shifted chest X-rays, and its FP32
and INT8 heatmaps agree. Real data from ../shared/data; skipped cleanly where absent."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedx import Classifier, bundled, decode
from edgedx import manifest as manifest_mod
from edgedx.errors import EdgedxError
from tests.conftest import DATA, DICOM, XRAY, need

INT8 = bundled.MODELS_DIR / bundled.DEFAULT_CPU
FP32 = bundled.MODELS_DIR / bundled.DEFAULT_FP32


@pytest.fixture(scope="module")
def bundled_manifest():
    m = manifest_mod.load(INT8)
    if m is None or not m.ood or not m.cam_output:
        pytest.skip("the bundled model carries no OOD score or CAM output")
    return m


def _not_chest(tmp, kind: str) -> list:
    """Files of one kind of input the bundled chest X-ray model must not score."""
    rng = np.random.default_rng(0)
    out = []
    if kind == "leg_cr_dicom":
        out.append(shutil.copy(need(DICOM / "RG3_J2KR.dcm"), tmp / "leg.dcm"))
    elif kind == "leg_cr_pixels":  # the same leg, tags gone: only the pixels can tell
        try:
            img = decode.decode_file(need(DICOM / "RG3_J2KR.dcm"))[0].image
        except EdgedxError as exc:  # no JPEG 2000 decoder here
            pytest.skip(f"cannot decode the leg CR: {exc}")
        cv2.imwrite(str(tmp / "leg.png"), cv2.resize(np.clip(img, 0, 255).astype(np.uint8), (512, 512), interpolation=cv2.INTER_AREA))
        out.append(tmp / "leg.png")
    elif kind == "gray_noise":
        for i in range(3):
            cv2.imwrite(str(tmp / f"gray{i}.png"), rng.integers(0, 256, (256, 256), dtype=np.uint8))
            out.append(tmp / f"gray{i}.png")
    elif kind == "color_noise":
        for i in range(3):
            cv2.imwrite(str(tmp / f"color{i}.png"), rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
            out.append(tmp / f"color{i}.png")
    elif kind in ("ultrasound", "fundus"):
        # As MedMNIST ships them (28x28): the ultrasound is too small, the fundus photograph colour.
        name = "breastmnist" if kind == "ultrasound" else "retinamnist"
        images = np.load(need(DATA / name / f"{name}_trainval.npz"))["val_images"]
        for i in range(0, 40, 8):
            img = images[i]
            cv2.imwrite(str(tmp / f"{kind}{i}.png"), img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            out.append(tmp / f"{kind}{i}.png")
    return [str(p) for p in out]


@pytest.mark.parametrize("kind", ["leg_cr_dicom", "leg_cr_pixels", "gray_noise", "color_noise", "ultrasound", "fundus"])
def test_inputs_outside_the_model_are_rejected_with_a_reason(bundled_manifest, tmp_path, kind):
    files = _not_chest(tmp_path, kind)
    with Classifier(INT8, "onnxruntime") as clf:
        results = list(clf.classify_many(files))
    assert all(r.status == "rejected" and r.reason for r in results), [(r.path, r.status, r.score, r.ood_score) for r in results]


def test_ultrasound_scaled_up_to_xray_size_is_rejected(bundled_manifest, tmp_path):
    """BreastMNIST ultrasound scaled up from 28 px to 256 px: too blurry for the feature score alone,
    the image-layout part of the OOD check must catch it."""
    images = np.load(need(DATA / "breastmnist" / "breastmnist_trainval.npz"))["val_images"]
    files = []
    for i, img in enumerate(images):
        files.append(str(tmp_path / f"us{i}.png"))
        cv2.imwrite(files[-1], cv2.resize(img, (256, 256), interpolation=cv2.INTER_CUBIC))
    with Classifier(INT8, "onnxruntime") as clf:
        results = list(clf.classify_many(files))
    rejected = [r for r in results if r.status == "rejected"]
    assert all(r.reason_code == "out_of_distribution" for r in rejected)
    assert len(rejected) >= 0.9 * len(results), f"{len(rejected)} of {len(results)} rejected"
    # Triton's preprocessing step (edgedx.serving.stages) applies the same layout check
    import json

    from edgedx.serving import stages

    served = [stages.prepare(Path(f).read_bytes(), bundled_manifest, stages.decode_options(bundled_manifest)) for f in files]
    served_rejected = [json.loads(p.status)["reason_code"] for p in served if p.status]
    assert len(served_rejected) >= 0.9 * len(files) and set(served_rejected) == {"out_of_distribution"}


@pytest.fixture(scope="module")
def shifted_chest_xrays(tmp_path_factory):
    """Held-out-by-patient validation X-rays, changed like a new site's acquisitions (export.shift)."""
    pytest.importorskip("torch")
    from export.shift import shifted_copy
    from export.train import Dataset, patient_id, split_by_group

    root = need(XRAY)
    files = [f for cls in ("NORMAL", "PNEUMONIA") for f in sorted((root / cls).glob("*.jpeg"))]
    labels = np.array([int(f.parent.name == "PNEUMONIA") for f in files])
    _, val = split_by_group(Dataset(files, labels, [f"{f.parent.name}/{patient_id(f.name)}" for f in files]), 0.15, 0)
    pick = np.linspace(0, len(val.labels) - 1, 250).astype(int)
    images = [cv2.imread(str(val.images[i]), cv2.IMREAD_GRAYSCALE) for i in pick]
    shifted, _, _ = shifted_copy(images, val.labels[pick], None, seed=7)
    tmp = tmp_path_factory.mktemp("shifted")
    out = []
    for i, (clean, img) in enumerate(zip(images, shifted)):
        for name, pixels in ((f"clean{i}.png", clean), (f"shifted{i}.png", img)):
            cv2.imwrite(str(tmp / name), pixels)
            out.append(str(tmp / name))
    return out


def test_chest_xrays_clean_and_shifted_are_rarely_rejected(bundled_manifest, shifted_chest_xrays):
    with Classifier(INT8, "onnxruntime") as clf:
        results = list(clf.classify_many(shifted_chest_xrays))
    rejected = [r for r in results if r.status == "rejected"]
    assert len(rejected) <= 0.02 * len(results), [(r.path, r.reason) for r in rejected]
    assert all(r.ood_score is not None for r in results if r.status == "ok")


def test_int8_provenance_names_the_shipped_fp32_file(bundled_manifest):
    from edgedx.errors import file_sha256

    assert bundled_manifest.provenance["quantization"]["source_sha256"] == file_sha256(FP32)


def test_fp32_and_int8_heatmaps_agree(bundled_manifest, shifted_chest_xrays):
    pytest.importorskip("onnx")
    from export.trust_fit import cam_agreement

    images = [decode.decode_file(p)[0].image for p in shifted_chest_xrays[::10]]
    r = cam_agreement(FP32, INT8, images)
    assert r["scans"] == 50 and r["mean"] >= 0.9 and r["p05"] >= 0.9, r
