from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from monitord_torchvision.digits import (
    DIGIT_CLASS_NAMES,
    digit_image,
    digit_png_bytes,
    digits_split,
    digits_to_uint8,
    held_out_digits,
    training_digits,
)


def test_split_is_stratified_fixed_and_covers_the_dataset() -> None:
    split = digits_split()
    assert split.train_images.shape == (1437, 8, 8)
    assert split.held_out_images.shape == (360, 8, 8)
    assert split.train_labels.shape == (1437,) and split.held_out_labels.shape == (360,)
    all_labels = np.concatenate([split.train_labels, split.held_out_labels])
    counts = np.bincount(all_labels, minlength=10)
    held_counts = np.bincount(split.held_out_labels, minlength=10)
    # Stratified: every class holds out ~20% of its images.
    assert np.all(np.abs(held_counts - 0.2 * counts) <= 1)
    again = digits_split()
    assert np.array_equal(split.held_out_images, again.held_out_images)
    assert np.array_equal(split.train_labels, again.train_labels)


def test_helpers_return_uint8_images_and_independent_copies() -> None:
    images, labels = held_out_digits()
    assert images.dtype == np.uint8 and images.max() == 255 and images.min() == 0
    assert labels.dtype.kind == "i" and set(labels.tolist()) == set(range(10))
    images[:] = 0
    assert held_out_digits()[0].max() == 255
    train_images, train_labels = training_digits()
    assert np.array_equal(train_images, digits_split().train_images)
    assert len(DIGIT_CLASS_NAMES) == 10


def test_scaling_maps_0_16_onto_0_255() -> None:
    assert digits_to_uint8(np.array([0, 8, 16])).tolist() == [0, 128, 255]


def test_png_round_trip_is_lossless_8_bit_gray() -> None:
    images, _ = held_out_digits()
    decoded = Image.open(io.BytesIO(digit_png_bytes(images[0])))
    assert decoded.format == "PNG" and decoded.mode == "L" and decoded.size == (8, 8)
    assert np.array_equal(np.asarray(decoded), images[0])


def test_digit_image_rejects_unscaled_arrays() -> None:
    with pytest.raises(ValueError, match="uint8"):
        digit_image(np.zeros((8, 8), dtype=np.float64))
