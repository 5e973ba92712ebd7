from __future__ import annotations

import numpy as np
import pytest

from edgedx import preprocess
from edgedx.errors import InputError
from edgedx.preprocess import PreprocessSpec


def spec(**kw) -> PreprocessSpec:
    base = dict(width=4, height=4, channels=1, scale=1 / 255, mean=(0.5,), std=(0.25,))
    return PreprocessSpec(**{**base, **kw})


def test_normalizes_with_scale_mean_std():
    img = np.full((4, 4), 255, np.uint8)
    out = preprocess.apply(img, spec())
    assert out.shape == (1, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, (1.0 - 0.5) / 0.25, rtol=1e-6)


def test_writes_into_the_given_buffer_row():
    buf = spec().buffer(3)
    buf[:] = -99
    preprocess.apply(np.zeros((4, 4), np.uint8), spec(), buf[1])
    np.testing.assert_allclose(buf[1], -2.0)
    assert (buf[0] == -99).all() and (buf[2] == -99).all()


def test_uint16_maps_onto_the_8bit_domain():
    s = spec()
    a = preprocess.apply(np.full((4, 4), 65535, np.uint16), s)
    b = preprocess.apply(np.full((4, 4), 255, np.uint8), s)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_rgb_to_gray_and_gray_to_rgb():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # pure red -> gray 76 (0.299 * 255)
    gray = preprocess.apply(rgb, spec(scale=1.0, mean=(0.0,), std=(1.0,)))
    np.testing.assert_allclose(gray, 76, atol=1)
    s3 = spec(channels=3, mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 4.0), scale=1.0)
    out = preprocess.apply(np.full((4, 4), 10, np.uint8), s3)
    np.testing.assert_allclose(out[:, 0, 0], [(10 - 0.1) / 1, (10 - 0.2) / 2, (10 - 0.3) / 4], rtol=1e-6)


def test_nhwc_layout():
    s = spec(channels=3, layout="NHWC", scale=1.0, mean=(0.0,), std=(1.0,))
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 2] = 7
    out = preprocess.apply(img, s)
    assert out.shape == (4, 4, 3)
    assert (out[..., 2] == 7).all() and (out[..., 0] == 0).all()


def test_stretch_resize_of_uniform_image_keeps_value():
    out = preprocess.apply(np.full((100, 37), 51, np.uint8), spec(width=8, height=8, scale=1.0, mean=(0.0,), std=(1.0,)))
    assert out.shape == (1, 8, 8)
    np.testing.assert_allclose(out, 51, atol=1e-4)


def test_letterbox_pads_and_centers():
    s = spec(width=8, height=8, resize="letterbox", pad_value=0, scale=1.0, mean=(0.0,), std=(1.0,))
    out = preprocess.apply(np.full((4, 8), 200, np.uint8), s)[0]  # wide image: rows padded
    assert (out[:2] == 0).all() and (out[-2:] == 0).all()
    np.testing.assert_allclose(out[2:6], 200)


def test_center_crop_keeps_the_middle():
    img = np.zeros((10, 30), np.uint8)
    img[:, 10:20] = 255  # the middle third is white
    out = preprocess.apply(img, spec(width=5, height=5, resize="center_crop", scale=1.0, mean=(0.0,), std=(1.0,)))
    np.testing.assert_allclose(out, 255, atol=1e-3)


def test_one_by_one_image():
    out = preprocess.apply(np.array([[255]], np.uint8), spec(width=3, height=3, scale=1.0, mean=(0.0,), std=(1.0,)))
    np.testing.assert_allclose(out, 255)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4), np.uint8), np.zeros((4, 4), np.int64), np.full((4, 4), np.nan, np.float32)],
)
def test_bad_images_raise_input_error(bad):
    with pytest.raises(InputError):
        preprocess.apply(bad, spec())


def test_spec_validation_lists_every_problem():
    with pytest.raises(ValueError) as err:
        PreprocessSpec(width=0, height=4, channels=2, std=(0.0,))
    text = str(err.value)
    assert "width" in text and "channels" in text and "std" in text


def test_wrong_output_buffer_is_refused():
    with pytest.raises(ValueError):
        preprocess.apply(np.zeros((4, 4), np.uint8), spec(), np.empty((1, 4, 4), np.float64))


def test_letterbox_pad_means_the_same_for_16_bit_images():
    s = spec(width=8, height=8, resize="letterbox", pad_value=255, scale=1.0, mean=(0.0,), std=(1.0,))
    a = preprocess.apply(np.full((4, 8), 0, np.uint16), s)[0]
    b = preprocess.apply(np.full((4, 8), 0, np.uint8), s)[0]
    np.testing.assert_allclose(a, b, atol=1e-3)
    assert a[0, 0] == pytest.approx(255, abs=1e-3)


def test_booleans_are_not_numbers_in_a_spec():
    with pytest.raises(ValueError, match="channels"):
        PreprocessSpec(width=4, height=4, channels=True)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("resize", ["stretch", "letterbox", "center_crop"])
def test_resize_then_normalize_is_apply(layout, channels, resize):
    s = PreprocessSpec(width=12, height=10, channels=channels, resize=resize, layout=layout, mean=(0.4,), std=(0.2,))
    rng = np.random.default_rng(0)
    for img in (rng.integers(0, 256, (37, 23), np.uint8), rng.integers(0, 65536, (15, 40, 3), np.uint16),
                rng.random((30, 30)).astype(np.float32) * 255):
        pixels = preprocess.resize(img, s)
        assert pixels.shape[:2] == (10, 12) and pixels.dtype == (img.dtype if img.dtype != np.float64 else np.float32)
        buf = s.buffer(2)
        out = preprocess.normalize(pixels, s, buf[1])
        assert out.base is buf or np.shares_memory(out, buf)
        np.testing.assert_array_equal(out, preprocess.apply(img, s))


def test_normalize_refuses_pixels_that_were_not_resized():
    with pytest.raises(ValueError, match="resize"):
        preprocess.normalize(np.zeros((5, 5), np.uint8), spec())
