"""Labelled digit images for the example model's tests: scikit-learn's bundled 8x8 digits
(nothing is downloaded), scaled to 16x16 gray images."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

#: Images before this index build the centroid file; the rest are never seen by it.
TRAINING_IMAGES = 1200


def digit_image(pixels: np.ndarray, inverted: bool = False) -> Image.Image:
    """One scikit-learn digit (values 0..16) as a 16x16 gray image; ``inverted`` swaps ink and paper."""
    gray = (pixels * (255.0 / 16.0)).round().astype(np.uint8)
    if inverted:
        gray = 255 - gray
    return Image.fromarray(gray, mode="L").resize((16, 16), Image.Resampling.NEAREST)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
