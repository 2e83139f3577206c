"""NM-DDM: an oracle for the statistic, calibration, power, batching, snapshots, degenerate data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monitord.settings import DetectorSpec
from scipy.stats import gaussian_kde, multivariate_t

from monitord_drift.base import build_detector
from monitord_drift.ert import run_length
from monitord_drift.nm_ddm import DEFENSIVE_WEIGHT, NMDDM, bandwidth_factor
from monitord_drift.plugin import detector_class

# -- helpers ---------------------------------------------------------------------------------


def oracle_statistic(reference: np.ndarray, window: np.ndarray, h: float) -> float:
    """T computed from scratch in the original coordinates, as the docstring defines it.

    Kernel N(0, h²Σ) with Σ the reference covariance; p̂_W leaves the evaluated point out.
    Both densities are mixed with ε of a multivariate Cauchy (scipy's): for p̂_R centred on
    the reference mean with shape (1 + h²)Σ; for p̂_W centred on the window mean with shape
    Σ^½·V·max(Λ, 1)·Vᵀ·Σ^½ + h²Σ, VΛVᵀ the window covariance seen through Σ^-½.
    """
    n, d = reference.shape
    w = len(window)
    cov = np.atleast_2d(np.cov(reference, rowvar=False))
    precision = np.linalg.inv(cov) / (h * h)
    norm = 1.0 / math.sqrt((2 * math.pi) ** d * np.linalg.det(cov * h * h))

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        diff = a[:, None, :] - b[None, :, :]
        return norm * np.exp(-0.5 * np.einsum("ijk,kl,ijl->ij", diff, precision, diff))

    values, vectors = np.linalg.eigh(cov)
    root = vectors @ np.diag(np.sqrt(values)) @ vectors.T
    inverse_root = np.linalg.inv(root)
    seen = inverse_root @ np.atleast_2d(np.cov(window, rowvar=False)) @ inverse_root
    spread, axes = np.linalg.eigh(seen)
    window_shape = root @ axes @ np.diag(np.maximum(spread, 1.0)) @ axes.T @ root + h * h * cov
    g_window = multivariate_t(loc=window.mean(axis=0), shape=window_shape, df=1).pdf(window)
    g_reference = multivariate_t(loc=reference.mean(axis=0), shape=(1 + h * h) * cov, df=1).pdf(window)
    own = kernel(window, window)
    np.fill_diagonal(own, 0.0)
    p_window = (1 - DEFENSIVE_WEIGHT) * own.sum(axis=1) / (w - 1) + DEFENSIVE_WEIGHT * g_window
    p_reference = (1 - DEFENSIVE_WEIGHT) * kernel(window, reference).mean(axis=1) + DEFENSIVE_WEIGHT * g_reference
    return float(np.mean(np.log(p_window / p_reference)))


def run_in_batches(detector: NMDDM, stream: np.ndarray, cuts: list[int]) -> list[tuple]:
    """Feed ``stream`` cut at ``cuts``; events as (global index, level, statistic, threshold)."""
    events = []
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(stream))), len(stream)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        for event in detector.update(stream[start:stop]):
            events.append((start + event.index, event.level, event.statistic, event.threshold))
    return events


def clean_windows_statistics(detector: NMDDM, rng: np.random.Generator, count: int, shift: float = 0.0) -> list:
    """Statistic and p-value of ``count`` fresh tumbling windows of N(0, I) (+ shift on feature 0)."""
    out = []
    for _ in range(count):
        window = rng.normal(size=(detector.window, 2))
        window[:, 0] += shift
        detector.update(window)
        out.append((detector.state.statistic, detector.state.p_value))
    return out


# -- the statistic -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode, step", [("sliding", 1), ("sliding", 3), ("tumbling", 1)])
def test_statistic_matches_a_from_scratch_oracle_at_every_evaluation(mode: str, step: int) -> None:
    rng = np.random.default_rng(3)
    mixing = np.array([[1.0, 0.6], [0.0, 0.5]])  # correlated features: the full-covariance bandwidth matters
    reference = rng.normal(size=(60, 2)) @ mixing + [5.0, -2.0]
    stream = rng.normal(size=(90, 2)) @ mixing + [5.3, -2.0]
    detector = NMDDM(window=20, reference=reference, window_mode=mode, step=step, calibration_windows=200,
                     alpha_warning=0.05, alpha_drift=0.01)  # fmt: skip
    h = bandwidth_factor("scott", 20, 2)
    checked = 0
    previous = None
    for t in range(len(stream)):
        detector.update(stream[t : t + 1])
        filled = t + 1
        if mode == "tumbling":
            due = filled % 20 == 0
        else:
            due = filled >= 20 and (filled - 20) % step == 0
        statistic = detector.state.statistic
        if due:
            expected = oracle_statistic(reference, stream[filled - 20 : filled], h)
            assert statistic == pytest.approx(expected, rel=1e-9, abs=1e-12)
            checked += 1
        elif previous is not None:
            assert statistic == previous  # the level and statistic hold between evaluations
        else:  # before the first evaluation the detector is not ready: no statistic
            assert math.isnan(statistic) and not detector.state.ready
        previous = statistic if checked else None
    assert checked == {"sliding": 71 if step == 1 else 24, "tumbling": 4}[mode]


def test_statistic_is_affine_invariant() -> None:
    """The full-covariance bandwidth makes T blind to units and linear mixing of the features."""
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(200, 2))
    stream = rng.normal(size=(150, 2)) + [1.5, 0.0]
    transform = np.array([[3e-6, 0.0], [2e-6, 5e4]])
    plain = NMDDM(window=50, reference=reference, calibration_windows=200, alpha_drift=0.01, alpha_warning=0.05)
    mixed = NMDDM(window=50, reference=reference @ transform + [7.0, -1e5], calibration_windows=200,
                  alpha_drift=0.01, alpha_warning=0.05)  # fmt: skip
    for row, mixed_row in zip(stream, stream @ transform + [7.0, -1e5]):
        plain.update(row[None])
        mixed.update(mixed_row[None])
        assert mixed.state.ready == plain.state.ready
        if plain.state.ready:
            assert mixed.state.statistic == pytest.approx(plain.state.statistic, rel=1e-7, abs=1e-10)
    assert plain.state.level == "drift"  # a non-trivial statistic was compared


# -- calibration and power -----------------------------------------------------------------


def test_clean_window_alarm_rate_is_at_most_alpha() -> None:
    """2,000 independent clean windows over 40 references of 360 samples (the daemon's size)."""
    warnings = drifts = total = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        detector = NMDDM(window=100, reference=rng.normal(size=(360, 2)), window_mode="tumbling",
                         alpha_warning=0.05, alpha_drift=0.01, seed=seed)  # fmt: skip
        warning, drift = detector.state.warning_threshold, detector.state.threshold
        for statistic, _ in clean_windows_statistics(detector, rng, 50):
            warnings += statistic > warning
            drifts += statistic > drift
            total += 1
    # alpha plus three standard errors of a binomial proportion over `total` windows
    assert drifts / total <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / total)
    assert warnings / total <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / total)
    assert warnings / total >= 0.025  # calibrated, not merely conservative


