"""The model factory: artifact folders, first-start training, and their errors."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from monitord.settings import ModelSettings, SettingsError

import monitord_torchvision.training as training
from monitord_torchvision.artifact import METADATA_FILE, WEIGHTS_FILE
from monitord_torchvision.errors import ModelLoadError
from monitord_torchvision.loading import load_model


def test_loads_the_artifact_named_in_settings(artifact_dir: Path, tmp_path: Path) -> None:
    model = load_model(ModelSettings(artifact=artifact_dir, device="cpu"), tmp_path)
    try:
        assert model.name == "digits_cnn" and model.device == "cpu"
        assert len(model.reference_signals["confidence"]) == 360
    finally:
        model.close()


def test_default_artifact_is_state_dir_model(artifact_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(artifact_dir, tmp_path / "model")
    model = load_model(ModelSettings(device="cpu"), tmp_path)
    model.close()
    assert model.name == "digits_cnn"


def test_activation_layer_setting_applies_to_artifacts(artifact_dir: Path, tmp_path: Path) -> None:
    settings = ModelSettings(artifact=artifact_dir, device="cpu", activation_layer="features.relu1")
    model = load_model(settings, tmp_path)
    try:
        assert model.activation_layer == "output of features.relu1"
        result = model.predict(np.zeros((1, 1, 8, 8), dtype=np.float32))
        assert result.signals["activation_mean"][0] >= 0  # after a ReLU
    finally:
        model.close()


def test_no_artifact_and_no_training_says_to_run_train(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load_model(ModelSettings(train_if_missing=False), tmp_path / "state")
    message = str(caught.value)
    assert "monitord train" in message and str(tmp_path / "state" / "model") in message
    assert "train_if_missing" in message
    assert not (tmp_path / "state").exists()


def test_missing_artifact_is_trained_on_first_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = training.train_default_model
    calls: list[Path] = []

    def quick(output: Path, **kwargs: object) -> training.TrainingReport:
        calls.append(output)
        assert kwargs.get("progress") is False  # no progress bar inside the daemon
        return real(output, **{**kwargs, "epochs": 2, "min_accuracy": 0.0})

    monkeypatch.setattr(training, "train_default_model", quick)
    caplog.set_level(logging.INFO, logger="monitord.torchvision")
    model = load_model(ModelSettings(device="cpu"), tmp_path)
    try:
        assert calls == [tmp_path / "model"]
        assert (tmp_path / "model" / METADATA_FILE).is_file()
        assert (tmp_path / "model" / WEIGHTS_FILE).is_file()
        assert model.name == "digits_cnn" and len(model.reference_signals["entropy"]) == 360
    finally:
        model.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "monitord.torchvision"]
    assert any("training the default digits model" in m for m in messages)
    assert any("held-out accuracy" in m for m in messages)


def test_folder_that_is_not_an_artifact_is_not_trained_over(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    with pytest.raises(ModelLoadError, match="exists but is not a model artifact"):
        load_model(ModelSettings(), tmp_path)
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine"


def test_corrupt_metadata_is_reported_with_its_path(artifact_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "model"
    shutil.copytree(artifact_dir, broken)
    metadata = json.loads((broken / METADATA_FILE).read_text())
    del metadata["class_names"]
    (broken / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(
        ModelLoadError, match=r"metadata\.json is not valid artifact metadata \(class_names"
    ):
        load_model(ModelSettings(device="cpu"), tmp_path)
    (broken / METADATA_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot be read"):
        load_model(ModelSettings(device="cpu"), tmp_path)


def test_artifact_from_a_newer_format_asks_for_an_upgrade(
    artifact_dir: Path, tmp_path: Path
) -> None:
    newer = tmp_path / "model"
    shutil.copytree(artifact_dir, newer)
    metadata = json.loads((newer / METADATA_FILE).read_text())
    metadata["format_version"] = 99
    (newer / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(ModelLoadError, match="upgrade monitord-torchvision"):
        load_model(ModelSettings(device="cpu"), tmp_path)


def test_artifact_weights_that_do_not_match_its_class_list(
    artifact_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "model"
    shutil.copytree(artifact_dir, broken)
    metadata = json.loads((broken / METADATA_FILE).read_text())
    metadata["class_names"] = metadata["class_names"][:9]
    (broken / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(ModelLoadError, match="trained for 10 classes .* class_names in .* lists 9"):
        load_model(ModelSettings(device="cpu"), tmp_path)


def test_bad_options_fail_before_anything_is_trained(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"model\.train_if_mising: unknown setting"):
        load_model(ModelSettings(train_if_mising=False), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_device_fails_before_anything_is_trained(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"model\.device = 'gpu'"):
        load_model(ModelSettings(device="gpu"), tmp_path)
    assert list(tmp_path.iterdir()) == []
