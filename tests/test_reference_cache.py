"""What detectors compute from their reference is kept across restarts (a restart to
ready within seconds), and never trusted when it cannot be read."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
from monitord import reference_cache
from monitord.reference_cache import ReferenceCache


def counting(values: np.ndarray, calls: list[int]):
    def compute() -> np.ndarray:
        calls.append(1)
        return values

    return compute


def test_an_array_is_computed_once_then_read_back_by_another_cache(tmp_path: Path) -> None:
    calls: list[int] = []
    first = ReferenceCache([tmp_path / "c"], tmp_path / "c")
    values = np.arange(5, dtype=np.float64)
    assert np.array_equal(first.array("x", ["v1", b"ref"], counting(values, calls)), values)
    again = ReferenceCache([tmp_path / "c"], tmp_path / "c")  # as after a restart
    assert np.array_equal(again.array("x", ["v1", b"ref"], counting(values, calls)), values)
    assert calls == [1]
    # Other inputs are another entry.
    again.array("x", ["v1", b"other"], counting(values, calls))
    assert calls == [1, 1]
    entry = next((tmp_path / "c").glob("x-*.npy"))
    assert stat.S_IMODE(os.stat(entry).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "c").st_mode) == 0o700


def test_an_unreadable_entry_is_computed_again_and_replaced(tmp_path: Path) -> None:
    cache = ReferenceCache([tmp_path], tmp_path)
    calls: list[int] = []
    cache.array("x", ["k"], counting(np.ones(3), calls))
    entry = next(tmp_path.glob("x-*.npy"))
    entry.write_bytes(b"not an array")
    assert np.array_equal(cache.array("x", ["k"], counting(np.ones(3), calls)), np.ones(3))
    assert calls == [1, 1]
    assert np.array_equal(np.load(entry), np.ones(3))


def test_an_entry_of_another_shape_or_type_is_computed_again(tmp_path: Path) -> None:
    cache = ReferenceCache([tmp_path], tmp_path)
    calls: list[int] = []
    cache.array("x", ["k"], counting(np.ones(3), calls))
    entry = next(tmp_path.glob("x-*.npy"))
    for planted in (np.ones(4), np.ones(3, dtype=np.float32)):
        np.save(entry, planted)
        assert np.array_equal(cache.array("x", ["k"], counting(np.ones(3), calls), shape=(3,)), np.ones(3))
        assert np.load(entry).shape == (3,) and np.load(entry).dtype == np.float64
    assert calls == [1, 1, 1]
    assert cache.array("x", ["k"], counting(np.ones(3), calls), shape=(3,)) is not None and calls == [1, 1, 1]


def test_the_daemon_reads_beside_the_artifact_but_writes_only_in_its_state(tmp_path: Path) -> None:
    """An artifact is an input: shared, versioned, maybe read-only; serving it changes nothing."""
    artifact, state = tmp_path / "artifact", tmp_path / "state"
    shipped = ReferenceCache([artifact / "reference-cache"], artifact / "reference-cache")
    shipped.array("x", ["k"], lambda: np.arange(3.0))  # as whatever made the artifact would
    calls: list[int] = []
    cache = ReferenceCache.for_daemon(artifact, state)
    assert np.array_equal(cache.array("x", ["k"], counting(np.zeros(3), calls)), np.arange(3.0))
    cache.array("y", ["k"], counting(np.ones(2), calls))
    assert calls == [1]
    assert len(list((artifact / "reference-cache").iterdir())) == 1  # nothing new beside the artifact
    assert len(list((state / "reference-cache").glob("y-*.npy"))) == 1


def test_nm_ddm_calibrates_once_across_rebuilds_with_the_daemons_cache(tmp_path: Path, monkeypatch) -> None:
    from monitord_drift import nm_ddm_kernels
    from monitord_drift.nm_ddm import NMDDM

    calls: list[int] = []
    real = nm_ddm_kernels.calibration_statistics

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(nm_ddm_kernels, "calibration_statistics", spy)
    reference = np.random.default_rng(0).normal(size=(300, 2))
    plain = NMDDM(reference=reference, calibration_windows=2000)
    with reference_cache.using(ReferenceCache([tmp_path], tmp_path)):
        first = NMDDM(reference=reference, calibration_windows=2000)
        second = NMDDM(reference=reference, calibration_windows=2000)  # a restart
        other = NMDDM(reference=reference, calibration_windows=2000, window=50)
    assert len(calls) == 3  # plain (no cache), first, other; not second
    assert first.state.threshold == second.state.threshold == plain.state.threshold
    assert other.state.threshold != first.state.threshold


def test_the_digits_model_loads_without_importing_torchvision(digits_artifact: Path) -> None:
    """torchvision costs a second of every start; only its architectures need it."""
    code = (
        "import sys\n"
        "from monitord.settings import ModelSettings\n"
        "from monitord_torchvision.loading import load_model\n"
        f"load_model(ModelSettings(artifact={str(digits_artifact)!r}), '.')\n"
        "print('torchvision' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_restarted_daemon_reads_the_calibration_it_kept(daemon, digits_artifact: Path) -> None:
    first = daemon()
    entries = list((first.state / "reference-cache").glob("*-calibration-*.npy"))
    # Every default detector with a reference calibrates on it (iks's depends on sizes alone).
    assert {entry.name.split("-calibration-")[0] for entry in entries} >= {"pht", "iks", "nm_ddm-ert", "class_mix"}, \
        entries
    assert not (digits_artifact / "reference-cache").exists()  # the artifact is left alone
    first.terminate()
    stamp = {entry: entry.stat().st_mtime_ns for entry in entries}
    again = daemon()
    assert again.metric("monitord_drift_threshold", detector="nm_ddm_activation_mean_activation_std",
                        type="nm_ddm", signal="activation_mean+activation_std") > 0
    assert {entry: entry.stat().st_mtime_ns for entry in entries} == stamp  # read, not rewritten