def test_one_sigma_shift_of_one_feature_is_detected_in_90_percent_of_windows() -> None:
    """Default parameters (alpha_drift 0.001), reference of 360, window 100."""
    detected = total = 0
    for seed in range(12):
        rng = np.random.default_rng(200 + seed)
        detector = NMDDM(reference=rng.normal(size=(360, 2)), window_mode="tumbling", seed=seed)
        for statistic, p_value in clean_windows_statistics(detector, rng, 10, shift=1.0):
            detected += statistic > detector.state.threshold
            total += 1
    assert detected / total >= 0.9


def test_sliding_window_reaches_and_holds_drift_after_a_one_sigma_shift() -> None:
    rng = np.random.default_rng(5)
    detector = NMDDM(reference=rng.normal(size=(360, 2)))
    clean = rng.normal(size=(400, 2))
    shifted = rng.normal(size=(300, 2)) + [1.0, 0.0]
    assert [event.level for event in detector.update(clean)].count("drift") == 0
    levels = []
    for row in shifted:
        detector.update(row[None])
        levels.append(detector.state.level)
    fully_shifted = levels[99:]  # windows made only of shifted samples
    assert fully_shifted.count("drift") / len(fully_shifted) >= 0.9


def test_naive_max_log_ratio_rule_alarms_on_clean_windows_where_ours_does_not() -> None:
    naive_alarms = our_alarms = 0
    for seed in range(20):
        rng = np.random.default_rng(300 + seed)
        reference, window = rng.normal(size=(360, 2)), rng.normal(size=(100, 2))
        naive = np.max(np.log(gaussian_kde(window.T)(window.T) / gaussian_kde(reference.T)(window.T)))
        naive_alarms += naive > 0.1
        detector = NMDDM(reference=reference, window_mode="tumbling", seed=seed)
        detector.update(window)
        our_alarms += detector.state.level == "drift"
    assert naive_alarms >= 18
    assert our_alarms <= 1


