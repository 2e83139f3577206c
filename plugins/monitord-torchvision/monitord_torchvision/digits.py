"""The scikit-learn digits, as the 8-bit images the daemon will actually receive.

The dataset ships inside scikit-learn, so the default model trains offline. Pixels are
0–16 there; images on disk are 0–255 (``round(value * 255 / 16)``, bright ink on a dark
background). The split is fixed (its own seed, independent of the training seed) so that
"held-out" means the same 360 images for training, for reference signals and for tests.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

#: Class names of the default model, in output order.
DIGIT_CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
#: Share of the dataset kept out of training.
HELD_OUT_FRACTION = 0.2
#: Seed of the train/held-out split; changing it changes every recorded accuracy.
SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsSplit:
    """Images (N, 8, 8) uint8 0–255 and integer labels (N,), for both halves."""

    train_images: np.ndarray
    train_labels: np.ndarray
    held_out_images: np.ndarray
    held_out_labels: np.ndarray


def digits_to_uint8(values: np.ndarray) -> np.ndarray:
    """scikit-learn's 0–16 pixel values → the 0–255 bytes written to image files."""
    return np.rint(np.asarray(values, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)


@lru_cache(maxsize=1)
def _split() -> DigitsSplit:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits_to_uint8(digits.images)
    labels = digits.target.astype(np.int64)
    train_x, held_x, train_y, held_y = train_test_split(
        images, labels, test_size=HELD_OUT_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    for array in (train_x, held_x, train_y, held_y):
        array.flags.writeable = False
    return DigitsSplit(train_x, train_y, held_x, held_y)


def digits_split() -> DigitsSplit:
    """The deterministic, stratified ~80/20 split (fresh copies, safe to modify)."""
    split = _split()
    return DigitsSplit(
        split.train_images.copy(),
        split.train_labels.copy(),
        split.held_out_images.copy(),
        split.held_out_labels.copy(),
    )


def training_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 8, 8), labels int64 (N,))`` the default model trains on."""
    split = _split()
    return split.train_images.copy(), split.train_labels.copy()


def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 8, 8), labels int64 (N,))`` never seen in training (N = 360)."""
    split = _split()
    return split.held_out_images.copy(), split.held_out_labels.copy()


def digit_image(pixels: np.ndarray) -> Image.Image:
    """An 8-bit grayscale PIL image of one digit array (uint8 0–255, shape (H, W))."""
    array = np.asarray(pixels)
    if array.ndim != 2 or array.dtype != np.uint8:
        raise ValueError(
            f"expected a 2-D uint8 array (0–255), got shape {array.shape} dtype {array.dtype}; "
            "convert scikit-learn's 0–16 values with digits_to_uint8 first"
        )
    return Image.fromarray(np.ascontiguousarray(array))


def digit_png_bytes(pixels: np.ndarray) -> bytes:
    """The PNG file (8-bit grayscale) the daemon would receive for one digit array."""
    buffer = io.BytesIO()
    digit_image(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> Image.Image:
    """A fully loaded PIL image from image file bytes, so training reads real PNGs too."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()
