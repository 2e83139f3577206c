from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monitord.reference import read_reference
from safetensors.torch import load_file

from monitord_torchvision.artifact import METADATA_FILE, WEIGHTS_FILE
from monitord_torchvision.errors import TrainingError
from monitord_torchvision.signals import SIGNAL_NAMES
from monitord_torchvision.training import TrainingReport, train_default_model


def test_default_model_reaches_95_percent_held_out(trained: TrainingReport) -> None:
    assert trained.held_out_accuracy >= 0.95
    assert trained.held_out_samples == 360 and trained.train_samples == 1437
    assert trained.device == "cpu"


def test_artifact_holds_weights_and_complete_metadata(artifact_dir: Path) -> None:
    assert sorted(p.name for p in artifact_dir.iterdir()) == [METADATA_FILE, WEIGHTS_FILE, "reference"]
    metadata = json.loads((artifact_dir / METADATA_FILE).read_text())
    for key in (
        "format_version",
        "architecture",
        "class_names",
        "input_size",
        "channels",
        "mean",
        "std",
        "activation_layer",
        "held_out_accuracy",
        "seed",
        "trained_at",
        "reference_signals",
    ):
        assert key in metadata, key
    assert metadata["architecture"] == "digits_cnn"
    assert metadata["class_names"] == [str(d) for d in range(10)]
    assert metadata["input_size"] == [8, 8] and metadata["channels"] == 1
    assert metadata["held_out_accuracy"] >= 0.95
    references = metadata["reference_signals"]
    assert set(references) == set(SIGNAL_NAMES)
    assert all(len(values) == 360 for values in references.values())
    assert all(0 < v <= 1 for v in references["confidence"])
    assert "classifier.fc2.weight" in load_file(str(artifact_dir / WEIGHTS_FILE))


def test_the_held_out_digits_are_the_drift_reference(artifact_dir: Path) -> None:
    reference = read_reference(artifact_dir)
    assert reference is not None and reference.samples == 360
    assert reference.summary["labelled"] and reference.summary["accuracy"] >= 0.95
    assert sum(row["images"] for row in reference.summary["per_class"].values()) == 360
    metadata = json.loads((artifact_dir / METADATA_FILE).read_text())
    # The same measurement as the metadata's reference signals, not a second one.
    for name, values in metadata["reference_signals"].items():
        np.testing.assert_allclose(reference.signals[name], values)
    assert reference.calibration is not None and 0 <= reference.calibration.ece < 0.1


def test_nothing_is_left_beside_the_artifact(artifact_dir: Path) -> None:
    # The staging folder was renamed into place, not copied and left behind.
    assert [p.name for p in artifact_dir.parent.iterdir()] == [artifact_dir.name]


def test_same_seed_gives_identical_weights(tmp_path: Path) -> None:
    threads, rng_state = torch.get_num_threads(), torch.get_rng_state()
    first = train_default_model(tmp_path / "a", seed=3, epochs=1, progress=False, min_accuracy=0)
    second = train_default_model(tmp_path / "b", seed=3, epochs=1, progress=False, min_accuracy=0)
    other = train_default_model(tmp_path / "c", seed=4, epochs=1, progress=False, min_accuracy=0)
    a, b, c = (load_file(str(r.output / WEIGHTS_FILE)) for r in (first, second, other))
    assert all((a[name] == b[name]).all() for name in a)
    assert any((a[name] != c[name]).any() for name in a)
    assert first.held_out_accuracy == second.held_out_accuracy
    # The caller's torch state is untouched (training seeds and single-threads itself).
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_low_accuracy_writes_nothing_and_keeps_the_old_artifact(tmp_path: Path) -> None:
    output = tmp_path / "model"
    train_default_model(output, epochs=1, progress=False, min_accuracy=0)
    before = (output / METADATA_FILE).read_text()
    with pytest.raises(TrainingError, match="below the required 100%") as caught:
        train_default_model(output, seed=1, epochs=1, progress=False, min_accuracy=1.0)
    assert caught.value.report.held_out_accuracy < 1.0
    assert (output / METADATA_FILE).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_retraining_replaces_an_existing_artifact(tmp_path: Path) -> None:
    output = tmp_path / "model"
    train_default_model(output, seed=0, epochs=1, progress=False, min_accuracy=0)
    train_default_model(output, seed=5, epochs=1, progress=False, min_accuracy=0)
    assert json.loads((output / METADATA_FILE).read_text())["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_refuses_to_overwrite_a_folder_that_is_not_an_artifact(tmp_path: Path) -> None:
    output = tmp_path / "photos"
    output.mkdir()
    (output / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="not a model artifact"):
        train_default_model(output, epochs=1, progress=False)
    assert (output / "holiday.jpg").read_bytes() == b"precious"


def test_progress_bar_is_drawn_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_default_model(tmp_path / "m", epochs=2, progress=True, min_accuracy=0)
    assert "training digits_cnn" in capsys.readouterr().err
