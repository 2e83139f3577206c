"""The demo's drifts and scenario: exact pixel arithmetic, the schedule, and that every
default drift really moves the default model's signals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from monitord_torchvision.digits import decode_png, digit_png_bytes, held_out_digits
from monitord_torchvision.drifts import (
    DRIFT_KINDS,
    PIXEL_KINDS,
    DriftError,
    class_mix_share,
    drift_image,
    scaled_amount,
)
from monitord_torchvision.inference import TorchvisionModel
from monitord_torchvision.scenario import Scenario, demo_images


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return held_out_digits()


# -- drifts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PIXEL_KINDS)
def test_intensity_zero_changes_nothing_and_full_intensity_does(kind: str, digits) -> None:
    image = digits[0][3]
    unchanged = drift_image(image, kind, intensity=0.0, rng=np.random.default_rng(0))
    assert np.array_equal(unchanged, image) and unchanged is not image
    drifted = drift_image(image, kind, rng=np.random.default_rng(0))
    assert drifted.dtype == np.uint8 and drifted.shape == image.shape
    assert not np.array_equal(drifted, image)


def test_rotation_by_90_degrees_is_exact_and_counter_clockwise(digits) -> None:
    image = digits[0][0]
    assert np.array_equal(drift_image(image, "rotation", 90), np.rot90(image, 1))
    assert np.array_equal(drift_image(image, "rotation", 180), np.rot90(image, 2))
    # Half the intensity is half the angle.
    assert np.array_equal(drift_image(image, "rotation", 180, intensity=0.5), np.rot90(image, 1))


def test_noise_has_the_requested_spread_and_follows_the_seed() -> None:
    grey = np.full((64, 64), 128, dtype=np.uint8)
    noisy = drift_image(grey, "noise", 20.0, rng=np.random.default_rng(1)).astype(float)
    assert noisy.std() == pytest.approx(20.0, rel=0.08) and noisy.mean() == pytest.approx(128, abs=1.5)
    half = drift_image(grey, "noise", 20.0, intensity=0.5, rng=np.random.default_rng(1)).astype(float)
    assert half.std() == pytest.approx(10.0, rel=0.08)
    again = drift_image(grey, "noise", 20.0, rng=np.random.default_rng(1))
    assert np.array_equal(again, noisy.astype(np.uint8))
    assert not np.array_equal(drift_image(grey, "noise", 20.0, rng=np.random.default_rng(2)), again)


def test_blur_spreads_a_point_and_leaves_flat_areas_alone() -> None:
    flat = np.full((8, 8), 90, dtype=np.uint8)
    assert np.array_equal(drift_image(flat, "blur", 1.0), flat)
    point = np.zeros((9, 9), dtype=np.uint8)
    point[4, 4] = 255
    blurred = drift_image(point, "blur", 1.0).astype(int)
    assert blurred[4, 4] < 255 and blurred[4, 5] > 0 and blurred[3, 4] > 0
    assert blurred[4, 4] > blurred[4, 5] > blurred[4, 6]


def test_contrast_brightness_and_inversion_arithmetic() -> None:
    image = np.array([[0, 255], [100, 200]], dtype=np.uint8)
    assert drift_image(image, "contrast", 0.5).tolist() == [[64, 191], [114, 164]]
    # The ramp for a factor goes from 1 (no change), not from 0.
    assert scaled_amount("contrast", 0.0, 0.5) == 0.5
    assert drift_image(image, "contrast", 0.0, intensity=0.5).tolist() == [[64, 191], [114, 164]]
    assert drift_image(image, "brightness", 100).tolist() == [[100, 255], [200, 255]]
    assert drift_image(image, "brightness", -150).tolist() == [[0, 105], [0, 50]]
    assert drift_image(image, "invert", 1.0).tolist() == [[255, 0], [155, 55]]
    assert drift_image(image, "invert", 1.0, intensity=0.5).tolist() == [[128, 128], [128, 128]]


def test_class_mix_keeps_pixels_and_scales_its_share(digits) -> None:
    image = digits[0][5]
    assert np.array_equal(drift_image(image, "class-mix"), image)
    assert class_mix_share(0.8, 0.5) == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda i: drift_image(i, "fog"), "unknown drift 'fog'; choose one of rotation, noise"),
        (lambda i: drift_image(i, "noise", -1), "noise amount"),
        (lambda i: drift_image(i, "invert", 2.0), "between 0 and 1, got 2.0"),
        (lambda i: drift_image(i, "rotation", float("nan")), "finite"),
        (lambda i: drift_image(i, "rotation", intensity=1.5), "intensity must be between 0 and 1"),
        (lambda i: drift_image(i.astype(np.float32), "rotation"), "2-D uint8 image"),
    ],
)
def test_bad_drifts_say_what_is_wrong(call, message: str, digits) -> None:
    with pytest.raises(DriftError, match=message.replace("(", r"\(")):
        call(digits[0][0])


def test_every_default_drift_moves_the_default_models_signals(
    digits_model: TorchvisionModel, digits
) -> None:
    """The defaults must be visible to the detectors: measured, the weakest default moves
    the Kolmogorov-Smirnov distance of the confidence to about 0.6 (0.70 for rotation)."""
    images, labels = digits

    def confidence(batch: np.ndarray) -> np.ndarray:
        inputs = np.stack([digits_model.preprocess(decode_png(digit_png_bytes(i))) for i in batch])
        return digits_model.predict(inputs).confidence

    reference = confidence(images)
    rng = np.random.default_rng(0)
    for kind in PIXEL_KINDS:
        drifted = confidence(np.stack([drift_image(i, kind, rng=rng) for i in images]))
        distance = ks_2samp(reference, drifted).statistic
        assert distance > 0.5, f"{kind} {DRIFT_KINDS[kind].default_amount}: KS distance {distance:.2f}"
    mix = Scenario(kind="class-mix", clean=0, drifted=360)
    mixed = confidence(np.stack([image.pixels for image in demo_images(mix, images, labels)]))
    assert ks_2samp(reference, mixed).statistic > 0.15


# -- scenario ----------------------------------------------------------------------------------


def test_abrupt_scenario_cycles_the_held_out_digits_then_drifts_them_all(digits) -> None:
    images, labels = digits
    scenario = Scenario(kind="rotation", clean=400, drifted=100)
    stream = list(demo_images(scenario, images, labels))
    assert [image.seq for image in stream] == list(range(500))
    for image in stream:
        source = image.seq % len(images)
        assert image.label == labels[source]
        if image.seq < 400:
            assert image.intensity == 0 and np.array_equal(image.pixels, images[source])
        else:
            assert image.intensity == 1 and np.array_equal(image.pixels, np.rot90(images[source]))
    assert not stream[399].after_change and stream[400].after_change


def test_gradual_share_ramps_from_none_to_all(digits) -> None:
    scenario = Scenario(kind="invert", clean=100, drifted=1300, change="gradual", ramp=1000, seed=3)
    stream = list(demo_images(scenario, *digits))
    drifted = np.array([image.after_change for image in stream])
    assert not drifted[:100].any() and drifted[1100:].all()
    quarters = [drifted[100 + 250 * q : 100 + 250 * (q + 1)].mean() for q in range(4)]
    assert quarters == sorted(quarters)
    for quarter, share in enumerate(quarters):
        assert share == pytest.approx(0.125 + 0.25 * quarter, abs=0.08)
    assert {image.intensity for image in stream} == {0.0, 1.0}


def test_gradual_strength_ramps_every_image(digits) -> None:
    images, labels = digits
    scenario = Scenario(kind="rotation", amount=180, clean=10, drifted=20, change="gradual", ramp=4,
                        ramp_by="strength")
    stream = list(demo_images(scenario, images, labels))
    assert [image.intensity for image in stream[9:16]] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert np.array_equal(stream[11].pixels, np.rot90(images[11]))  # half of 180 degrees


def test_class_mix_shifts_the_labels(digits) -> None:
    images, labels = digits
    scenario = Scenario(kind="class-mix", classes=(3,), clean=200, drifted=200)
    stream = list(demo_images(scenario, images, labels))
    before = [image.label for image in stream[:200]]
    assert before == labels[:200].tolist()
    assert {image.label for image in stream[200:]} == {3}
    threes = images[labels == 3]
    assert np.array_equal(stream[200].pixels, threes[0]) and np.array_equal(stream[201].pixels, threes[1])


def test_a_scenario_replays_identically_from_its_seed(digits) -> None:
    def pixels(seed: int) -> np.ndarray:
        scenario = Scenario(kind="noise", clean=5, drifted=20, seed=seed)
        return np.stack([image.pixels for image in demo_images(scenario, *digits)])

    assert np.array_equal(pixels(4), pixels(4))
    assert not np.array_equal(pixels(4), pixels(5))


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        (Scenario(kind="class-mix", classes=(3, 12)), r"classes \[12\] do not exist"),
        (Scenario(kind="class-mix", classes=()), "at least one class"),
        (Scenario(change="gradual", ramp=0), "ramp of at least 1 image"),
        (Scenario(drifted=0), "at least 0 clean and 1 drifted"),
        (Scenario(kind="contrast", amount=-1), "contrast amount"),
    ],
)
def test_impossible_scenarios_are_refused(scenario: Scenario, message: str) -> None:
    with pytest.raises(DriftError, match=message):
        scenario.validate()


def test_describe_names_the_drift_and_the_ramp() -> None:
    assert Scenario().describe() == "rotation 90 (degrees, counter-clockwise), abrupt"
    gradual = Scenario(kind="blur", amount=1.5, change="gradual", ramp=200, ramp_by="strength")
    assert gradual.describe() == "blur 1.5 (Gaussian blur radius, pixels), gradual: the strength ramps up over 200 images"
    assert "towards classes 1,8" in Scenario(kind="class-mix").describe()