def test_p_value_agrees_with_the_thresholds() -> None:
    rng = np.random.default_rng(6)
    detector = NMDDM(reference=rng.normal(size=(360, 2)), window_mode="tumbling", alpha_warning=0.05,
                     alpha_drift=0.01, calibration_windows=999)  # fmt: skip
    results = clean_windows_statistics(detector, rng, 30) + clean_windows_statistics(detector, rng, 30, shift=0.5)
    assert {p for _, p in results} <= {(k + 1) / 1000 for k in range(1000)}
    for statistic, p_value in results:
        assert (statistic > detector.state.threshold) == (p_value <= 0.01)
        assert (statistic > detector.state.warning_threshold) == (p_value <= 0.05)
    assert any(p <= 0.01 for _, p in results) and any(p > 0.05 for _, p in results)


def test_thresholds_depend_on_seed_and_reference_only() -> None:
    rng = np.random.default_rng(7)
    reference = rng.normal(size=(200, 2))
    first = NMDDM(window=50, reference=reference, seed=1).state
    again = NMDDM(window=50, reference=reference.copy(), seed=1).state
    other = NMDDM(window=50, reference=reference, seed=2).state
    assert (first.threshold, first.warning_threshold) == (again.threshold, again.warning_threshold)
    assert first.threshold != other.threshold
    # a reference collected from the stream calibrates exactly like the same rows given
    streamed = NMDDM(window=50, reference_size=200, seed=1)
    streamed.update(reference)
    assert (streamed.state.threshold, streamed.state.warning_threshold) == (first.threshold, first.warning_threshold)


# -- windows and on_drift ------------------------------------------------------------------


def test_adopt_takes_the_drifted_window_as_the_new_reference() -> None:
    rng = np.random.default_rng(8)
    reference = rng.normal(size=(300, 2))
    stream = np.vstack([rng.normal(size=(200, 2)), rng.normal(size=(800, 2)) + [3.0, 0.0]])
    keep = NMDDM(reference=reference, reference_size=300)
    adopt = NMDDM(reference=reference, reference_size=300, on_drift="adopt")
    kept = [(e.index, e.level) for e in keep.update(stream)]
    assert [level for _, level in kept].count("drift") == 1 and keep.state.level == "drift"
    drift_at = next(t for t, level in kept if level == "drift")
    assert 200 <= drift_at < 300
    assert [e.level for e in adopt.update(stream[: drift_at + 1])][-1] == "drift"
    # the drifted window opens the new reference and the next 200 samples complete it
    for row in stream[drift_at + 1 : drift_at + 200]:
        assert adopt.update(row[None]) == [] and adopt.state.level == "drift"
        assert adopt.state.reference_samples == 0
    adopt.update(stream[drift_at + 200 : drift_at + 201])
    assert adopt.state.level == "ok" and adopt.state.reference_samples == 300
    new_reference = np.array(adopt.snapshot()["reference"])
    assert np.array_equal(new_reference, stream[drift_at - 99 : drift_at + 201])
    # the stream settles on the new regime: at most one more adoption (the first new
    # reference straddles the change), then quiet
    later = [e.level for e in adopt.update(stream[drift_at + 201 :])]
    assert later.count("drift") <= 1 and adopt.state.level == "ok"


