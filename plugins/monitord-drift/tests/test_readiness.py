"""Readiness: every detector says when it cannot decide yet, and how many samples it still needs.

While a detector is not ready its statistic is NaN (``null`` in ``GET /v1/detectors``) and
its p-value None: a statistic on a handful of values, compared with the threshold of a
full test, says nothing and would be drawn far above its threshold.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from monitord_drift.ddm import DDM
from monitord_drift.eddm import EDDM
from monitord_drift.hddm_a import HDDMA
from monitord_drift.hddm_w import HDDMW
from monitord_drift.iks import IncrementalKS
from monitord_drift.nm_ddm import NMDDM
from monitord_drift.pht import PageHinkley


def assert_not_ready(detector, needed: int) -> None:
    state = detector.state
    assert (state.ready, state.samples_needed) == (False, needed)
    assert math.isnan(state.statistic) and state.p_value is None and state.level == "ok"
    assert math.isfinite(state.threshold)


def assert_ready(detector) -> None:
    state = detector.state
    assert (state.ready, state.samples_needed) == (True, 0)
    assert math.isfinite(state.statistic)


def test_iks_counts_down_the_stream_reference_then_the_window() -> None:
    rng = np.random.default_rng(0)
    detector = IncrementalKS(window=10, reference_size=20, alpha=0.05)
    assert_not_ready(detector, 30)
    detector.update(rng.normal(size=4))
    assert_not_ready(detector, 26)  # the case: 4 samples in, nothing to compare yet
    detector.update(rng.normal(size=16))
    assert detector.state.reference_samples == 20
    assert_not_ready(detector, 10)
    detector.update(rng.normal(size=9))
    assert_not_ready(detector, 1)
    detector.update(rng.normal(size=1))
    assert_ready(detector)
    assert detector.state.p_value is not None


def test_iks_with_a_given_reference_needs_only_its_window() -> None:
    rng = np.random.default_rng(1)
    detector = IncrementalKS(window=10, reference=rng.normal(size=50), reference_size=50, alpha=0.05)
    assert_not_ready(detector, 10)
    detector.update([np.nan, 0.1, np.inf])  # non-finite values carry no evidence: not counted
    assert_not_ready(detector, 9)
    detector.update(rng.normal(size=9))
    assert_ready(detector)


def test_iks_readiness_survives_a_snapshot() -> None:
    rng = np.random.default_rng(2)
    detector = IncrementalKS(window=10, reference_size=20)
    detector.update(rng.normal(size=25))
    restored = IncrementalKS(window=10, reference_size=20)
    restored.restore(detector.snapshot())
    assert_not_ready(restored, 5)


def test_nm_ddm_waits_for_its_first_evaluation() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(60, 2))
    detector = NMDDM(window=20, reference=reference, reference_size=60, calibration_windows=1000)
    assert_not_ready(detector, 20)
    detector.update(rng.normal(size=(19, 2)))
    assert_not_ready(detector, 1)
    detector.update(rng.normal(size=(1, 2)))
    assert_ready(detector)
    # A step longer than the window: the first evaluation comes after `step` samples.
    slow = NMDDM(window=20, step=35, reference=reference, reference_size=60, calibration_windows=1000)
    slow.update(rng.normal(size=(25, 2)))
    assert_not_ready(slow, 10)
    # Tumbling windows empty after each evaluation; the detector stays ready.
    tumbling = NMDDM(window=20, window_mode="tumbling", reference=reference, reference_size=60,
                     calibration_windows=1000)
    tumbling.update(rng.normal(size=(25, 2)))
    assert_ready(tumbling)


def test_nm_ddm_from_the_stream_and_after_adopting_a_new_reference() -> None:
    rng = np.random.default_rng(4)
    detector = NMDDM(window=20, reference_size=60, on_drift="adopt", calibration_windows=1000)
    assert_not_ready(detector, 80)
    detector.update(rng.normal(size=(70, 2)))
    assert_not_ready(detector, 10)
    detector.update(rng.normal(size=(10, 2)))
    assert_ready(detector)
    shifted = rng.normal(size=(200, 2)) + [8.0, 0.0]
    for row in shifted:  # one sample at a time, up to the drift
        if detector.update(row[None, :]) and detector.level == "drift":
            break
    # The window that drifted starts the new reference, 40 more samples complete it, then
    # a window of 20 must fill before the new reference is tested.
    assert detector.state.level == "drift"
    assert (detector.state.ready, detector.state.samples_needed) == (False, 60)
    detector.update(rng.normal(size=(45, 2)) + [8.0, 0.0])
    assert (detector.state.ready, detector.state.samples_needed) == (False, 15)


@pytest.mark.parametrize("with_reference", [True, False])
def test_pht_waits_for_min_samples_after_its_reference(with_reference: bool) -> None:
    rng = np.random.default_rng(5)
    reference = rng.normal(size=100) if with_reference else None
    detector = PageHinkley(min_samples=30, reference_size=100, reference=reference)
    before = 0 if with_reference else 100
    assert_not_ready(detector, before + 30)
    detector.update(rng.normal(size=before + 29))
    assert_not_ready(detector, 1)
    detector.update(rng.normal(size=1))
    assert_ready(detector)


def test_pht_stays_ready_across_a_restart() -> None:
    rng = np.random.default_rng(6)
    detector = PageHinkley(min_samples=30, reference=rng.normal(size=200))
    detector.update(rng.normal(size=100))
    for value in rng.normal(5.0, 1.0, size=100):
        if any(event.level == "drift" for event in detector.update([value])):
            break
    # Restarted at the drift: for min_samples the level is held at drift, a decision of
    # the test, so the detector stays ready (with the restarted statistic).
    for _ in range(10):
        assert detector.state.level == "drift"
        assert_ready(detector)
        detector.update(rng.normal(5.0, 1.0, size=1))


@pytest.mark.parametrize("kind", [DDM, HDDMA, HDDMW])
def test_error_detectors_wait_for_min_samples(kind) -> None:
    detector = kind(min_samples=30)
    assert_not_ready(detector, 30)
    detector.update(np.zeros(12))
    assert_not_ready(detector, 18)
    detector.update(np.array([0.0, 1.0] * 9))
    assert_ready(detector)


def test_eddm_waits_for_min_errors_and_says_so_in_errors() -> None:
    detector = EDDM(min_errors=5)
    assert_not_ready(detector, 5)
    detector.update(np.zeros(100))  # right answers bring it no closer
    assert_not_ready(detector, 5)
    detector.update(np.array([1.0, 0.0, 0.0] * 4))
    assert_not_ready(detector, 1)
    detector.update(np.array([0.0, 1.0]))
    assert_ready(detector)
