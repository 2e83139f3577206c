"""The example CUSUM detector: detection, quiet on noise, snapshots, refusals, its entry point."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
from monitord.detectors import Detector
from monitord.plugins import load_plugins
from monitord.settings import DetectorSpec
from monitord_example_detector import cusum
from monitord_example_detector.cusum import BadValue, Cusum


def reference(seed: int, size: int = 2000) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, size)


def test_the_docstring_example_runs() -> None:
    assert doctest.testmod(cusum).failed == 0


def test_a_shift_of_one_reference_deviation_is_drift_within_a_hundred_samples() -> None:
    rng = np.random.default_rng(11)
    detector = Cusum(reference=rng.normal(5.0, 2.0, 2000))
    assert detector.update(rng.normal(5.0, 2.0, 3000)) == []
    events = detector.update(rng.normal(7.0, 2.0, 500))
    drifts = [event for event in events if event.level == "drift"]
    assert drifts, events
    assert drifts[0].index < 100
    assert drifts[0].statistic > drifts[0].threshold == 15.0
    assert drifts[0].toward_reference is False
    assert len(drifts) == 1, "the level stays at drift while the shift lasts: one event"
    assert detector.state.level == "drift"


def test_a_fall_is_found_too_and_the_level_returns_to_ok_after_the_shift_ends() -> None:
    rng = np.random.default_rng(12)
    detector = Cusum(reference=rng.normal(0.0, 1.0, 2000))
    events = detector.update(rng.normal(-1.0, 1.0, 300))
    assert [event.level for event in events][-1] == "drift"
    assert detector.update(rng.normal(0.0, 1.0, 500)) == [], "falling levels raise no event"
    assert detector.state.level == "ok"


def test_no_event_on_stationary_noise() -> None:
    rng = np.random.default_rng(0)
    detector = Cusum(reference=rng.normal(0.0, 1.0, 2000))
    assert detector.update(rng.normal(0.0, 1.0, 20_000)) == []
    drifts = 0
    for seed in range(1, 11):
        rng = np.random.default_rng(seed)
        detector = Cusum(reference=rng.normal(0.0, 1.0, 2000))
        drifts += sum(event.level == "drift" for event in detector.update(rng.normal(0.0, 1.0, 20_000)))
    assert drifts == 0


def test_without_a_model_reference_the_first_samples_become_the_reference() -> None:
    rng = np.random.default_rng(3)
    detector = Cusum(reference_size=300)
    detector.update(rng.normal(10.0, 3.0, 120))
    state = detector.state
    assert (state.ready, state.samples_needed, state.reference_samples, state.samples) == (False, 180, 0, 120)
    assert math.isnan(state.statistic)
    detector.update(rng.normal(10.0, 3.0, 1000))
    state = detector.state
    assert (state.ready, state.samples_needed, state.reference_samples, state.level) == (True, 0, 300, "ok")
    assert detector.update(rng.normal(16.0, 3.0, 200))[-1].level == "drift"


def test_snapshot_then_restore_continues_exactly_as_never_stopping() -> None:
    rng = np.random.default_rng(5)
    stream = np.concatenate([rng.normal(0.0, 1.0, 700), rng.normal(0.8, 1.0, 600)])
    whole = Cusum(reference_size=400)
    expected = whole.update(stream)

    first = Cusum(reference_size=400)
    got = first.update(stream[:250])  # mid-way through collecting the reference
    restored = Cusum(reference_size=400)
    restored.restore(json.loads(json.dumps(first.snapshot())))
    got += [event.__class__(**{**vars(event), "index": event.index + 250}) for event in restored.update(stream[250:900])]
    again = Cusum(reference_size=400)
    again.restore(json.loads(json.dumps(restored.snapshot())))
    got += [event.__class__(**{**vars(event), "index": event.index + 900}) for event in again.update(stream[900:])]

    assert got == expected and any(event.level == "drift" for event in expected)
    assert again.state == whole.state


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda s: {**s, "type": "pht"}, "cannot restore"),
        (lambda s: {**s, "version": 99}, "cannot restore"),
        (lambda s: {**s, "parameters": {**s["parameters"], "threshold": 4.0}}, "parameters"),
        (lambda s: {key: value for key, value in s.items() if key != "sums"}, "malformed"),
        (lambda s: {**s, "level": "panic"}, "malformed"),
    ],
)
def test_a_snapshot_that_does_not_fit_is_refused_and_changes_nothing(change, reason) -> None:
    rng = np.random.default_rng(8)
    source = Cusum(reference=reference(1))
    source.update(rng.normal(0.7, 1.0, 200))
    target = Cusum(reference=reference(2))
    target.update(rng.normal(0.0, 1.0, 50))
    before = target.snapshot()
    with pytest.raises(ValueError, match=reason):
        target.restore(change(source.snapshot()))
    assert target.snapshot() == before


def test_a_value_it_cannot_take_is_refused_with_its_row_and_the_batch_is_not_applied() -> None:
    detector = Cusum(reference=reference(4))
    before = detector.snapshot()
    with pytest.raises(BadValue, match="not a finite number") as raised:
        detector.update(np.array([0.1, 0.2, np.nan, 0.3]))
    assert raised.value.index == 2
    assert detector.snapshot() == before
    with pytest.raises(ValueError, match="one signal"):
        detector.update(np.zeros((4, 2)))


def test_it_meets_the_core_protocol() -> None:
    assert isinstance(Cusum(), Detector)


# -- through the entry point, as the daemon builds it -------------------------------------


def cusum_factory():
    return load_plugins({}).factory("detector", "cusum")


def test_the_entry_point_registers_the_cusum_type_and_it_checks_its_parameters() -> None:
    factory = cusum_factory()
    spec = DetectorSpec(type="cusum", signal="distance", threshold=8.0, slack=0.25)
    detector = factory(spec, None)  # the daemon's start-up check: no reference
    assert detector.state.threshold == 8.0 and detector.state.samples_needed == 500
    built = factory(spec, reference(6))
    assert built.state.ready and built.state.reference_samples == 2000

    with pytest.raises(ValueError, match=r"detector 'cusum_distance' \(type cusum\): treshold: unknown parameter"):
        factory(DetectorSpec(type="cusum", signal="distance", treshold=8.0), None)
    with pytest.raises(ValueError, match=r"warning_threshold \(20.0\) must be below threshold \(15.0\)"):
        factory(DetectorSpec(type="cusum", signal="distance", warning_threshold=20.0), None)
    with pytest.raises(ValueError, match=r"reference_size = 1: .*greater than or equal to 2"):
        factory(DetectorSpec(type="cusum", signal="distance", reference_size=1), None)
    with pytest.raises(ValueError, match="watches one signal, got 2"):
        factory(DetectorSpec(type="cusum", signal=["distance", "confidence"]), None)
