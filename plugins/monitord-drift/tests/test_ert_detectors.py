"""``ert`` on pht, iks and bernoulli_cusum: the false-alarm rate a user sets is the one they get.

Each acceptance test runs a detector calibrated to a small ERT (3,000 samples, so that a few
hundred thousand clean samples give tens of false alarms) over clean streams from the
reference's population, and counts the drift events. The ERT is an average over the
references of that size one may have drawn as well as over streams (one reference of 500
values can give half or twice it), so the reference detectors run with 40-60 references
in turn; the Poisson interval below leaves that variation out. The
calibration holds if the observed run length is at least the ERT within sampling error (the
upper end of its 95 % Poisson interval reaches the ERT) and is real if it is not absurdly
conservative (the estimate at most 4 × the ERT; an uncalibrated default threshold gives
run lengths of hundreds of thousands here).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from monitord_drift.bernoulli_cusum import BernoulliCUSUM
from monitord_drift.ert import run_length
from monitord_drift.iks import IncrementalKS
from monitord_drift.pht import PageHinkley

ERT = 3_000


def false_alarms(detector, stream: np.ndarray) -> int:
    return sum(event.level == "drift" for event in detector.update(stream))


def assert_run_length_matches(alarms: int, samples: int) -> None:
    estimate, low, high = run_length(alarms, samples)
    found = f"{alarms} false alarms in {samples} clean samples: run length {estimate:.0f} ({low:.0f}-{high:.0f})"
    assert high >= ERT, found
    assert estimate <= 4 * ERT, f"only {alarms} false alarms in {samples} samples: run length {estimate:.0f}"


def test_pht_calibrated_to_an_ert_alarms_that_often_on_clean_data() -> None:
    rng = np.random.default_rng(11)
    alarms = samples = 0
    for _ in range(40):
        detector = PageHinkley(ert=ERT, reference=rng.normal(4.0, 2.0, 500))
        stream = rng.normal(4.0, 2.0, 9_000)
        alarms += false_alarms(detector, stream)
        samples += len(stream)
    assert_run_length_matches(alarms, samples)


def test_pht_threshold_follows_the_ert_and_the_direction() -> None:
    reference = np.random.default_rng(12).normal(5.0, 2.0, 500)
    short, long = PageHinkley(ert=1_000, reference=reference), PageHinkley(ert=100_000, reference=reference)
    one_sided = PageHinkley(ert=100_000, reference=reference, direction="up")
    assert short.state.threshold < long.state.threshold
    assert one_sided.state.threshold < long.state.threshold  # one side crosses less often than either of two
    assert long.state.warning_threshold < long.state.threshold and long.state.ert == 100_000.0


def test_iks_calibrated_to_an_ert_alarms_that_often_on_clean_data() -> None:
    rng = np.random.default_rng(13)
    alarms = samples = 0
    for _ in range(60):
        detector = IncrementalKS(ert=ERT, window=200, reference=rng.lognormal(0.0, 1.0, 300))
        stream = rng.lognormal(0.0, 1.0, 6_000)
        alarms += false_alarms(detector, stream)
        samples += len(stream)
    assert_run_length_matches(alarms, samples)


@pytest.mark.parametrize("rate", [0.015, 0.05])
def test_bernoulli_cusum_calibrated_to_an_ert_alarms_that_often_at_any_error_rate(rate: float) -> None:
    rng = np.random.default_rng(14)
    detector = BernoulliCUSUM(ert=ERT)
    stream = (rng.random(300_000) < rate).astype(float)
    assert_run_length_matches(false_alarms(detector, stream), len(stream))


def test_bernoulli_cusum_threshold_is_set_when_the_rate_is_learned() -> None:
    detector = BernoulliCUSUM(ert=10_000, min_samples=200)
    assert math.isnan(detector.state.threshold) and detector.state.ert == 10_000.0
    detector.update(np.r_[np.zeros(190), np.ones(9)])
    assert math.isnan(detector.state.threshold)  # 199 labels: the rate is not learned yet
    detector.update(np.ones(1))
    threshold = detector.state.threshold
    assert 0.0 < threshold < 20.0 and detector.state.warning_threshold < threshold
    lower = BernoulliCUSUM(ert=10_000, min_samples=200)
    lower.update(np.r_[np.zeros(198), np.ones(2)])
    # The threshold depends on the rate learned: at 1 % the statistic moves in larger jumps.
    assert lower.state.threshold != threshold


def test_bernoulli_cusum_snapshot_keeps_the_calibrated_threshold() -> None:
    detector = BernoulliCUSUM(ert=10_000, min_samples=200)
    detector.update((np.random.default_rng(1).random(700) < 0.05).astype(float))
    restored = BernoulliCUSUM(ert=10_000, min_samples=200)
    restored.restore(detector.snapshot())
    assert restored.state.threshold == detector.state.threshold
    assert restored.state.warning_threshold == detector.state.warning_threshold


@pytest.mark.parametrize("detector_type, raw", [
    (PageHinkley, {"threshold": 20.0}), (BernoulliCUSUM, {"threshold": 6.0}), (IncrementalKS, {"alpha": 0.001}),
])
def test_ert_and_a_raw_threshold_together_are_refused(detector_type, raw) -> None:
    with pytest.raises(ValueError, match="give either ert"):
        detector_type(ert=10_000, **raw)


@pytest.mark.parametrize("detector_type", [PageHinkley, BernoulliCUSUM, IncrementalKS])
def test_an_ert_out_of_reach_is_refused_with_the_largest_that_is_not(detector_type) -> None:
    with pytest.raises(ValueError, match="can calibrate an ert of at most"):
        detector_type(ert=1e9)
    with pytest.raises(ValueError, match="at least 10"):
        detector_type(ert=5)


def test_without_ert_the_raw_defaults_stand() -> None:
    assert PageHinkley().state.threshold == 20.0 and PageHinkley().state.ert is None
    assert BernoulliCUSUM().state.threshold == 6.0
    reference = np.random.default_rng(2).normal(size=500)
    alpha_threshold = math.sqrt(-0.5 * math.log(0.001 / 2)) * math.sqrt(2 / 500)
    assert IncrementalKS(reference=reference).state.threshold == pytest.approx(alpha_threshold)


def test_pht_on_a_small_lumpy_reference_says_what_to_change() -> None:
    # 100 confidences of an overconfident model: nearly all at 1, a few far below. A redrawn
    # copy without those few fits a scale they exceed at once, so no threshold gives the ERT.
    rng = np.random.default_rng(0)
    reference = np.where(rng.random(100) < 0.02, rng.uniform(0.4, 0.9, 100), 1 - rng.exponential(1e-4, 100))
    with pytest.raises(ValueError, match=r"reference of 100 values.*build the reference from more images"):
        PageHinkley(ert=100_000, reference=reference)
    bigger = np.where(rng.random(360) < 0.02, rng.uniform(0.4, 0.9, 360), 1 - rng.exponential(1e-4, 360))
    assert PageHinkley(ert=100_000, reference=bigger).state.threshold > 0
