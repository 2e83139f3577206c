from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from monitord_torchvision.digits import held_out_digits
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
    np.testing.assert_allclose(small[0], ramp() / 255.0, atol=1e-6)  # 4x4 blocks averaged back


# -- resizing: area averaging over whole blocks, then torchvision's antialiased bilinear -----------


def nearest_upscaled(pixels: np.ndarray, height: int, width: int | None = None) -> Image.Image:
    """A digit enlarged the way an image viewer or a screenshot enlarges it."""
    return Image.fromarray(pixels).resize((width or height, height), Image.Resampling.NEAREST)


@pytest.mark.parametrize(("height", "width"), [(16, 16), (32, 32), (40, 40), (24, 16), (8, 32)])
def test_a_digit_enlarged_by_whole_factors_preprocesses_to_the_digit_itself(height: int, width: int) -> None:
    """Issue 15, item 16: each 4x4 block of a 32x32 copy is averaged back to its pixel,
    so a clean digit at another resolution is the same input as the clean digit (the
    bilinear filter alone, antialiased or not, mixes every pixel with its neighbours)."""
    images, _ = held_out_digits()
    for pixels in images[:60]:
        expected = preprocess_image(Image.fromarray(pixels), PLAIN_GRAY)
        got = preprocess_image(nearest_upscaled(pixels, height, width), PLAIN_GRAY)
        np.testing.assert_allclose(got, expected, atol=1e-6)
    # torchvision's antialiased bilinear alone is 3/4 of a block and 1/8 of each neighbour.
    blurred = torchvision_resize(np.asarray(nearest_upscaled(images[0], 32), np.float32) / 255.0, (8, 8))
    assert np.abs(blurred - images[0] / 255.0).max() > 0.1


def torchvision_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torchvision's ``resize(antialias=True)`` (bilinear) of a (H, W) float image in [0, 1]."""
    import torch
    from torchvision.transforms.v2 import functional as F

    return F.resize(torch.from_numpy(image)[None], list(size), antialias=True)[0].numpy()


#: (source (H, W), model input (H, W)): factors under two along each axis, up and down.
UNDER_TWO = [((9, 13), (8, 8)), ((12, 15), (8, 10)), ((40, 40), (32, 32)), ((20, 28), (32, 32)), ((5, 7), (8, 8))]


@pytest.mark.parametrize(("source", "size"), UNDER_TWO)
def test_below_a_factor_of_two_the_resize_is_torchvisions_antialiased_bilinear(
    source: tuple[int, int], size: tuple[int, int]
) -> None:
    pixels = np.random.default_rng(sum(source)).integers(0, 256, source, dtype=np.uint8)
    spec = PreprocessSpec(input_size=size, channels=1, mean=(0.0,), std=(1.0,))
    got = preprocess_image(Image.fromarray(pixels), spec)[0]
    expected = torchvision_resize(pixels.astype(np.float32) / 255.0, size)
    assert np.abs(got - expected).max() < 1e-5  # measured: under 3e-7


@pytest.mark.parametrize(("source", "size"), [((32, 32), (8, 8)), ((37, 23), (8, 8)), ((20, 20), (8, 8)),
                                              ((224, 300), (64, 64)), ((17, 90), (8, 8))])
def test_from_a_factor_of_two_whole_blocks_are_averaged_first(
    source: tuple[int, int], size: tuple[int, int]
) -> None:
    """Shrinking by k or more along an axis: k-pixel blocks are averaged (Pillow's
    ``Image.reduce``, the last block of what is left over too), then torchvision's
    antialiased bilinear takes the rest, a factor under two. The plain antialiased
    bilinear differs from it: the measured difference is stated."""
    import torch

    pixels = np.random.default_rng(sum(source)).random(source).astype(np.float32)
    spec = PreprocessSpec(input_size=size, channels=1, mean=(0.0,), std=(1.0,))
    got = preprocess_image(Image.fromarray((pixels * 255).round().astype(np.uint8)), spec)[0]
    unit = (pixels * 255).round().astype(np.float32) / 255.0
    factors = (max(1, source[0] // size[0]), max(1, source[1] // size[1]))
    blocks = torch.nn.functional.avg_pool2d(torch.from_numpy(unit)[None, None], factors, ceil_mode=True)[0, 0]
    expected = torchvision_resize(blocks.numpy(), size)
    assert np.abs(got - expected).max() < 1e-5


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
