"""Online MMD: an oracle for the statistic, batching, snapshots, readiness, bad settings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from monitord.settings import DetectorSpec

from monitord_drift.base import build_detector
from monitord_drift.mmd import OnlineMMD, median_bandwidth
from monitord_drift.plugin import detector_class

ERT = 10_000


def oracle_statistic(reference: np.ndarray, window: np.ndarray) -> float:
    """Unbiased MMD² from scratch, as the docstring defines it."""
    center, spread = reference.mean(axis=0), reference.std(axis=0, ddof=1)
    x, y = (reference - center) / spread, (window - center) / spread
    squared = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    sigma2 = np.median(squared[np.triu_indices(len(x), k=1)]) / 2

    def gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2) / (2 * sigma2))

    n, w = len(x), len(y)
    kxx, kyy = gram(x, x), gram(y, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (w * (w - 1)) - 2 * gram(x, y).mean()
    )


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 3)) * [1.0, 5.0, 0.2]


@pytest.fixture(scope="module")
def fitted(reference: np.ndarray) -> OnlineMMD:
    return OnlineMMD(window=50, ert=ERT, reference=reference)


def stream(seed: int, size: int = 600, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(size, 3)) * [1.0, 5.0, 0.2]
    rows[size // 2 :, 0] += shift
    return rows


def test_the_statistic_is_the_unbiased_mmd_of_the_last_window(reference: np.ndarray, fitted: OnlineMMD) -> None:
    detector = OnlineMMD(window=50, ert=ERT, reference=reference)
    rows = stream(1, 437, shift=0.8)  # 437: the ring has wrapped and the pair sum was recomputed
    detector.update(rows)
    assert detector.state.statistic == pytest.approx(oracle_statistic(reference, rows[-50:]), abs=1e-12)
    assert detector._sigma == pytest.approx(median_bandwidth((reference - reference.mean(0)) / reference.std(0, ddof=1)))


def test_a_shift_raises_drift_and_clean_data_does_not(fitted: OnlineMMD) -> None:
    detector = OnlineMMD(window=50, ert=ERT, reference=fitted.reference)
    assert [event.level for event in detector.update(stream(2, 400))] == []
    events = detector.update(stream(3, 400, shift=1.5))
    drifts = [event for event in events if event.level == "drift"]
    assert len(drifts) == 1 and drifts[0].index >= 200
    assert drifts[0].statistic > drifts[0].threshold == detector.state.threshold
    assert detector.state.level == "drift" and detector.state.ert == ERT


def test_batches_give_the_same_result_as_single_samples(fitted: OnlineMMD) -> None:
    rows = stream(4, 500, shift=1.0)
    whole = OnlineMMD(window=50, ert=ERT, reference=fitted.reference)
    single = OnlineMMD(window=50, ert=ERT, reference=fitted.reference)
    events_whole = [(e.index, e.level, e.statistic) for e in whole.update(rows)]
    events_single = [(i, e.level, e.statistic) for i in range(len(rows)) for e in single.update(rows[i : i + 1])]
    assert events_whole == events_single and events_whole
    assert whole.state == single.state


def test_a_restored_detector_continues_exactly(fitted: OnlineMMD) -> None:
    rows = stream(5, 700, shift=0.7)
    uninterrupted = OnlineMMD(window=50, ert=ERT, reference=fitted.reference)
    expected = [(e.index, e.level, e.statistic) for e in uninterrupted.update(rows)]
    first = OnlineMMD(window=50, ert=ERT, reference=fitted.reference)
    seen = [(e.index, e.level, e.statistic) for e in first.update(rows[:333])]
    snapshot = json.loads(json.dumps(first.snapshot()))
    restored = OnlineMMD(window=50, ert=ERT)
    restored.restore(snapshot)
    seen += [(e.index + 333, e.level, e.statistic) for e in restored.update(rows[333:])]
    assert seen == expected and any(level == "drift" for _, level, _ in expected)
    assert restored.state == uninterrupted.state


def test_a_snapshot_with_other_parameters_is_refused(fitted: OnlineMMD) -> None:
    snapshot = fitted.snapshot()
    with pytest.raises(ValueError, match="parameters"):
        OnlineMMD(window=50, ert=2 * ERT).restore(snapshot)


def test_the_detector_is_not_ready_while_the_window_fills(fitted: OnlineMMD) -> None:
    detector = OnlineMMD(window=50, ert=ERT, reference=fitted.reference)
    detector.update(stream(6, 49))
    assert not detector.state.ready and detector.samples_needed == 1 and math.isnan(detector.state.statistic)
    detector.update(stream(7, 1))
    assert detector.state.ready and detector.samples_needed == 0
    from_stream = OnlineMMD(window=50, ert=ERT, reference_size=100)
    assert from_stream.samples_needed == 150


def test_the_thresholds_follow_the_ert(fitted: OnlineMMD) -> None:
    longer = OnlineMMD(window=50, ert=10 * ERT, reference=fitted.reference)
    warning, drift = fitted._thresholds
    assert warning < drift < longer._thresholds[1]
    assert longer._thresholds[0] == pytest.approx(drift, rel=0.3)  # ert/10 of the longer is this ert


def test_degenerate_data_gives_finite_statistics() -> None:
    constant = OnlineMMD(window=10, ert=200, reference=np.ones((50, 2)))
    assert constant.update(np.ones((30, 2))) == []
    assert constant.state.statistic == pytest.approx(0.0, abs=1e-12)
    huge = constant.update(np.full((30, 2), 1e300))
    assert [event.level for event in huge] == ["drift"] and math.isfinite(constant.state.statistic)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"window": 1}, "window must be an integer of at least 2"),
        ({"window": 2.5}, "window must be an integer"),
        ({"ert": 50}, "ert must be at least 100"),
        ({"ert": 5}, "ert must be a number of samples of at least 10"),
        ({"ert": "lots"}, "ert must be a number"),
        ({"bandwidth": "scott"}, "bandwidth must be 'median' or a positive number"),
        ({"bandwidth": -1.0}, "bandwidth must be 'median' or a positive number"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"calibration_streams": 0}, "calibration_streams must be a positive integer"),
    ],
)
def test_bad_settings_are_refused_with_what_was_wrong(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OnlineMMD(**params)


def test_too_few_calibration_streams_say_how_many_are_needed(reference: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"calibration_streams = 20 is too few: .* simulate \d+ streams"):
        OnlineMMD(window=50, ert=ERT, calibration_streams=20, reference=reference)


def test_the_daemon_builds_it_from_settings_on_any_number_of_signals(reference: np.ndarray) -> None:
    assert detector_class("mmd") is OnlineMMD
    spec = DetectorSpec(type="mmd", signal=["a", "b", "c"], window=50, ert=ERT)
    detector = build_detector(OnlineMMD, spec, reference)
    assert detector.params()["ert"] == ERT and detector.reference.shape == (300, 3)
    with pytest.raises(ValueError, match="expects 3 signals per sample; got 2"):
        detector.update(np.zeros((5, 2)))
    bad = DetectorSpec(type="mmd", signal=["a", "b"], window=50, ert=10)
    with pytest.raises(ValueError, match=r"detector 'mmd.*ert must be"):
        build_detector(OnlineMMD, bad, None)


def test_docstring_example_runs() -> None:
    import doctest

    from monitord_drift import mmd

    result = doctest.testmod(mmd)
    assert result.attempted >= 6 and result.failed == 0


def test_building_it_without_a_reference_imports_neither_numba_nor_scipy() -> None:
    """The daemon's start-up check builds every detector before the model loads."""
    import os
    import subprocess
    import sys

    code = (
        "import sys\nfrom monitord_drift.mmd import OnlineMMD\nOnlineMMD(ert=5000)\n"
        "print([m for m in ('numba', 'scipy') if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
