"""``monitord train``, attached to a fresh group the way the core attaches it."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from monitord_torchvision import plugin
from monitord_torchvision.artifact import METADATA_FILE
from monitord_torchvision.loading import load_artifact


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> click.Group:
    # Settings read .env and MONITORD_* variables: isolate them from the developer's.
    monkeypatch.chdir(tmp_path)
    for name in [n for n in __import__("os").environ if n.startswith("MONITORD_")]:
        monkeypatch.delenv(name)
    group = click.Group("monitord")
    plugin.register_commands(group)
    return group


def test_train_writes_a_servable_artifact(cli: click.Group, tmp_path: Path) -> None:
    output = tmp_path / "out" / "model"
    result = CliRunner().invoke(cli, ["train", "--output", str(output), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "held-out accuracy: " in result.stdout
    assert f"wrote model artifact to {output.resolve()}" in result.stdout
    accuracy = json.loads((output / METADATA_FILE).read_text())["held_out_accuracy"]
    assert accuracy >= 0.95 and f"{accuracy:.2%}" in result.stdout
    model = load_artifact(output, device="cpu")
    model.close()


def test_config_decides_the_default_output(cli: click.Group, tmp_path: Path) -> None:
    config = tmp_path / "monitord.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n\n[model]\ndevice = "cpu"\n')
    args = ["train", "--config", str(config), "--epochs", "1", "--min-accuracy", "0", "--seed", "7"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    metadata = json.loads((tmp_path / "state" / "model" / METADATA_FILE).read_text())
    assert metadata["seed"] == 7 and metadata["epochs"] == 1
    assert "on cpu" in result.stdout


def test_accuracy_below_the_minimum_fails_and_writes_nothing(
    cli: click.Group, tmp_path: Path
) -> None:
    output = tmp_path / "model"
    args = ["train", "--output", str(output), "--epochs", "1", "--min-accuracy", "1.0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "below the required 100%" in result.stderr
    assert not output.exists()


def test_settings_errors_exit_2_with_the_message(cli: click.Group, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert "Traceback" not in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nport = 99999\n")
    result = CliRunner().invoke(cli, ["train", "--config", str(bad)])
    assert result.exit_code == 2 and "http.port = 99999" in result.stderr
    result = CliRunner().invoke(cli, ["train", "--output", "x", "--device", "tpu"])
    assert result.exit_code == 2 and "--device = 'tpu': unknown device" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_a_gpu(cli: click.Group, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--output", str(tmp_path / "m"), "--device", "cuda"])
    assert result.exit_code == 2 and "CUDA is not available" in result.stderr


def test_will_not_overwrite_a_folder_that_is_not_an_artifact(
    cli: click.Group, tmp_path: Path
) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    result = CliRunner().invoke(cli, ["train", "--output", str(tmp_path / "photos")])
    assert result.exit_code == 1 and "not a model artifact" in result.stderr
    assert (tmp_path / "photos" / "a.jpg").exists()


def test_warns_when_settings_serve_another_architecture(cli: click.Group, tmp_path: Path) -> None:
    config = tmp_path / "monitord.toml"
    config.write_text(
        '[model]\narchitecture = "resnet18"\nweights = "w.pt"\nclasses = ["a", "b"]\n'
    )
    result = CliRunner().invoke(
        cli, ["train", "--config", str(config), "--epochs", "1", "--min-accuracy", "0"]
    )
    assert result.exit_code == 0, result.output
    assert "model.architecture = 'resnet18' is set" in result.stderr
    assert (tmp_path / "state" / "model" / METADATA_FILE).is_file()


def test_help_lists_the_options(cli: click.Group) -> None:
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert result.exit_code == 0
    for option in ("--config", "--output", "--epochs", "--seed", "--device", "--min-accuracy"):
        assert option in result.output