def test_drift_lasts_until_the_statistic_falls_to_the_warning_threshold() -> None:
    rng = np.random.default_rng(16)
    detector = NMDDM(reference=rng.normal(size=(360, 2)))
    warning, drift = detector.state.warning_threshold, detector.state.threshold
    stream = rng.normal(size=(1500, 2)) + [0.45, 0.0]  # a small shift: T hovers about the thresholds
    level, held, rises = "ok", 0, 0
    for t, row in enumerate(stream):
        events = detector.update(row[None])
        statistic, now = detector.state.statistic, detector.state.level
        if t >= 99:
            expected = "drift" if statistic > drift or (level == "drift" and statistic > warning) else (
                "warning" if statistic > warning else "ok")  # fmt: skip
            assert now == expected
            held += now == "drift" and statistic <= drift
        rises += [e.level for e in events].count("drift")
        level = now
    assert held > 0 and rises >= 1


def test_tumbling_windows_are_evaluated_once_each() -> None:
    rng = np.random.default_rng(9)
    detector = NMDDM(window=50, reference=rng.normal(size=(200, 2)), window_mode="tumbling")
    seen = []
    for row in rng.normal(size=(200, 2)) + [2.0, 0.0]:
        detector.update(row[None])
        seen.append(detector.state.statistic)
    changes = [t for t in range(50, len(seen)) if seen[t] != seen[t - 1]]
    assert all(math.isnan(value) for value in seen[:49]) and seen[49] > 0.5  # not ready until then
    assert changes == [99, 149, 199]


# -- batching and snapshots ----------------------------------------------------------------

STREAM_PARAMS = st.fixed_dictionaries(
    {
        "window": st.integers(3, 9),
        "window_mode": st.sampled_from(["sliding", "tumbling"]),
        "step": st.integers(1, 4),
        "on_drift": st.sampled_from(["keep", "adopt"]),
        "bandwidth": st.sampled_from(["scott", "silverman", 0.7]),
        "extra_reference": st.integers(0, 8),
    }
)


def build(params: dict, dims: int, reference: np.ndarray | None) -> NMDDM:
    return NMDDM(
        window=params["window"], window_mode=params["window_mode"], step=params["step"],
        on_drift=params["on_drift"], bandwidth=params["bandwidth"],
        reference_size=math.ceil(1.5 * params["window"]) + params["extra_reference"],
        alpha_warning=0.1, alpha_drift=0.02, calibration_windows=100, reference=reference,
    )  # fmt: skip


def make_stream(seed: int, dims: int, length: int, shift_at: int, nan_rows: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stream = rng.normal(size=(length, dims))
    stream[shift_at:, 0] += 4.0
    for row in rng.integers(0, max(length, 1), size=nan_rows):
        if length:
            stream[row, rng.integers(0, dims)] = np.nan
    return stream


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    params=STREAM_PARAMS,
    seed=st.integers(0, 2**16),
    dims=st.integers(1, 3),
    length=st.integers(0, 120),
    shift_at=st.integers(0, 120),
    nan_rows=st.integers(0, 3),
    given_reference=st.booleans(),
    cuts=st.lists(st.integers(1, 119), max_size=8),
)
def test_batch_update_equals_sample_by_sample(params, seed, dims, length, shift_at, nan_rows, given_reference, cuts):
    stream = make_stream(seed, dims, length, shift_at, nan_rows)
    reference = np.random.default_rng(seed + 1).normal(size=(40, dims)) if given_reference else None
    batched, single = build(params, dims, reference), build(params, dims, reference)
    batch_events = run_in_batches(batched, stream, cuts)
    single_events = run_in_batches(single, stream, list(range(1, length)))
    assert batch_events == single_events
    assert batched.snapshot() == single.snapshot()
    assert vars(batched.state) == vars(single.state)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    params=STREAM_PARAMS,
    seed=st.integers(0, 2**16),
    dims=st.integers(1, 3),
    length=st.integers(1, 120),
    shift_at=st.integers(0, 120),
    stop=st.integers(0, 120),
    given_reference=st.booleans(),
)
def test_snapshot_restore_continue_equals_never_stopping(params, seed, dims, length, shift_at, stop, given_reference):
    stream = make_stream(seed, dims, length, shift_at, 1)
    stop = min(stop, length)
    reference = np.random.default_rng(seed + 1).normal(size=(40, dims)) if given_reference else None
    never_stopped = build(params, dims, reference)
    expected = run_in_batches(never_stopped, stream, [stop])
    first = build(params, dims, reference)
    run_in_batches(first, stream[:stop], [])
    saved = json.loads(json.dumps(first.snapshot(), allow_nan=False))
    second = build(params, dims, reference)
    second.restore(saved)
    resumed = [(index + stop, *rest) for index, *rest in run_in_batches(second, stream[stop:], [])]
    assert resumed == [event for event in expected if event[0] >= stop]
    assert second.snapshot() == never_stopped.snapshot()
    assert vars(second.state) == vars(never_stopped.state)


