"""Shared fixtures: the default model is trained once per session (a few CPU seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from monitord_torchvision.digits import decode_png, digit_png_bytes, held_out_digits
from monitord_torchvision.inference import TorchvisionModel
from monitord_torchvision.loading import load_artifact
from monitord_torchvision.training import TrainingReport, train_default_model


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainingReport:
    output = tmp_path_factory.mktemp("trained") / "model"
    return train_default_model(output, seed=0, progress=False)


@pytest.fixture(scope="session")
def artifact_dir(trained: TrainingReport) -> Path:
    return trained.output


@pytest.fixture(scope="session")
def digits_model(artifact_dir: Path) -> Iterator[TorchvisionModel]:
    model = load_artifact(artifact_dir, device="cpu")
    yield model
    model.close()


@pytest.fixture(scope="session")
def held_out_inputs(digits_model: TorchvisionModel) -> tuple[np.ndarray, np.ndarray]:
    """Held-out digits as the daemon sees them: PNG bytes → PIL → preprocess."""
    images, labels = held_out_digits()
    inputs = np.stack([digits_model.preprocess(decode_png(digit_png_bytes(i))) for i in images])
    return inputs, labels


@pytest.fixture(scope="session")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A randomly initialised 3-class resnet18, saved both ways the plugin reads."""
    folder = tmp_path_factory.mktemp("resnet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = torchvision.models.resnet18(weights=None, num_classes=3)
    state = {name: tensor.contiguous() for name, tensor in network.state_dict().items()}
    save_file(state, str(folder / "resnet18.safetensors"))
    torch.save(state, folder / "resnet18.pt")
    return {"safetensors": folder / "resnet18.safetensors", "pt": folder / "resnet18.pt"}
