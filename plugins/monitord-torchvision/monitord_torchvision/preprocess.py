"""Decoded image → normalised input array, the one path shared by training and serving.

Training builds its tensors by calling ``preprocess_image`` on decoded PNGs, exactly as
the daemon does on incoming images, so that what the model learnt and what it is shown
cannot drift apart through a second, subtly different implementation.

Only numpy and Pillow are used here, never torch: the daemon calls this from several
decode threads at once, and the function keeps no state between calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

#: ITU-R 601-2 luma weights, the ones Pillow uses for RGB → L.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_TO_RGB_MODES = {"CMYK", "YCbCr", "HSV", "LAB", "RGBX"}
#: The resampling filters a spec may name, as Pillow spells them.
_PILLOW_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}

Interpolation = Literal["bilinear", "bicubic"]


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model expects its input: size (height, width), channels and normalisation.

    ``resize_size`` None resizes the whole image to ``input_size``. An int resizes it so
    that its shorter side has that many pixels, keeping the aspect ratio, and then takes
    the centre ``input_size`` crop: what torchvision's ImageNet weights were trained with
    (``weights.transforms()``: resize 256, crop 224).
    """

    input_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_size: int | None = None
    interpolation: Interpolation = "bilinear"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")
        if min(self.input_size) <= 0 or min(self.std) <= 0:
            raise ValueError("input_size and std must be positive")
        if self.interpolation not in _PILLOW_FILTERS:
            raise ValueError(
                f"interpolation must be one of {', '.join(_PILLOW_FILTERS)}, not {self.interpolation!r}"
            )
        if self.resize_size is not None and self.resize_size < max(self.input_size):
            # torchvision would pad the crop with black; no trained transform does that.
            raise ValueError(
                f"resize_size {self.resize_size} is smaller than input_size "
                f"{list(self.input_size)}: the centre crop would reach past the resized image; "
                "use a resize_size at least the larger side of input_size"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """The (C, H, W) shape of one preprocessed image."""
        return (self.channels, *self.input_size)

    def resized_size(self, source: tuple[int, int]) -> tuple[int, int]:
        """(height, width) a ``source``-sized image is resized to before the crop.

        With ``resize_size``, the shorter side becomes ``resize_size`` and the longer one
        is scaled alike and truncated, as ``torchvision.transforms.functional.resize(img,
        resize_size)`` computes it.
        """
        if self.resize_size is None:
            return self.input_size
        height, width = source
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize_size * long / short)
        return (new_long, self.resize_size) if width <= height else (self.resize_size, new_long)

    def block_factors_for(self, source: tuple[int, int]) -> tuple[int, int]:
        """Whole-block averaging before the resize of a ``source``-sized image: the
        ``block_factors`` rule without ``resize_size``; none with it.

        torchvision's transforms resize in one antialiased step, and averaging blocks first
        is a different filter: on a 2400x1800 image with sharp edges it moved inputs by up
        to 1.4 (0.09 on average) from ``weights.transforms()``, against 0.017 without.
        """
        if self.resize_size is not None:
            return (1, 1)
        return block_factors(source, self.input_size)

    def crop_origin(self, resized: tuple[int, int]) -> tuple[int, int]:
        """(top, left) of the centre ``input_size`` crop of a ``resized`` image, rounded
        as torchvision's ``center_crop`` rounds it."""
        return (
            int(round((resized[0] - self.input_size[0]) / 2.0)),
            int(round((resized[1] - self.input_size[1]) / 2.0)),
        )