def test_kernel_cache_and_reference_chunks_change_no_number(monkeypatch) -> None:
    # The window's pairwise kernel cache (windows up to KERNEL_CACHE_WINDOW) and scoring
    # against the reference a few rows at a time are speed-ups only: bit for bit the same.
    from monitord_drift import nm_ddm

    rng = np.random.default_rng(11)
    reference = rng.normal(size=(90, 2))
    stream = np.concatenate([rng.normal(size=(300, 2)), rng.normal(size=(200, 2)) + [0.8, 0.0]])
    params = dict(window=40, reference=reference, calibration_windows=200, alpha_drift=0.01, alpha_warning=0.05)
    fast = NMDDM(**params)
    expected = run_in_batches(fast, stream, list(range(64, 500, 64)))
    monkeypatch.setattr(nm_ddm, "KERNEL_CACHE_WINDOW", 0)
    monkeypatch.setattr(nm_ddm, "REFERENCE_CHUNK", 100)  # one row of 90 kernel values at a time
    plain = NMDDM(**params)
    assert len(plain._ring_kernels) == 0
    assert run_in_batches(plain, stream, list(range(64, 500, 64))) == expected
    assert plain.snapshot() == fast.snapshot()
    assert any(level == "drift" for _, level, _, _ in expected)  # a statistic that mattered


def test_restored_kernel_cache_continues_as_never_stopping() -> None:
    # The cache is not in the snapshot: restore rebuilds it from the window, so the
    # leaving points' kernel values must come out as they were when they entered.
    rng = np.random.default_rng(12)
    reference = rng.normal(size=(90, 2))
    stream = np.concatenate([rng.normal(size=(150, 2)), rng.normal(size=(150, 2)) * 1.6])
    params = dict(window=40, reference=reference, calibration_windows=200, alpha_drift=0.01, alpha_warning=0.05)
    never_stopped = NMDDM(**params)
    expected = run_in_batches(never_stopped, stream, [137])
    first = NMDDM(**params)
    run_in_batches(first, stream[:137], [])
    second = NMDDM(**params)
    second.restore(json.loads(json.dumps(first.snapshot())))
    resumed = [(index + 137, *rest) for index, *rest in run_in_batches(second, stream[137:], [])]
    assert resumed == [event for event in expected if event[0] >= 137]
    assert resumed  # the variance change raised something after the restore


def test_restore_refuses_a_snapshot_taken_with_other_parameters() -> None:
    rng = np.random.default_rng(10)
    detector = NMDDM(window=20, reference=rng.normal(size=(40, 2)))
    with pytest.raises(ValueError, match="parameters"):
        NMDDM(window=20, reference=rng.normal(size=(40, 2)), seed=3).restore(detector.snapshot())


# -- degenerate data -----------------------------------------------------------------------


def test_constant_reference_scores_zero_until_the_constant_changes() -> None:
    detector = NMDDM(window=20, reference=np.full((40, 2), 3.0))
    assert detector.update(np.full((60, 2), 3.0)) == []
    assert detector.state.statistic == pytest.approx(0.0, abs=1e-9) and detector.state.level == "ok"
    events = detector.update(np.full((20, 2), 3.5))
    assert [event.level for event in events][-1] == "drift" and math.isfinite(detector.state.statistic)


def test_zero_variance_feature_and_collinear_features_do_not_raise() -> None:
    rng = np.random.default_rng(11)
    base = rng.normal(size=(300, 1))
    constant_column = NMDDM(window=50, reference=np.hstack([base, np.zeros((300, 1))]))
    assert constant_column.update(np.hstack([rng.normal(size=(100, 1)), np.zeros((100, 1))])) == []
    assert constant_column.update(np.hstack([rng.normal(size=(60, 1)), np.ones((60, 1))]))[-1].level == "drift"
    collinear = NMDDM(window=50, reference=np.hstack([base, 2 * base, -base]))
    fresh = rng.normal(size=(100, 1))
    assert collinear.update(np.hstack([fresh, 2 * fresh, -fresh])) == []
    broken = rng.normal(size=(60, 1))
    assert collinear.update(np.hstack([broken, 2 * broken, broken]))[-1].level == "drift"


