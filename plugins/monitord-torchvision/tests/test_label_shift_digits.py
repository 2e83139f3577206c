"""class_mix on the real digits model: its saved reference of predicted classes against the
model's predictions on held-out digits, drawn by true digit (label shift, issue 18).

The reference is the model's own ``predicted_class`` signal (computed on these held-out
images), so the clean streams here are drawn from the reference's very population: the
false-alarm check is the easy half; tests/test_class_mix.py in monitord-drift measures the
run length with references that carry their own sampling error.
"""

from __future__ import annotations

import numpy as np
import pytest
from monitord_drift.class_mix import ClassMix

from monitord_torchvision.inference import TorchvisionModel

STREAMS = 20


@pytest.fixture(scope="module")
def predictions(digits_model: TorchvisionModel, held_out_inputs: tuple[np.ndarray, np.ndarray]):
    """(reference predicted classes, held-out labels, held-out predicted classes)."""
    inputs, labels = held_out_inputs
    predicted = np.asarray(digits_model.predict(inputs).class_index, dtype=np.float64)
    reference = np.asarray(digits_model.reference_signals["predicted_class"], dtype=np.float64)
    return reference, labels, predicted


def draw(
    labels: np.ndarray, predicted: np.ndarray, digits: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Predicted classes of held-out images whose true digit is among ``digits``."""
    rows = np.flatnonzero(np.isin(labels, digits))
    return predicted[rng.choice(rows, size=size)]


def test_the_digits_reference_is_ten_classes_of_predictions(predictions) -> None:
    reference, labels, predicted = predictions
    assert len(reference) == len(labels) == 360 and set(np.unique(reference)) == set(range(10))
    assert np.mean(predicted == labels) > 0.9  # the model's answers, not the labels


def test_only_digits_0_to_4_is_caught_within_300_images(predictions) -> None:
    """Observed: 20 of 20 streams, 70-116 images after the change."""
    reference, labels, predicted = predictions
    delays = []
    for seed in range(STREAMS):
        rng = np.random.default_rng(seed)
        detector = ClassMix(reference=reference)
        before = draw(labels, predicted, np.arange(10), 1000, rng)
        assert detector.update(before) == []
        events = detector.update(draw(labels, predicted, np.arange(5), 300, rng))
        drifts = [event.index + 1 for event in events if event.level == "drift"]
        delays.append(drifts[0] if drifts else None)
    assert None not in delays, delays


def test_twenty_thousand_clean_images_raise_no_drift(predictions) -> None:
    """Five streams of 20,000 clean images each, against the model's reference; observed: no drift."""
    reference, labels, predicted = predictions
    for seed in range(5):
        rng = np.random.default_rng(100 + seed)
        detector = ClassMix(reference=reference)
        events = detector.update(draw(labels, predicted, np.arange(10), 20_000, rng))
        assert [event for event in events if event.level == "drift"] == []
        assert detector.state.ert == 100_000 and detector.state.ready
