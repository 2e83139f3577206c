"""Detector snapshots: a restart continues every detector exactly where it stopped, and a
snapshot that does not fit is set aside, never fatal."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from monitord.detectors import DetectorStage
from monitord.metrics import Metrics
from monitord.plugins import load_plugins
from monitord.settings import DetectorSpec
from monitord.snapshots import DetectorSnapshots, reference_fingerprint

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


def test_a_restored_stage_continues_exactly_like_one_never_stopped(tmp_path: Path) -> None:
    uninterrupted, before = build(), build()
    feed(uninterrupted, 1, 600)
    feed(before, 1, 600)
    DetectorSnapshots(tmp_path, before, FINGERPRINT).save()

    after = build()
    restored = DetectorSnapshots(tmp_path, after, FINGERPRINT).restore()
    assert restored == [spec.label for spec in SPECS]
    assert readings(after) == readings(uninterrupted)
    # The drift that follows is found at the same sample, with the same levels.
    assert feed(after, 2, 600, shift=0.3) == feed(uninterrupted, 2, 600, shift=0.3) != []
    assert readings(after) == readings(uninterrupted)


def test_a_corrupt_snapshot_is_set_aside_and_detectors_start_fresh(tmp_path: Path) -> None:
    path = tmp_path / "detectors.json"
    path.write_text('{"version": 1, "detectors": {"pht_conf', encoding="utf-8")
    stage = build()
    assert DetectorSnapshots(tmp_path, stage, FINGERPRINT).restore() == []
    assert all(state["samples"] == 0 for state in stage.states())
    aside = list(tmp_path.glob("detectors.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text(encoding="utf-8").startswith('{"version": 1')
    assert not path.exists()


def test_a_snapshot_of_another_model_reference_is_not_applied(tmp_path: Path) -> None:
    stage = build()
    feed(stage, 1, 300)
    DetectorSnapshots(tmp_path, stage, FINGERPRINT).save()
    retrained = {**REFERENCE, "confidence": REFERENCE["confidence"][:-1]}
    fresh = build()
    other = reference_fingerprint("digits_cnn", retrained)
    assert other != FINGERPRINT
    assert DetectorSnapshots(tmp_path, fresh, other).restore() == []
    assert all(state["samples"] == 0 for state in fresh.states())
    assert len(list(tmp_path.glob("detectors.json.incompatible-*"))) == 1


def test_one_detector_with_new_parameters_starts_fresh_the_others_continue(tmp_path: Path) -> None:
    stage = build()
    feed(stage, 1, 300)
    DetectorSnapshots(tmp_path, stage, FINGERPRINT).save()
    changed = list(SPECS)
    changed[1] = DetectorSpec(type="iks", signal="entropy", alpha=1e-4, window=100)
    after = build(changed)
    restored = DetectorSnapshots(tmp_path, after, FINGERPRINT).restore()
    assert restored == ["pht_confidence", "hddm_a_error"]
    samples = {state["name"]: state["samples"] for state in after.states()}
    assert samples == {"pht_confidence": 300, "iks_entropy": 0, "hddm_a_error": 300}
    # The refused file is kept for inspection; the stage runs on.
    assert len(list(tmp_path.glob("detectors.json.incompatible-*"))) == 1
    feed(after, 3, 100)
    assert after.states()[1]["samples"] == 100


def test_a_detector_renamed_or_retyped_is_not_restored_from_another_kind(tmp_path: Path) -> None:
    stage = build()
    feed(stage, 1, 300)
    snapshots = DetectorSnapshots(tmp_path, stage, FINGERPRINT)
    snapshots.save()
    data = json.loads((tmp_path / "detectors.json").read_text(encoding="utf-8"))
    assert data["detectors"]["pht_confidence"]["signals"] == ["confidence"]
    swapped = [DetectorSpec(type="ddm", signal="error", name="hddm_a_error")]
    after = build(swapped)
    assert DetectorSnapshots(tmp_path, after, FINGERPRINT).restore() == []
    assert after.states()[0]["samples"] == 0


@pytest.mark.asyncio
async def test_periodic_snapshots_follow_the_stream(tmp_path: Path) -> None:
    stage = build()
    snapshots = DetectorSnapshots(tmp_path, stage, FINGERPRINT)
    snapshots.start(0.05)
    try:
        feed(stage, 1, 200)
        await asyncio.sleep(0.3)
        first = json.loads((tmp_path / "detectors.json").read_text(encoding="utf-8"))
        feed(stage, 2, 100)
        await asyncio.sleep(0.3)
        second = json.loads((tmp_path / "detectors.json").read_text(encoding="utf-8"))
    finally:
        await snapshots.stop()
    assert first["detectors"]["pht_confidence"]["state"]["samples"] == 200
    assert second["detectors"]["pht_confidence"]["state"]["samples"] == 300