@pytest.mark.parametrize(
    "reference, stream",
    [
        (np.random.default_rng(12).normal(size=300), np.random.default_rng(13).normal(size=200)),  # d = 1, (N,)
        (np.random.default_rng(12).normal(size=(300, 2)) * 1e300, np.full((120, 2), -1.7e308)),
        (np.random.default_rng(12).normal(size=(300, 2)) * 1e-300, np.random.default_rng(13).normal(size=(120, 2))),
        (np.random.default_rng(12).normal(size=(300, 2)), np.full((120, 2), 1e308)),
        (np.random.default_rng(12).integers(0, 3, size=(300, 2)).astype(float), np.zeros((120, 2))),
        (np.zeros((300, 3)), np.random.default_rng(13).normal(size=(120, 3))),
    ],
    ids=["one-signal", "huge", "tiny-reference", "huge-stream", "ties", "all-zero-reference"],
)
def test_degenerate_inputs_never_raise_and_stay_finite(reference: np.ndarray, stream: np.ndarray) -> None:
    detector = NMDDM(window=50, reference=reference)
    events = detector.update(stream)
    state = detector.state
    assert all(math.isfinite(value) for value in (state.statistic, state.threshold, state.warning_threshold))
    assert all(math.isfinite(event.statistic) for event in events)
    json.dumps(detector.snapshot(), allow_nan=False)


def test_identical_window_points_and_non_finite_rows() -> None:
    rng = np.random.default_rng(14)
    detector = NMDDM(window=30, reference=rng.normal(size=(100, 2)))
    stream = np.vstack([np.zeros((40, 2)), [[np.nan, 0.0], [np.inf, 1.0]], np.full((30, 2), 2.5)])
    events = detector.update(stream)
    assert detector.state.samples == 70  # non-finite rows are skipped, not counted
    assert events and all(event.index != 40 and event.index != 41 for event in events)
    assert detector.state.level == "drift" and math.isfinite(detector.state.statistic)


# -- parameters and the plugin ---------------------------------------------------------------


