"""Detector snapshots: a restart continues every detector exactly where it stopped, and a
snapshot that does not fit is set aside, never fatal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from monitord.detectors import DetectorStage
from monitord.metrics import Metrics
from monitord.plugins import load_plugins
from monitord.settings import DetectorSpec
from monitord.snapshots import DetectorSnapshots, read_snapshot_file, reference_fingerprint, write_snapshot_file

REFERENCE = {"confidence": np.random.default_rng(0).normal(0.9, 0.05, 400).tolist(),
             "entropy": np.random.default_rng(1).normal(0.3, 0.1, 400).tolist()}
SPECS = [
    DetectorSpec(type="pht", signal="confidence"),
    DetectorSpec(type="iks", signal="entropy", alpha=1e-3, window=100),
    DetectorSpec(type="hddm_a", signal="error"),
]
FINGERPRINT = reference_fingerprint("digits_cnn", REFERENCE)


def build(specs: list[DetectorSpec] = SPECS) -> DetectorStage:
    plugins = load_plugins()
    return DetectorStage.build(specs, lambda kind: plugins.factory("detector", kind), REFERENCE, Metrics())


def feed(stage: DetectorStage, seed: int, count: int, shift: float = 0.0) -> list[tuple[str, int, str]]:
    rng = np.random.default_rng(seed)
    events = []
    for start in range(0, count, 50):
        batch = {"confidence": rng.normal(0.9 - shift, 0.05, 50), "entropy": rng.normal(0.3 + shift, 0.1, 50),
                 "error": (rng.random(50) < 0.05 + shift).astype(float)}
        events += [(w.spec.label, start + e.index, e.level) for w, e in stage.update(batch)]
    return events


def readings(stage: DetectorStage) -> list[tuple]:
    return [(s["name"], s["statistic"], s["samples"], s["level"]) for s in stage.states()]


def roundtrip(data: dict) -> dict:
    """Through JSON, as a checkpoint travels."""
    return json.loads(json.dumps(data))


def test_a_restored_stage_continues_exactly_like_one_never_stopped() -> None:
    uninterrupted, before = build(), build()
    feed(uninterrupted, 1, 600)
    feed(before, 1, 600)
    saved = roundtrip(DetectorSnapshots(before, FINGERPRINT).collect())

    after = build()
    assert DetectorSnapshots(after, FINGERPRINT).restore_from(saved) is True
    assert readings(after) == readings(uninterrupted)
    # The drift that follows is found at the same sample, with the same levels.
    assert feed(after, 2, 600, shift=0.3) == feed(uninterrupted, 2, 600, shift=0.3) != []
    assert readings(after) == readings(uninterrupted)


def test_restoring_replaces_what_a_stage_learnt_since_the_snapshot() -> None:
    """A monitor that lost its lease and comes back restores the checkpoint, not a mixture."""
    stage = build()
    feed(stage, 1, 300)
    saved = roundtrip(DetectorSnapshots(stage, FINGERPRINT).collect())
    feed(stage, 2, 500, shift=0.3)
    assert DetectorSnapshots(stage, FINGERPRINT).restore_from(saved) is True
    assert all(state["samples"] == 300 for state in stage.states())
    assert DetectorSnapshots(stage, FINGERPRINT).restore_from(None) is True  # no checkpoint: all fresh
    assert all(state["samples"] == 0 for state in stage.states())


def test_a_corrupt_snapshot_file_is_set_aside_and_detectors_start_fresh(tmp_path: Path) -> None:
    path = tmp_path / "detectors.json"
    path.write_text('{"version": 1, "detectors": {"pht_conf', encoding="utf-8")
    assert read_snapshot_file(path) is None
    aside = list(tmp_path.glob("detectors.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text(encoding="utf-8").startswith('{"version": 1')
    assert not path.exists()
    write_snapshot_file(path, DetectorSnapshots(build(), FINGERPRINT).collect())
    assert read_snapshot_file(path)["reference"] == FINGERPRINT


def test_a_snapshot_of_another_model_reference_is_not_applied() -> None:
    stage = build()
    feed(stage, 1, 300)
    saved = roundtrip(DetectorSnapshots(stage, FINGERPRINT).collect())
    retrained = {**REFERENCE, "confidence": REFERENCE["confidence"][:-1]}
    fresh = build()
    other = reference_fingerprint("digits_cnn", retrained)
    assert other != FINGERPRINT
    assert DetectorSnapshots(fresh, other).restore_from(saved) is False
    assert all(state["samples"] == 0 for state in fresh.states())


def test_one_detector_with_new_parameters_starts_fresh_the_others_continue() -> None:
    stage = build()
    feed(stage, 1, 300)
    saved = roundtrip(DetectorSnapshots(stage, FINGERPRINT).collect())
    changed = list(SPECS)
    changed[1] = DetectorSpec(type="iks", signal="entropy", alpha=1e-4, window=100)
    after = build(changed)
    assert DetectorSnapshots(after, FINGERPRINT).restore_from(saved) is False  # its keeper sets it aside
    samples = {state["name"]: state["samples"] for state in after.states()}
    assert samples == {"pht_confidence": 300, "iks_entropy": 0, "hddm_a_error": 300}
    feed(after, 3, 100)
    assert after.states()[1]["samples"] == 100


def test_a_detector_renamed_or_retyped_is_not_restored_from_another_kind() -> None:
    stage = build()
    feed(stage, 1, 300)
    saved = roundtrip(DetectorSnapshots(stage, FINGERPRINT).collect())
    assert saved["detectors"]["pht_confidence"]["signals"] == ["confidence"]
    swapped = [DetectorSpec(type="ddm", signal="error", name="hddm_a_error")]
    after = build(swapped)
    assert DetectorSnapshots(after, FINGERPRINT).restore_from(saved) is False
    assert after.states()[0]["samples"] == 0