def preprocess_image(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """One model input (C, H, W), float32, normalised with the spec's mean and std.

    Pixels are first brought to [0, 1]: 8-bit modes divide by 255, 16-bit ones by
    65535 (so a 16-bit copy of an 8-bit image gives the same input), transparency is
    composited on black, and colour converts to luma or gray repeats over RGB as the
    model needs. Then the image is resized to ``input_size`` (see ``block_factors``) or,
    with ``resize_size``, to that shorter side followed by the centre crop.

    Raises ``ValueError`` saying why for anything that is not a usable image.
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a decoded PIL image, got {type(image).__name__}")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ValueError(f"image has no pixels (size {width}x{height})")
    try:
        pixels = _unit_pixels(image)
    except OSError as error:
        raise ValueError(f"image data cannot be decoded ({error})") from None
    pixels = _match_channels(pixels, spec.channels)
    resized = spec.resized_size(pixels.shape[:2])
    factors = spec.block_factors_for(pixels.shape[:2])
    pixels = _resize(pixels, resized, factors, spec.interpolation)
    if resized != spec.input_size:
        top, left = spec.crop_origin(resized)
        pixels = pixels[top : top + spec.input_size[0], left : left + spec.input_size[1]]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    normalised = (pixels - mean) / std
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


def _unit_pixels(image: Image.Image) -> np.ndarray:
    """(H, W, 1 or 3) float32 in [0, 1], alpha already composited on black."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # Pillow reads 16-bit PNG/TIFF gray as I;16 (older versions: I, 32-bit ints
        # holding 16-bit values); both are scaled from the 16-bit range.
        values = np.asarray(image).astype(np.float32)
        return (np.clip(values, 0, 65535) / 65535.0)[:, :, None]
    if mode == "1":
        image = image.convert("L")
    elif mode in ("P", "PA", "RGBa", "La"):
        # Palette images may mark a colour transparent; premultiplied modes are rare
        # enough that going through plain RGBA is the simplest correct route.
        image = image.convert("RGBA")
    elif mode in ("L", "RGB") and image.info.get("transparency") is not None:
        image = image.convert("LA" if mode == "L" else "RGBA")
    elif mode in _TO_RGB_MODES:
        try:
            image = image.convert("RGB")
        except ValueError:
            raise ValueError(f"images in {mode} mode cannot be converted to RGB") from None
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        raise ValueError(
            f"unsupported image mode {mode!r}; send 8- or 16-bit gray, RGB or RGBA images"
        )
    values = np.asarray(image, dtype=np.float32) / 255.0
    if values.ndim == 2:
        values = values[:, :, None]
    if image.mode in ("LA", "RGBA"):
        values = values[:, :, :-1] * values[:, :, -1:]
    return values


def _match_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    if pixels.shape[2] == channels:
        return pixels
    if channels == 1:
        return (pixels @ _LUMA)[:, :, None]
    return np.repeat(pixels, 3, axis=2)


def block_factors(source: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """Whole (height, width) factors by which a ``source``-sized image is block-averaged
    before the antialiased bilinear (or bicubic) resize to ``target`` takes the rest
    (under 2).

    Averaging whole blocks first makes a nearest-neighbour enlargement by a whole factor
    (a 32x32 copy of an 8x8 digit) come back exactly as it was; antialiased bilinear alone
    mixes each block with its neighbours, and the model's signals see a blurred image.
    Both the CPU path (Pillow) and the device path (torch) follow this rule.
    """
    return (max(1, source[0] // target[0]), max(1, source[1] // target[1]))


def _resize(
    pixels: np.ndarray,
    size: tuple[int, int],
    factors: tuple[int, int],
    interpolation: Interpolation,
) -> np.ndarray:
    """Area averaging over whole blocks of ``factors`` (``Image.reduce``), then Pillow's bilinear or
    bicubic filter, which antialiases as torchvision's ``resize(antialias=True)`` does; in
    float, one channel at a time (Pillow's F mode is per channel).

    Bicubic overshoots at edges; the result is clipped to [0, 1], as resizing the 8-bit
    image (what ``weights.transforms()`` does to a PIL image in training) clips it.
    """
    height, width = size
    if pixels.shape[:2] == (height, width):
        return pixels
    factor_y, factor_x = factors
    planes = []
    for c in range(pixels.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(pixels[:, :, c], dtype=np.float32))
        if factor_x > 1 or factor_y > 1:
            plane = plane.reduce((factor_x, factor_y))
        if plane.size != (width, height):
            plane = plane.resize((width, height), _PILLOW_FILTERS[interpolation])
        planes.append(np.asarray(plane))
    resized = np.stack(planes, axis=2)
    return np.clip(resized, 0.0, 1.0, out=resized) if interpolation == "bicubic" else resized
