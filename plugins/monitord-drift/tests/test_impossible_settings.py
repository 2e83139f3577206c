"""Settings that can never raise an alarm are refused when the detector is built.

Such a detector would run forever and report ``ok`` whatever the data: the daemon's
start-up check builds every configured detector without a reference, so the refusal
comes before the model loads, naming the parameter, its value and the smallest value
that can alarm.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from monitord.settings import DetectorSpec
from monitord_drift.base import build_detector
from monitord_drift.hddm_w import HDDMW
from monitord_drift.iks import IncrementalKS


def iks_threshold(alpha: float, n: int, m: int) -> float:
    return math.sqrt(-0.5 * math.log(alpha / 2.0)) * math.sqrt((n + m) / (n * m))


def test_iks_refuses_a_window_too_small_to_ever_alarm() -> None:
    # alpha 1e-5 (the default set's), reference 500: a window of 6 puts the threshold
    # above 1, which the KS statistic never exceeds; 7 is the smallest that can alarm.
    assert iks_threshold(1e-5, 500, 6) >= 1.0 > iks_threshold(1e-5, 500, 7)
    with pytest.raises(ValueError) as refused:
        IncrementalKS(window=6, alpha=1e-5, reference_size=500)
    message = str(refused.value)
    assert "never" in message and "window = 6" in message and "window of at least 7" in message
    IncrementalKS(window=7, alpha=1e-5, reference_size=500)  # accepted


def test_iks_refuses_a_stream_reference_too_small_to_ever_alarm() -> None:
    assert iks_threshold(1e-3, 3, 500) >= 1.0 > iks_threshold(1e-3, 4, 500)
    with pytest.raises(ValueError) as refused:
        IncrementalKS(window=500, alpha=1e-3, reference_size=3)
    message = str(refused.value)
    assert "reference_size = 3" in message and "reference_size of at least 4" in message
    IncrementalKS(window=500, alpha=1e-3, reference_size=4)


def test_iks_names_alpha_when_no_window_would_do() -> None:
    # c(1e-5)^2 = 6.1: with a reference of 6 values no window, however long, can alarm.
    with pytest.raises(ValueError) as refused:
        IncrementalKS(window=500, alpha=1e-5, reference_size=6)
    message = str(refused.value)
    bound = 2 * math.exp(-2 * 6 * 500 / 506)
    assert "alpha above" in message and f"{bound:.3g}" in message
    assert "window of at least" not in message
    IncrementalKS(window=500, alpha=bound * 1.01, reference_size=6)


def test_iks_checks_a_given_reference_too() -> None:
    # The reference_size allows alarms, but the model's saved reference is shorter.
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError) as refused:
        IncrementalKS(window=500, alpha=1e-3, reference_size=500, reference=rng.normal(size=3))
    message = str(refused.value)
    assert "reference of 3 values" in message and "reference of at least 4 values" in message
    IncrementalKS(window=500, alpha=1e-3, reference_size=500, reference=rng.normal(size=4))


def test_build_detector_names_the_settings_entry() -> None:
    spec = DetectorSpec(type="iks", signal="entropy", window=3)
    with pytest.raises(ValueError, match=r"detector 'iks_entropy' \(type iks\): .*window = 3"):
        build_detector(IncrementalKS, spec, None)


def test_hddm_w_refuses_a_lambda_so_large_that_the_bound_stays_above_one() -> None:
    # The EWMAs' squared weights never fall below lambda / (2 - lambda); with ln(1/0.001)
    # = 6.9 the McDiarmid bound then stays above 1 for lambda >= 2 / (6.9 + 1) = 0.253,
    # and two averages of values in [0, 1] never differ by more than 1.
    with pytest.raises(ValueError) as refused:
        HDDMW(lambda_=0.3)
    message = str(refused.value)
    assert "lambda_ = 0.3" in message and "never" in message and "below 0.253" in message
    assert "drift_confidence above" in message
    HDDMW(lambda_=0.25)


def test_hddm_w_refusal_matches_what_the_detector_can_reach() -> None:
    # The largest change there can be: errors at 0 for a long stretch, then all 1.
    values = np.concatenate([np.zeros(2000), np.ones(300)])
    # lambda 0.25 is accepted at drift_confidence 0.001, and does alarm.
    assert any(event.level == "drift" for event in HDDMW(lambda_=0.25).update(values))
    # lambda 0.3 is accepted at drift_confidence 0.01 (a lower threshold). Its statistic,
    # which does not depend on the confidence, stays below sqrt((2 - lambda) / lambda),
    # itself below the threshold at 0.001.
    detector = HDDMW(lambda_=0.3, drift_confidence=0.01, warning_confidence=0.02, min_samples=1)
    highest = 0.0
    for value in values:
        detector.update([value])
        highest = max(highest, detector.state.statistic)
    assert 0.0 < highest < math.sqrt((2 - 0.3) / 0.3) < math.sqrt(math.log(1 / 0.001))
