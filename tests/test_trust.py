"""Building blocks of abstention and heatmaps: pixel colour, DICOM tag rules, the OOD score, CAM
graph outputs, heatmap files and their border summary."""

from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from edgedx import gate, heatmap, manifest, ood
from edgedx.errors import EdgedxError
from tests.factories import frame, two_fields


def test_color_is_judged_from_pixels():
    gray = frame(96, 96)
    assert gate.pixel_color(gray) == "gray"
    rgb_gray = np.repeat(gray[:, :, None], 3, 2)
    assert gate.pixel_color(rgb_gray) == "gray"
    # a gray scan stored as an RGB JPEG (chroma rounding) is still gray
    _, buf = cv2.imencode(".jpg", rgb_gray, [cv2.IMWRITE_JPEG_QUALITY, 75])
    assert gate.pixel_color(cv2.imdecode(buf, cv2.IMREAD_COLOR)) == "gray"
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    assert gate.pixel_color(noise) == "color"
    tinted = rgb_gray.astype(np.int16)
    tinted[..., 0] += 40  # a sepia/colour photograph of gray content
    assert gate.pixel_color(np.clip(tinted, 0, 255).astype(np.uint8)) == "color"
    assert gate.pixel_color(rgb_gray.astype(np.uint16) * 257) == "gray"


def test_color_rule_rejects_colour_and_passes_gray():
    accepts = {"color": ["gray"]}
    noise = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    assert gate.check(noise, None, accepts).code == "color_not_accepted"
    assert gate.check(np.repeat(frame(96, 96)[:, :, None], 3, 2), None, accepts) is None


def _dicom(body_part=None, view=None, modality="CR"):
    return SimpleNamespace(format="dicom", modality=modality, photometric="MONOCHROME2", width=256, height=256, channels=1,
                           body_part=body_part, view_position=view)


def test_dicom_tag_rules_in_monai_selector_form():
    rules = {"dicom_conditions": {"BodyPartExamined": "(?i)^(CHEST|THORAX)$", "ViewPosition": ["PA", "AP"]}}
    img = frame(96, 96)
    assert gate.check(img, _dicom("CHEST", "PA"), rules) is None
    assert gate.check(img, _dicom("thorax", "ap"), rules) is None
    leg = gate.check(img, _dicom("EXTREMITY", "AP"), rules)
    assert leg.code == "dicom_tag_not_accepted" and "BodyPartExamined EXTREMITY" in leg.detail
    assert gate.check(img, _dicom("CHEST", "LL"), rules).code == "dicom_tag_not_accepted"
    assert gate.check(img, _dicom(None, None), rules) is None  # no tag: the rule cannot judge
    png = SimpleNamespace(format="png", modality=None, photometric=None, width=96, height=96, channels=1)
    assert gate.check(img, png, rules) is None


@pytest.mark.parametrize("bad, words", [
    ({"dicom_conditions": {"BodyPartExamined": "("}}, "bad regular expression"),
    ({"dicom_conditions": {"PatientName": "x"}}, "unsupported keyword"),
    ({"dicom_conditions": {"ViewPosition": []}}, "regular expression or a non-empty list"),
    ({"color": ["grey"]}, '"gray" or "color"'),
    ({"description": 3}, "must be a string"),
])
def test_bad_rules_are_manifest_errors(bad, words):
    assert any(words in p for p in gate.validate_accepts(bad))


def test_leg_cr_from_shared_data_is_rejected_by_its_tags():
    from edgedx import decode
    from tests.conftest import DICOM, need

    path = need(DICOM / "RG3_J2KR.dcm")
    try:
        d = decode.decode_file(path)[0]
    except EdgedxError as exc:  # JPEG 2000 decoder missing
        pytest.skip(f"cannot decode {path.name}: {exc}")
    assert d.info.body_part == "EXTREMITY"
    rules = {"dicom_conditions": {"BodyPartExamined": "(?i)^(CHEST|THORAX)$"}}
    assert gate.check(d.image, d.info, rules).code == "dicom_tag_not_accepted"


def test_ood_score_is_about_one_inside_and_large_outside():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(8, 64))
    train = rng.normal(size=(3000, 8)) * np.linspace(3, 0.5, 8) @ basis + rng.normal(0, 0.05, (3000, 64)) + 2.0
    params = ood.fit(train, rank=8)
    scorer = ood.Scorer({**params, "threshold": None})
    inside = scorer.score(rng.normal(size=(500, 8)) * np.linspace(3, 0.5, 8) @ basis + rng.normal(0, 0.05, (500, 64)) + 2.0)
    assert 0.5 < np.median(inside) < 2.0
    off_subspace = scorer.score(rng.normal(0, 1.0, (100, 64)) + 2.0)  # noise: not in the training subspace
    assert off_subspace.min() > 10 * np.quantile(inside, 0.99)
    assert scorer.reason(1.0) is None
    scorer.threshold = 3.0
    assert "past" in scorer.reason(5.0) and scorer.reason(2.0) is None


def test_ood_section_is_validated():
    params = {**ood.fit(np.random.default_rng(0).normal(size=(50, 6)), rank=3), "threshold": 4.0}
    assert ood.validate(params, "features") == []
    assert any("output.features" in p for p in ood.validate(params, None))
    assert any("do not fit" in p for p in ood.validate({**params, "variances": [1.0]}, "features"))
    assert any("threshold" in p for p in ood.validate({**params, "threshold": -1}, "features"))
    assert any("missing" in p for p in ood.validate({"method": ood.METHOD}, "features"))


