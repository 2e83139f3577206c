"""class_mix: the χ² against SciPy, the CUSUMs against their definition, calibration to an
ERT, power on label shift, quiet on clean streams, batching, snapshots, bad input."""

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
from scipy.stats import bernoulli, chisquare
from streams import run_in_pieces

from monitord_drift.base import SampleError, build_detector
from monitord_drift.class_mix import ClassMix, smoothed_proportions
from monitord_drift.ert import run_length
from monitord_drift.plugin import detector_class

CLASSES = 10
#: The digits model's reference: 360 held-out predictions.
REFERENCE_SIZE = 360
#: A small ERT keeps the calibration cheap where the rates are not under test.
QUICK = {"ert": 200, "calibration_streams": 100}


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


# -- the statistics --------------------------------------------------------------------------


def test_chi_square_is_pearsons_against_the_smoothed_reference() -> None:
    rng = np.random.default_rng(0)
    reference = predictions(rng, np.array([0.5, 0.3, 0.2, 0.0]), 80)  # class 3 never seen
    stream = np.concatenate([predictions(rng, np.array([0.4, 0.3, 0.2, 0.1]), 60), [7.0, 3.0]])
    detector = ClassMix(window=30, reference=reference, **QUICK)
    classes, counts = np.unique(reference, return_counts=True)
    expected = 30 * smoothed_proportions(np.append(counts, 0), 0.5)
    for t, value in enumerate(stream):
        detector.update([value])
        if t < 29:
            assert math.isnan(detector.statistics["chi_square"]) and not detector.state.ready
            continue
        window = stream[t - 29 : t + 1]
        observed = [np.sum(window == c) for c in classes] + [np.sum(~np.isin(window, classes))]
        oracle = chisquare(observed, expected, sum_check=False).statistic
        assert detector.statistics["chi_square"] == pytest.approx(oracle, rel=1e-9, abs=1e-9)
    assert detector.state.level == "drift"  # classes 3 and 7, absent from the reference


def test_cusums_are_pages_on_each_class_share_rising_and_falling_by_the_odds_factor() -> None:
    """The largest of the 2K CUSUMs S ← max(0, S + log f₁(x)/f₀(x)), with Bernoulli f₀ the
    bin's smoothed reference share and f₁ its odds times or over ``shift_factor``."""
    rng = np.random.default_rng(1)
    reference = predictions(rng, np.array([0.6, 0.3, 0.1]), 50)
    stream = np.concatenate([predictions(rng, np.array([0.6, 0.3, 0.1]), 40),
                             predictions(rng, np.array([0.2, 0.2, 0.5, 0.1]), 60)])  # fmt: skip
    detector = ClassMix(window=10, shift_factor=3.0, reference=reference, **QUICK)
    classes, counts = np.unique(reference, return_counts=True)
    shares = smoothed_proportions(np.append(counts, 0), 0.5)
    odds = shares / (1 - shares)
    alternatives = [odds * 3 / (1 + odds * 3), odds / 3 / (1 + odds / 3)]
    sums = np.zeros((2, len(shares)))
    for t, value in enumerate(stream):
        detector.update([value])
        bin_ = int(np.searchsorted(classes, value)) if value in classes else len(classes)
        hit = (np.arange(len(shares)) == bin_).astype(int)
        for direction, alternative in enumerate(alternatives):
            ratio = bernoulli.logpmf(hit, alternative) - bernoulli.logpmf(hit, shares)
            sums[direction] = np.maximum(0.0, sums[direction] + ratio)
        if t >= 9:
            assert detector.statistics["cusum"] == pytest.approx(sums.max(), rel=1e-9, abs=1e-12)
    assert detector.statistics["cusum"] > detector.thresholds["cusum_drift"]  # class 2 at 50 %, class 3 new


def test_state_shows_the_statistic_nearer_its_drift_threshold() -> None:
    rng = np.random.default_rng(2)
    detector = ClassMix(reference=predictions(rng, class_proportions(2), REFERENCE_SIZE), ert=2000)
    for _ in range(10):
        detector.update(predictions(rng, class_proportions(2), 50))
        statistics, thresholds, state = detector.statistics, detector.thresholds, detector.state
        nearness = {name: statistics[name] / thresholds[f"{name}_drift"] for name in statistics}
        name = "cusum" if nearness["cusum"] > nearness["chi_square"] else "chi_square"
        assert (state.statistic, state.threshold, state.warning_threshold) == (
            statistics[name], thresholds[f"{name}_drift"], thresholds[f"{name}_warning"]
        )
        assert state.p_value is None