@pytest.mark.parametrize(
    "params, message",
    [
        ({"window": 1}, "window must be an integer of at least 2"),
        ({"alpha_drift": 0.0}, "alpha_drift must be a number strictly between 0 and 1"),
        ({"alpha_warning": 0.01, "alpha_drift": 0.05}, "must be smaller than alpha_warning"),
        ({"window_mode": "hopping"}, "window_mode must be 'sliding' or 'tumbling'"),
        ({"step": 0}, "step must be a positive integer"),
        ({"on_drift": "reset"}, "on_drift must be 'keep' or 'adopt'"),
        ({"bandwidth": "wide"}, "bandwidth must be 'scott', 'silverman' or a positive number"),
        ({"bandwidth": -1.0}, "bandwidth must be"),
        ({"window": 400}, "reference_size must be an integer of at least 1.5 × window = 600"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"calibration_windows": 50}, "calibration_windows must be an integer of at least 1 / alpha_drift = 1000"),
    ],
)
def test_bad_parameters_are_refused_with_the_fix(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NMDDM(**params)


def test_plugin_builds_nm_ddm_from_settings_with_the_models_reference() -> None:
    assert detector_class("nm_ddm") is NMDDM and NMDDM.signals_per_sample is None
    spec = DetectorSpec(type="nm_ddm", signal=["activation_mean", "activation_std"], window=100, step=5)
    reference = np.random.default_rng(15).normal(size=(360, 2))
    detector = build_detector(NMDDM, spec, reference)
    assert detector.state.reference_samples == 360 and detector.params()["step"] == 5
    with pytest.raises(ValueError, match=r"nm_ddm_activation_mean_activation_std.*needs at least 150"):
        build_detector(NMDDM, spec, reference[:149])


def test_docstring_example_runs() -> None:
    import doctest

    from monitord_drift import nm_ddm

    result = doctest.testmod(nm_ddm)
    assert result.attempted >= 5 and result.failed == 0


# -- ert -------------------------------------------------------------------------------------


def skewed_population(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two correlated signals, one log-normal: the shape of an activation mean and spread."""
    z = rng.normal(size=(size, 2))
    return np.column_stack([np.exp(0.5 * z[:, 0]), 0.6 * z[:, 0] + 0.8 * z[:, 1]])


def test_ert_gives_the_stated_run_length_on_clean_streams() -> None:
    # Each detector gets its own reference from the population and a fresh stream from it:
    # the calibration only saw the reference, resampled.
    ert, references, length = 2_000, 5, 40_000
    alarms = 0
    for index in range(references):
        rng = np.random.default_rng(300 + index)
        detector = NMDDM(window=100, ert=ert, seed=index, reference=skewed_population(rng, 360))
        alarms += sum(event.level == "drift" for event in detector.update(skewed_population(rng, length)))
    estimate, low, high = run_length(alarms, references * length)
    assert high >= ert, (alarms, estimate, low, high)
    assert estimate <= 4 * ert, (alarms, estimate, low, high)


def test_ert_shows_in_the_state_and_sets_both_thresholds() -> None:
    reference = np.random.default_rng(31).normal(size=(300, 2))
    detector = NMDDM(window=100, ert=5_000, reference=reference)
    stricter = NMDDM(window=100, ert=50_000, reference=reference)
    state = detector.state
    assert state.ert == 5_000.0 and detector.params()["ert"] == 5_000.0
    assert detector.params()["alpha_drift"] is None and NMDDM(window=100).state.ert is None
    warning, drift = detector._thresholds
    assert 0.0 < warning < drift == state.threshold
    assert stricter._thresholds[1] > drift  # a longer run time needs a higher threshold
    detector.update(np.random.default_rng(32).normal(size=(150, 2)))
    assert detector.state.p_value is None and math.isfinite(detector.state.statistic)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"ert": 10_000, "alpha_drift": 1e-4}, r"give either ert \(10000\) or alpha_drift \(0.0001\)"),
        ({"ert": 10_000, "alpha_warning": 0.01}, "not both: ert calibrates the thresholds"),
        ({"ert": 50}, "ert must be at least 100 samples"),
        ({"ert": 5}, "ert must be a number of samples of at least 10"),
        ({"ert": 10_000, "calibration_windows": 5_000}, "calibration_windows .* does not apply with ert"),
    ],
)
def test_ert_with_alpha_or_out_of_range_is_refused(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NMDDM(**params)


def test_snapshot_restore_keeps_the_ert_thresholds(tmp_path) -> None:
    from monitord.reference_cache import ReferenceCache, using

    rng = np.random.default_rng(33)
    reference = rng.normal(size=(300, 2))
    with using(ReferenceCache([tmp_path], tmp_path)):  # the restored detector reads the maxima back
        detector = NMDDM(window=100, ert=5_000, reference=reference)
        detector.update(rng.normal(size=(250, 2)))
        snapshot = json.loads(json.dumps(detector.snapshot()))
        restored = NMDDM(window=100, ert=5_000, reference=reference)
        restored.restore(snapshot)
    assert restored._thresholds == detector._thresholds
    tail = rng.normal(size=(300, 2)) + [1.5, 0.0]
    assert [(e.index, e.level, e.statistic) for e in restored.update(tail)] == [
        (e.index, e.level, e.statistic) for e in detector.update(tail)
    ]
    with pytest.raises(ValueError, match="snapshot was taken with parameters"):
        NMDDM(window=100, ert=6_000).restore(snapshot)


def test_ert_calibration_is_cached_with_the_reference(tmp_path, monkeypatch) -> None:
    from monitord.reference_cache import ReferenceCache, using

    reference = np.random.default_rng(34).normal(size=(300, 2))
    cache = ReferenceCache([tmp_path], tmp_path)
    with using(cache):
        first = NMDDM(window=100, ert=5_000, reference=reference)._thresholds
    assert [path.name.startswith("nm_ddm-ert-calibration-") for path in tmp_path.iterdir()] == [True]

    def no_simulation(*args, **kwargs):
        raise AssertionError("simulated again although the cache holds the maxima")

    monkeypatch.setattr(NMDDM, "_simulated_statistics", no_simulation)
    with using(cache):
        assert NMDDM(window=100, ert=5_000, reference=reference)._thresholds == first
