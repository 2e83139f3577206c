"""class_mix: the statistic against SciPy, calibration, power on label shift, quiet on clean
streams, batching, snapshots, bad input."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monitord.reference_cache import ReferenceCache, using
from monitord.settings import DetectorSpec
from scipy.stats import chi2, chisquare
from streams import run_in_pieces

from monitord_drift.base import SampleError, build_detector
from monitord_drift.class_mix import ClassMix, smoothed_proportions
from monitord_drift.plugin import detector_class

CLASSES = 10
#: The digits model's reference: 360 held-out predictions.
REFERENCE_SIZE = 360


def class_proportions(seed: int) -> np.ndarray:
    """Ten roughly balanced classes (each 8-12 %), different per seed."""
    weights = 1.0 + 0.2 * np.random.default_rng(1000 + seed).uniform(-1.0, 1.0, CLASSES)
    return weights / weights.sum()


def predictions(rng: np.random.Generator, proportions: np.ndarray, size: int) -> np.ndarray:
    return rng.choice(len(proportions), size=size, p=proportions).astype(np.float64)


def only_first_half(proportions: np.ndarray) -> np.ndarray:
    shifted = proportions.copy()
    shifted[CLASSES // 2 :] = 0.0
    return shifted / shifted.sum()


# -- the statistic ---------------------------------------------------------------------------


def test_statistic_is_pearsons_chi_square_against_the_smoothed_reference() -> None:
    rng = np.random.default_rng(0)
    reference = predictions(rng, np.array([0.5, 0.3, 0.2, 0.0]), 80)  # class 3 never seen
    stream = np.concatenate([predictions(rng, np.array([0.4, 0.3, 0.2, 0.1]), 60), [7.0, 3.0]])
    detector = ClassMix(window=30, reference=reference, calibration_windows=100_000)
    classes, counts = np.unique(reference, return_counts=True)
    expected = 30 * smoothed_proportions(np.append(counts, 0), 0.5)
    for t, value in enumerate(stream):
        detector.update([value])
        if t < 29:
            assert math.isnan(detector.state.statistic) and not detector.state.ready
            continue
        window = stream[t - 29 : t + 1]
        observed = [np.sum(window == c) for c in classes] + [np.sum(~np.isin(window, classes))]
        oracle = chisquare(observed, expected, sum_check=False).statistic
        assert detector.state.statistic == pytest.approx(oracle, rel=1e-9, abs=1e-9)
    assert detector.state.level == "drift"  # classes 3 and 7, absent from the reference


def test_thresholds_allow_for_the_references_own_sampling_error() -> None:
    """A window differs from a 360-sample reference by the error of both: about (1 + w/n)·χ²."""
    rng = np.random.default_rng(1)
    detector = ClassMix(reference=predictions(rng, np.full(CLASSES, 0.1), REFERENCE_SIZE))
    textbook = chi2.isf(1e-4, CLASSES - 1)  # what a reference taken as the truth would give
    scale = detector.state.threshold / textbook
    assert 1.4 < scale < 3.0, scale  # 2.0 measured; (1 + 200/360) = 1.56 from the two errors alone


def test_thresholds_depend_on_the_class_counts_and_the_seed_only() -> None:
    rng = np.random.default_rng(2)
    reference = predictions(rng, class_proportions(2), REFERENCE_SIZE)
    first = ClassMix(reference=reference, calibration_windows=100_000).state
    shuffled = ClassMix(reference=rng.permutation(reference), calibration_windows=100_000).state
    other_seed = ClassMix(reference=reference, calibration_windows=100_000, seed=1).state
    assert (first.threshold, first.warning_threshold) == (shuffled.threshold, shuffled.warning_threshold)
    assert first.threshold != other_seed.threshold
    streamed = ClassMix(reference_size=REFERENCE_SIZE, calibration_windows=100_000)
    streamed.update(reference)
    assert (streamed.state.threshold, streamed.state.warning_threshold) == (first.threshold, first.warning_threshold)


def test_calibration_is_kept_in_the_reference_cache(tmp_path) -> None:
    reference = predictions(np.random.default_rng(3), class_proportions(3), REFERENCE_SIZE)
    with using(ReferenceCache([tmp_path], tmp_path)):
        first = ClassMix(reference=reference, calibration_windows=100_000).state
        stored = list(tmp_path.glob("class_mix-calibration-*.npy"))
        assert len(stored) == 1
        np.save(stored[0], np.full(100_000, 1e9))  # a planted entry is what a restart reads
        planted = ClassMix(reference=reference, calibration_windows=100_000).state
    assert planted.threshold == 1e9 and first.threshold < 100


def test_a_reference_of_one_class_alarms_on_any_other_class_only() -> None:
    detector = ClassMix(window=20, reference=np.full(360, 3.0), calibration_windows=10_000)
    assert detector.update(np.full(500, 3.0)) == [] and detector.state.level == "ok"
    # every clean window scores exactly the calibrated constant, which is not above it
    assert detector.state.statistic == detector.state.threshold == detector.state.warning_threshold
    assert [(event.index, event.level) for event in detector.update([3.0] * 19 + [4.0])] == [(19, "drift")]


# -- power and false alarms (defaults: window 200, alpha_drift 1e-4) ------------------------


def test_only_half_the_classes_is_caught_within_300_samples() -> None:
    """Observed: 20 of 20 streams, at 49-130 samples after the change."""
    caught = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        proportions = class_proportions(seed)
        detector = ClassMix(reference=predictions(rng, proportions, REFERENCE_SIZE))
        detector.update(predictions(rng, proportions, 400))  # the window full of clean predictions
        events = detector.update(predictions(rng, only_first_half(proportions), 300))
        caught += any(event.level == "drift" for event in events)
    assert caught >= 19


def test_clean_streams_stay_quiet() -> None:
    """20,000 clean samples per stream, from the distribution the reference was drawn from
    (a fresh sample, not the reference's rows), each against its own reference.

    Observed: 1 of 20 streams sees a drift (1 in 400,000 samples). The bound, 2, allows for
    the measured run length of about 700,000 clean samples between false drifts (0.6
    expected here); thresholds fitted with the reference taken as the truth (no
    resampling of it) alarmed in all 20 such streams, 181 times, when measured.
    """
    alarmed = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        proportions = class_proportions(seed)
        detector = ClassMix(reference=predictions(rng, proportions, REFERENCE_SIZE))
        events = detector.update(predictions(rng, proportions, 20_000))
        alarmed += any(event.level == "drift" for event in events)
    assert alarmed <= 2


# -- batching, snapshots, readiness ----------------------------------------------------------


def shifting_stream(seed: int, length: int, shift_at: int) -> np.ndarray:
    """Four balanced classes, then class 0 at 70 %, with three NaN holes."""
    rng = np.random.default_rng(seed)
    before = predictions(rng, np.full(4, 0.25), min(shift_at, length))
    after = predictions(rng, np.array([0.7, 0.1, 0.1, 0.1]), length - len(before))
    stream = np.concatenate([before, after])
    if length:
        stream[rng.integers(0, length, size=3)] = np.nan
    return stream


def build(window: int, reference_size: int, reference: np.ndarray | None) -> ClassMix:
    return ClassMix(window=window, reference_size=reference_size, alpha_warning=0.05, alpha_drift=0.01,
                    calibration_windows=1000, reference=reference)  # fmt: skip


PARAMS = dict(
    seed=st.integers(0, 2**16),
    window=st.integers(2, 12),
    reference_size=st.integers(2, 30),
    length=st.integers(0, 150),
    shift_at=st.integers(0, 150),
    given_reference=st.booleans(),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**PARAMS, cuts=st.lists(st.integers(0, 150), max_size=8))
def test_batch_update_equals_sample_by_sample(seed, window, reference_size, length, shift_at, given_reference, cuts):
    stream = shifting_stream(seed, length, shift_at)
    reference = predictions(np.random.default_rng(seed + 1), np.full(4, 0.25), 20) if given_reference else None
    batched, single = build(window, reference_size, reference), build(window, reference_size, reference)
    assert run_in_pieces(batched, stream, cuts) == run_in_pieces(single, stream, list(range(length)))
    assert batched.snapshot() == single.snapshot()
    assert vars(batched.state) == vars(single.state)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**PARAMS, stop=st.integers(0, 150))
def test_snapshot_restore_continue_equals_never_stopping(
    seed, window, reference_size, length, shift_at, given_reference, stop
):
    stream = shifting_stream(seed, length, shift_at)
    stop = min(stop, length)
    reference = predictions(np.random.default_rng(seed + 1), np.full(4, 0.25), 20) if given_reference else None
    never_stopped = build(window, reference_size, reference)
    expected = run_in_pieces(never_stopped, stream, [stop])
    first = build(window, reference_size, reference)
    run_in_pieces(first, stream[:stop], [])
    saved = json.loads(json.dumps(first.snapshot(), allow_nan=False))
    second = build(window, reference_size, reference)
    second.restore(saved)
    resumed = [(index + stop, *rest) for index, *rest in run_in_pieces(second, stream[stop:], [])]
    assert resumed == [event for event in expected if event[0] >= stop]
    assert second.snapshot() == never_stopped.snapshot()
    assert vars(second.state) == vars(never_stopped.state)


def test_restore_refuses_what_does_not_fit() -> None:
    rng = np.random.default_rng(4)
    reference = predictions(rng, np.full(4, 0.25), 40)
    detector = ClassMix(window=20, reference=reference, calibration_windows=1000, alpha_drift=0.01, alpha_warning=0.05)
    detector.update(predictions(rng, np.full(4, 0.25), 30))
    snapshot = detector.snapshot()
    with pytest.raises(ValueError, match="parameters"):
        ClassMix(window=21, reference=reference, calibration_windows=1000, alpha_drift=0.01, alpha_warning=0.05).restore(snapshot)
    with pytest.raises(ValueError, match="cannot restore"):
        ClassMix(window=20, calibration_windows=1000, alpha_drift=0.01, alpha_warning=0.05).restore({**snapshot, "type": "iks"})
    too_long = {**snapshot, "state": {"window": [0.0] * 21}}
    with pytest.raises(ValueError, match="21 window values.*at most 20"):
        ClassMix(window=20, calibration_windows=1000, alpha_drift=0.01, alpha_warning=0.05).restore(too_long)
    not_classes = {**snapshot, "state": {"window": [0.5] * 20}}
    with pytest.raises(ValueError, match="not class indices"):
        ClassMix(window=20, calibration_windows=1000, alpha_drift=0.01, alpha_warning=0.05).restore(not_classes)


def test_not_ready_until_the_window_is_full() -> None:
    detector = ClassMix(window=10, reference_size=20, calibration_windows=1000, alpha_drift=0.01, alpha_warning=0.05)
    assert (detector.state.ready, detector.state.samples_needed) == (False, 30)
    detector.update(np.arange(25) % 4)
    assert (detector.state.ready, detector.state.samples_needed, detector.state.reference_samples) == (False, 5, 20)
    detector.update([np.nan, 1.0, 2.0, 3.0, 0.0, np.inf, 1.0])  # non-finite values are skipped
    assert detector.state.ready and math.isfinite(detector.state.statistic) and detector.state.p_value is not None


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"window": 1}, "window must be an integer of at least 2, got 1"),
        ({"window": 20.0}, "window must be an integer"),
        ({"alpha_drift": 0.0}, "alpha_drift must be a number strictly between 0 and 1, got 0.0"),
        ({"alpha_warning": True}, "alpha_warning must be a number"),
        ({"alpha_drift": 0.01, "alpha_warning": 0.001}, r"alpha_drift \(0.01\) must be smaller than alpha_warning"),
        ({"smoothing": 0}, "smoothing must be a positive number"),
        ({"smoothing": math.inf}, "smoothing must be a positive number"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"calibration_windows": 1000}, r"calibration_windows must be an integer of at least 1 / alpha_drift = 10000"),
        ({"reference_size": 1}, "reference_size must be an integer of at least 2"),
    ],
)
def test_bad_parameters_are_refused(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClassMix(**params)


def test_values_that_are_not_class_indices_are_refused_with_their_position() -> None:
    detector = ClassMix(window=5, reference_size=10, calibration_windows=1000, alpha_drift=0.01, alpha_warning=0.05)
    for bad in (2.5, -1.0):
        with pytest.raises(SampleError, match=r"class indices.*got " + re.escape(repr(bad))) as refused:
            detector.update([np.nan, 1.0, 2.0, bad])
        assert refused.value.index == 3
    assert detector.samples == 0  # a refused batch is not consumed
    with pytest.raises(ValueError, match="reference must hold class indices.*0.25"):
        ClassMix(reference=[1.0, 0.25, 2.0])


def test_plugin_builds_class_mix_from_settings_with_the_models_reference() -> None:
    assert detector_class("class_mix") is ClassMix and ClassMix.signals_per_sample == 1
    spec = DetectorSpec(type="class_mix", signal="predicted_class", window=100, alpha_drift=1e-4)
    reference = predictions(np.random.default_rng(5), class_proportions(5), REFERENCE_SIZE)
    detector = build_detector(ClassMix, spec, reference)
    assert detector.state.reference_samples == REFERENCE_SIZE and detector.params()["window"] == 100
    with pytest.raises(ValueError, match=r"class_mix_predicted_class.*smoothing must be a positive number"):
        build_detector(ClassMix, DetectorSpec(type="class_mix", signal="predicted_class", smoothing=-1), reference)


def test_docstring_example_runs() -> None:
    import doctest

    from monitord_drift import class_mix

    result = doctest.testmod(class_mix)
    assert result.attempted >= 5 and result.failed == 0


def test_monitord_replay_runs_class_mix_on_recorded_predictions(tmp_path) -> None:
    """The detector through the plugin's entry point, as a user tries it on a file."""
    import subprocess
    import sys

    rng = np.random.default_rng(6)
    proportions = class_proportions(6)
    (tmp_path / "reference.txt").write_text("\n".join(map(str, predictions(rng, proportions, REFERENCE_SIZE))))
    stream = np.concatenate([predictions(rng, proportions, 1000), predictions(rng, only_first_half(proportions), 300)])
    (tmp_path / "classes.txt").write_text("\n".join(map(str, stream)) + "\n2.5\n")
    command = [sys.executable, "-m", "monitord", "replay", "-d", "class_mix", "--reference", "reference.txt"]
    result = subprocess.run([*command, "classes.txt"], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2 and "classes.txt, line 1301" in result.stderr and "class indices" in result.stderr
    (tmp_path / "classes.txt").write_text("\n".join(map(str, stream)) + "\n")
    result = subprocess.run([*command, "classes.txt"], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    *events, summary = [json.loads(line) for line in result.stdout.splitlines()]
    drifts = [event["index"] for event in events if event["level"] == "drift"]
    assert len(drifts) == 1 and 1000 <= drifts[0] < 1300
    assert summary["final"]["reference_samples"] == REFERENCE_SIZE and summary["final"]["level"] == "drift"