def test_a_lasting_rise_of_one_class_is_caught_by_its_cusum_where_a_short_window_is_blind() -> None:
    """Class 0 from 10 % to 30 %: a window of 10 holds too few predictions for its χ² to be sure
    (its threshold allows for that); the class's CUSUM adds up the evidence beyond it.
    Observed: the CUSUM flags first in 9 of 10 streams, 43-113 samples after the change."""
    proportions = np.full(CLASSES, 0.1)
    risen = np.full(CLASSES, 0.7 / 9)
    risen[0] = 0.3
    by_cusum = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        detector = ClassMix(window=10, reference=predictions(rng, proportions, REFERENCE_SIZE), ert=10_000)
        assert [event for event in detector.update(predictions(rng, proportions, 300)) if event.level == "drift"] == []
        drifts = [event for event in detector.update(predictions(rng, risen, 1000)) if event.level == "drift"]
        assert drifts and drifts[0].statistic > drifts[0].threshold
        by_cusum += drifts[0].threshold == detector.thresholds["cusum_drift"]
    assert by_cusum >= 8


def test_a_reference_of_one_class_alarms_on_any_other_class() -> None:
    detector = ClassMix(window=20, reference=np.full(360, 3.0))
    assert detector.update(np.full(500, 3.0)) == [] and detector.state.level == "ok"
    # every clean window scores exactly the calibrated constant, which is not above it
    assert detector.statistics["chi_square"] == detector.thresholds["chi_square_drift"]
    assert [(event.index, event.level) for event in detector.update([3.0] * 19 + [4.0])] == [(19, "drift")]


# -- calibration -----------------------------------------------------------------------------


def test_thresholds_depend_on_the_class_counts_and_the_seed_only() -> None:
    rng = np.random.default_rng(4)
    reference = predictions(rng, class_proportions(2), REFERENCE_SIZE)
    first = ClassMix(reference=reference, ert=2000).thresholds
    shuffled = ClassMix(reference=rng.permutation(reference), ert=2000).thresholds
    other_seed = ClassMix(reference=reference, ert=2000, seed=1).thresholds
    assert first == shuffled and first != other_seed
    streamed = ClassMix(reference_size=REFERENCE_SIZE, ert=2000)
    streamed.update(reference)
    assert streamed.thresholds == first


def test_a_longer_ert_raises_every_threshold() -> None:
    reference = predictions(np.random.default_rng(5), class_proportions(5), REFERENCE_SIZE)
    short, long = ClassMix(reference=reference, ert=2000).thresholds, ClassMix(reference=reference).thresholds
    assert all(long[name] > short[name] for name in short), (short, long)
    assert all(short[f"{name}_warning"] < short[f"{name}_drift"] for name in ("chi_square", "cusum"))


def test_calibration_is_kept_in_the_reference_cache(tmp_path) -> None:
    reference = predictions(np.random.default_rng(6), class_proportions(3), REFERENCE_SIZE)
    with using(ReferenceCache([tmp_path], tmp_path)):
        first = ClassMix(reference=reference, ert=2000).thresholds
        stored = list(tmp_path.glob("class_mix-calibration-*.npy"))
        assert len(stored) == 1
        np.save(stored[0], np.full(np.load(stored[0]).shape, 1e9))  # a planted entry is what a restart reads
        planted = ClassMix(reference=reference, ert=2000).thresholds
    assert set(planted.values()) == {1e9} and first["chi_square_drift"] < 100


def test_clean_run_length_is_the_ert_within_sampling_error() -> None:
    """ert = 2,000 on clean streams, each against its own reference of 360 drawn from the
    stream's population (not the stream's rows): the reference's own error included, as
    a deployment sees it. Drift episodes are the false alarms.

    Observed: 194 drifts in 792,040 samples, one per 4,080 (3,550-4,720): conservative,
    because the warning threshold (ert / 10) is low enough to hold a drift episode through
    what would be several alarms. With ert = 10,000: one per 8,430 (6,890-10,430).
    """
    alarms = samples = 0
    for seed in range(40):
        rng = np.random.default_rng(200 + seed)
        proportions = class_proportions(seed)
        detector = ClassMix(reference=predictions(rng, proportions, REFERENCE_SIZE), ert=2000)
        events = detector.update(predictions(rng, proportions, 20_000))
        alarms += sum(event.level == "drift" for event in events)
        samples += 20_000 - detector.window + 1  # evaluations: once the window is full
    estimate, low, high = run_length(alarms, samples)
    assert high >= 2000 and estimate <= 4 * 2000, (alarms, samples, estimate, low, high)


# -- power and false alarms with the defaults (window 200, ert 100,000) ---------------------


def test_only_half_the_classes_is_caught_within_300_samples() -> None:
    """Simulated predictions; observed: 20 of 20 streams, 39-121 samples after the change.
    tests/test_label_shift_digits.py in
    monitord-torchvision runs the same check on the digits model's predictions."""
    caught = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        proportions = class_proportions(seed)
        detector = ClassMix(reference=predictions(rng, proportions, REFERENCE_SIZE))
        detector.update(predictions(rng, proportions, 400))  # the window full of clean predictions
        events = detector.update(predictions(rng, only_first_half(proportions), 300))
        caught += any(event.level == "drift" for event in events)
    assert caught == 20