def test_layout_vector_ignores_exposure_and_size_but_not_arrangement():
    rng = np.random.default_rng(0)
    img = two_fields(rng)
    v = ood.layout(img)
    assert v.shape == (ood.LAYOUT_SIZE**2,) and abs(v.mean()) < 1e-9 and abs(v.std() - 1) < 1e-2
    brighter = np.clip(img.astype(np.float32) * 0.8 + 30, 0, 255)
    assert np.abs(ood.layout(brighter) - v).max() < 0.05  # exposure and contrast do not count
    assert np.abs(ood.layout(cv2.resize(img, (224, 224))) - v).max() < 0.1
    assert np.abs(ood.layout(np.dstack([img] * 3)) - v).max() < 1e-9  # gray stored as three channels
    assert np.abs(ood.layout(img.T[::-1]) - v).max() > 1.0  # turned a quarter: another layout


def test_layout_score_keeps_the_training_layout_and_rejects_others():
    rng = np.random.default_rng(1)
    params = ood.fit_layout([two_fields(rng) for _ in range(400)])
    assert params["size"] == ood.LAYOUT_SIZE and len(params["components"]) == ood.LAYOUT_RANK
    inside = ood.layout_scorer({"layout": {**params, "threshold": None}}).score(np.stack([ood.layout(two_fields(rng)) for _ in range(200)]))
    limit = float(np.quantile(inside, 0.995))
    scorer = ood.layout_scorer({"layout": {**params, "threshold": limit}})
    one_blob = np.full((96, 96), 200, np.uint8)
    cv2.circle(one_blob, (48, 40), 25, 60, -1)  # a single dark lesion: an ultrasound-like layout
    noise = rng.integers(0, 256, (96, 96)).astype(np.uint8)
    for other in (one_blob, noise, two_fields(rng).T.copy()):
        detail = scorer.reason(float(scorer.score(ood.layout(other))))
        assert detail is not None and detail.startswith("image layout distance")
    assert np.mean(inside > limit) <= 0.01


def test_ood_layout_section_is_validated():
    rng = np.random.default_rng(0)
    params = {**ood.fit(rng.normal(size=(50, 6)), rank=3), "threshold": 4.0}
    layout = {**ood.fit_layout([two_fields(rng) for _ in range(30)]), "threshold": 2.0}
    assert ood.validate({**params, "layout": layout}, "features") == []
    assert any("ood.layout.size" in p for p in ood.validate({**params, "layout": {**layout, "size": 0}}, "features"))
    assert any("layout cells" in p for p in ood.validate({**params, "layout": {**layout, "size": 4}}, "features"))
    assert any("ood.layout.threshold" in p for p in ood.validate({**params, "layout": {**layout, "threshold": "x"}}, "features"))
    assert any("ood.layout.mean: missing" in p for p in ood.validate({**params, "layout": {"size": 8}}, "features"))
    assert ood.layout_scorer(params) is None


def test_heatmap_names_do_not_collide_and_border_mass_finds_the_frame(tmp_path):
    a = heatmap.file_name(str(tmp_path / "x" / "scan.png"), None, 0)
    b = heatmap.file_name(str(tmp_path / "y" / "scan.png"), None, 1)
    assert a != b and a.startswith("scan-") and a.endswith(".png")
    assert heatmap.file_name(str(tmp_path / "x" / "scan.png"), 2, 0) != a
    ring = np.zeros((7, 7), np.float32)
    ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = 1.0
    centre = np.zeros((7, 7), np.float32)
    centre[3, 3] = 1.0
    assert heatmap.border_mass(ring)["border"] > 0.6
    assert heatmap.border_mass(centre)["border"] < 0.05
    assert heatmap.border_mass(np.zeros((7, 7)))["border"] == 0.0
    pic = heatmap.overlay(frame(64, 64), centre)
    assert pic.shape == (64, 64, 3) and pic.dtype == np.uint8
    path = heatmap.write(tmp_path / "maps", a, pic)
    assert cv2.imread(path).shape == (64, 64, 3)


def test_decision_map_of_a_binary_model_is_the_margin():
    cam = np.stack([np.full((3, 3), 1.0), np.arange(9.0).reshape(3, 3)])
    pos = heatmap.decision_map(cam, 1, 1)
    neg = heatmap.decision_map(cam, 1, 0)
    assert pos[2, 2] == 7.0 and pos[0, 0] == 0.0 and neg[0, 0] == 1.0 and neg[2, 2] == 0.0


def test_manifest_round_trips_the_trust_sections():
    from tests.factories import manifest_dict

    data = manifest_dict()
    data["output"].update(features="features", cam="cam")
    data["ood"] = {**ood.fit(np.random.default_rng(0).normal(size=(40, 5)), rank=2), "threshold": 3.0}
    m = manifest.from_dict(json.loads(json.dumps(data)))
    assert m.features_output == "features" and m.cam_output == "cam" and m.ood["threshold"] == 3.0
    again = manifest.from_dict(json.loads(m.to_json()))
    assert again.ood == m.ood and again.cam_output == "cam"
    data["ood"]["mean"] = [1.0]
    with pytest.raises(Exception, match="ood"):
        manifest.from_dict(data)
