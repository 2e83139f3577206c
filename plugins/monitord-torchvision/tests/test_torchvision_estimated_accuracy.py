"""The estimated accuracy on the real digits model: the reference gives what it needs, and the
estimate tracks the true accuracy on mild corruptions (benchmarks/estimated_accuracy.py
measures all of them, cross-fitted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitord.monitor.estimated_accuracy import AccuracyEstimate, estimate_accuracy
from monitord.reference import read_reference
from monitord_torchvision.digits import decode_png, digit_png_bytes, held_out_digits
from monitord_torchvision.drifts import drift_image

#: Corruptions under which the model stays at 90 % or more (the issue's "≥ 80 %" group).
MILD = [("rotation", 15), ("noise", 33), ("noise", 67), ("blur", 0.33), ("blur", 0.67), ("contrast", 0.77),
        ("contrast", 0.53), ("brightness", 33), ("brightness", 67)]


def answers(model, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right or not, confidence) per image, through the daemon's PNG → preprocess path."""
    result = model.predict(np.stack([model.preprocess(decode_png(digit_png_bytes(image))) for image in images]))
    return result.class_index == labels, np.asarray(result.confidence)


def test_the_estimate_needs_only_the_references_accuracy_and_confidences(artifact_dir: Path) -> None:
    reference = read_reference(artifact_dir)
    estimate = AccuracyEstimate.from_reference(reference.summary["accuracy"], reference.signals["confidence"], 10)
    assert estimate.reference_accuracy == reference.summary["accuracy"] == pytest.approx(0.983, abs=0.01)
    assert estimate.reference_confidence == pytest.approx(np.mean(reference.signals["confidence"]))
    with pytest.raises(ValueError, match="no accuracy.*monitord reference DIR"):
        AccuracyEstimate.from_reference(None, reference.signals["confidence"], 10)


def test_the_estimate_tracks_the_true_accuracy_on_mild_corruptions(digits_model, artifact_dir: Path) -> None:
    reference = read_reference(artifact_dir)
    images, labels = held_out_digits()
    errors, estimates = {}, {}
    for index, (kind, amount) in enumerate(MILD):
        rng = np.random.default_rng(index)
        correct, confidence = answers(digits_model, np.stack([drift_image(image, kind, amount, 1.0, rng)
                                                              for image in images]), labels)
        estimate = estimate_accuracy(reference.summary["accuracy"], reference.signals["confidence"], confidence)
        errors[f"{kind} {amount}"] = abs(estimate - correct.mean()) * 100
        estimates[f"{kind} {amount}"] = estimate
    # Issue 18's goal: within 3 points on average where the true accuracy stays >= 80 %.
    assert np.mean(list(errors.values())) <= 3.0, errors
    assert max(errors.values()) <= 5.0, errors
    # ... and it moves with the accuracy, not just stays near the reference's: rotation by 15°
    # costs the model 6 points.
    assert estimates["rotation 15"] < reference.summary["accuracy"] - 0.02, estimates