def test_clean_streams_stay_quiet() -> None:
    """20,000 clean samples per stream, from the distribution the reference was drawn from
    (a fresh sample, not the reference's rows), each against its own reference.

    At an ERT of 100,000, 4 false drifts are expected in these 400,000 samples if the
    calibration is exact; the bound allows for sampling error (P(Poisson(4) > 9) = 0.8 %).
    Observed: 3.
    """
    alarms = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        proportions = class_proportions(seed)
        detector = ClassMix(reference=predictions(rng, proportions, REFERENCE_SIZE))
        events = detector.update(predictions(rng, proportions, 20_000))
        alarms += sum(event.level == "drift" for event in events)
    assert alarms <= 9


def test_ert_is_reported_in_the_state() -> None:
    assert ClassMix().state.ert == 100_000
    detector = ClassMix(ert=2500, reference=predictions(np.random.default_rng(7), class_proportions(7), 100))
    assert detector.state.ert == 2500 and detector.params()["ert"] == 2500


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
    return ClassMix(window=window, reference_size=reference_size, reference=reference, **QUICK)


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
    detector = ClassMix(window=20, reference=reference, **QUICK)
    detector.update(predictions(rng, np.full(4, 0.25), 30))
    snapshot = detector.snapshot()
    with pytest.raises(ValueError, match="parameters"):
        ClassMix(window=21, reference=reference, **QUICK).restore(snapshot)
    with pytest.raises(ValueError, match="cannot restore"):
        ClassMix(window=20, **QUICK).restore({**snapshot, "type": "iks"})
    too_long = {**snapshot, "state": {"window": [0.0] * 21}}
    with pytest.raises(ValueError, match="21 window values.*at most 20"):
        ClassMix(window=20, **QUICK).restore(too_long)
    not_classes = {**snapshot, "state": {**snapshot["state"], "window": [0.5] * 20}}
    with pytest.raises(ValueError, match="not class indices"):
        ClassMix(window=20, **QUICK).restore(not_classes)
    for cusums in ([1.0] * 9, [-1.0] * 10):  # 5 bins: 4 classes and the unseen one
        wrong = {**snapshot, "state": {**snapshot["state"], "cusums": cusums}}
        with pytest.raises(ValueError, match=rf"{len(cusums)} CUSUM values.*needs 10"):
            ClassMix(window=20, reference=reference, **QUICK).restore(wrong)
    with pytest.raises(ValueError, match=r"version 1 cannot restore"):  # a snapshot from before the CUSUMs
        ClassMix(window=20, reference=reference, **QUICK).restore({**snapshot, "version": 1})


def test_not_ready_until_the_window_is_full() -> None:
    detector = ClassMix(window=10, reference_size=20, **QUICK)
    assert (detector.state.ready, detector.state.samples_needed) == (False, 30)
    detector.update(np.arange(25) % 4)
    assert (detector.state.ready, detector.state.samples_needed, detector.state.reference_samples) == (False, 5, 20)
    detector.update([np.nan, 1.0, 2.0, 3.0, 0.0, np.inf, 1.0])  # non-finite values are skipped
    assert detector.state.ready and math.isfinite(detector.state.statistic)


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"window": 1}, "window must be an integer of at least 2, got 1"),
        ({"window": 20.0}, "window must be an integer"),
        ({"ert": 5}, "ert must be a number of samples of at least 10"),
        ({"ert": 50}, "class_mix's ert must be at least 100 samples"),
        ({"ert": True}, "ert must be a number"),
        ({"shift_factor": 1.0}, "shift_factor must be a number above 1"),
        ({"shift_factor": math.nan}, "shift_factor must be a number above 1"),
        ({"smoothing": 0}, "smoothing must be a positive number"),
        ({"smoothing": math.inf}, "smoothing must be a positive number"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"calibration_streams": 50}, r"calibration_streams must be an integer of at least 56 for an ert of 100000"),
        ({"calibration_streams": 500.0}, r"calibration_streams must be an integer"),
        ({"reference_size": 1}, "reference_size must be an integer of at least 2"),
    ],
)
def test_bad_parameters_are_refused(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClassMix(**params)


def test_values_that_are_not_class_indices_are_refused_with_their_position() -> None:
    detector = ClassMix(window=5, reference_size=10, **QUICK)
    for bad in (2.5, -1.0):
        with pytest.raises(SampleError, match=r"class indices.*got " + re.escape(repr(bad))) as refused:
            detector.update([np.nan, 1.0, 2.0, bad])
        assert refused.value.index == 3
    assert detector.samples == 0  # a refused batch is not consumed
    with pytest.raises(ValueError, match="reference must hold class indices.*0.25"):
        ClassMix(reference=[1.0, 0.25, 2.0])


def test_plugin_builds_class_mix_from_settings_with_the_models_reference() -> None:
    assert detector_class("class_mix") is ClassMix and ClassMix.signals_per_sample == 1
    spec = DetectorSpec(type="class_mix", signal="predicted_class", window=100, ert=2000)
    reference = predictions(np.random.default_rng(5), class_proportions(5), REFERENCE_SIZE)
    detector = build_detector(ClassMix, spec, reference)
    assert detector.state.reference_samples == REFERENCE_SIZE and detector.params()["window"] == 100
    assert detector.state.ert == 2000
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
