from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from monitord_torchvision.preprocess import PreprocessSpec, preprocess_image

GRAY = PreprocessSpec(input_size=(8, 8), channels=1, mean=(0.5,), std=(0.25,))
RGB = PreprocessSpec(input_size=(8, 8), channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
PLAIN_GRAY = PreprocessSpec(input_size=(8, 8), channels=1, mean=(0.0,), std=(1.0,))


def ramp() -> np.ndarray:
    return (np.arange(64, dtype=np.uint16).reshape(8, 8) * 4).astype(np.uint8)


def test_gray_image_is_scaled_and_normalised_exactly() -> None:
    out = preprocess_image(Image.fromarray(ramp()), GRAY)
    assert out.shape == (1, 8, 8) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out[0], (ramp() / 255.0 - 0.5) / 0.25, atol=1e-6)


def test_rgb_to_one_channel_uses_luma_and_gray_to_three_repeats() -> None:
    gray = Image.fromarray(ramp())
    from_rgb = preprocess_image(gray.convert("RGB"), GRAY)
    np.testing.assert_allclose(from_rgb, preprocess_image(gray, GRAY), atol=1e-5)
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    np.testing.assert_allclose(preprocess_image(red, PLAIN_GRAY), 0.299, atol=1e-6)
    three = preprocess_image(gray, RGB)
    assert three.shape == (3, 8, 8)
    unit = ramp() / 255.0
    for c, (m, s) in enumerate(zip(RGB.mean, RGB.std, strict=True)):
        np.testing.assert_allclose(three[c], (unit - m) / s, atol=1e-5)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_composited_on_black(mode: str) -> None:
    base = Image.new("RGB" if mode == "RGBA" else "L", (8, 8), "white")
    image = base.convert(mode)
    alpha = np.zeros((8, 8), dtype=np.uint8)
    alpha[:, 4:] = 255
    alpha[0, :4] = 128
    image.putalpha(Image.fromarray(alpha))
    out = preprocess_image(image, PLAIN_GRAY)[0]
    assert np.all(out[1:, :4] == 0)  # transparent → black
    np.testing.assert_allclose(out[:, 4:], 1.0, atol=1e-5)  # opaque white stays white
    np.testing.assert_allclose(out[0, :4], 128 / 255, atol=1e-5)  # half → half


def test_palette_with_transparent_index_and_gray_with_trns() -> None:
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.info["transparency"] = 1  # the white entry is transparent
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    decoded = Image.open(io.BytesIO(buffer.getvalue()))
    assert decoded.mode == "P"
    assert np.all(preprocess_image(decoded, PLAIN_GRAY) == 0)

    gray = Image.fromarray(np.full((8, 8), 200, dtype=np.uint8))
    gray.info["transparency"] = 200
    assert np.all(preprocess_image(gray, PLAIN_GRAY) == 0)


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit_images_match_their_eight_bit_version(mode: str) -> None:
    wide = ramp().astype(np.uint32) * 257
    if mode == "I;16":
        image = Image.fromarray(wide.astype(np.uint16))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        image = Image.open(io.BytesIO(buffer.getvalue()))
    else:
        image = Image.fromarray(wide.astype(np.int32))
    assert image.mode == mode
    np.testing.assert_allclose(
        preprocess_image(image, GRAY), preprocess_image(Image.fromarray(ramp()), GRAY), atol=1e-5
    )


def test_cmyk_and_bilevel_images() -> None:
    rgb = Image.new("RGB", (8, 8), (10, 200, 30))
    cmyk = rgb.convert("CMYK")
    np.testing.assert_allclose(
        preprocess_image(cmyk, RGB), preprocess_image(cmyk.convert("RGB"), RGB), atol=1e-6
    )
    bilevel = Image.fromarray(ramp() > 127)
    assert bilevel.mode == "1"
    out = preprocess_image(bilevel, PLAIN_GRAY)
    assert set(np.unique(out).tolist()) == {0.0, 1.0}


def test_resizes_any_size_to_the_input_size() -> None:
    spec = PreprocessSpec(input_size=(32, 24), channels=3, mean=(0.0,) * 3, std=(1.0,) * 3)
    wide = Image.new("RGB", (100, 10), (255, 255, 255))
    out = preprocess_image(wide, spec)
    assert out.shape == (3, 32, 24)
    np.testing.assert_allclose(out, 1.0, atol=1e-5)
    big = Image.fromarray(np.kron(ramp(), np.ones((4, 4), dtype=np.uint8)))
    small = preprocess_image(big, PLAIN_GRAY)
    assert small.shape == (1, 8, 8)
    np.testing.assert_allclose(small[0], ramp() / 255.0, atol=0.025)  # bilinear blurs edges


def test_rejects_what_is_not_a_usable_image() -> None:
    with pytest.raises(ValueError, match="PIL image, got bytes"):
        preprocess_image(b"\x89PNG", GRAY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no pixels"):
        preprocess_image(Image.new("L", (0, 0)), GRAY)
    with pytest.raises(ValueError, match="unsupported image mode 'F'"):
        preprocess_image(Image.fromarray(np.zeros((8, 8), dtype=np.float32)), GRAY)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(
        buffer, format="PNG"
    )
    truncated = Image.open(io.BytesIO(buffer.getvalue()[:200]))
    with pytest.raises(ValueError, match="cannot be decoded"):
        preprocess_image(truncated, GRAY)


def test_spec_validates_itself() -> None:
    with pytest.raises(ValueError):
        PreprocessSpec(input_size=(8, 8), channels=1, mean=(0.5, 0.5), std=(0.2,))
    with pytest.raises(ValueError):
        PreprocessSpec(input_size=(8, 8), channels=2, mean=(0.5,) * 2, std=(0.2,) * 2)
