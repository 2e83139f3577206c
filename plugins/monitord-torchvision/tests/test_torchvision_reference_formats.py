"""``monitord reference DIR`` on models brought from elsewhere: a TorchScript program and a
torchvision ResNet-18 with local weights and its weights' transforms (issue 17).

Run as a user runs it (the CLI in a subprocess, then the daemon): the reference holds one
row per image, the embedding the model gives (the program's features, the ResNet's 512
pooled features), the model's fingerprint, and the daemon serves it; a reference built for
other weights stops the daemon with what to do.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from monitord.reference import read_reference
from monitord.settings import ModelSettings
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from monitord_torchvision.plugin import torchvision_model

CORE_TESTS = Path(__file__).parents[3] / "tests"
if str(CORE_TESTS) not in sys.path:
    sys.path.insert(0, str(CORE_TESTS))

from daemon_process import DaemonProcess, free_port  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:FutureWarning")


class ColourNet(nn.Module):
    """Returns ``(logits, features)``: 6 pooled channels, 2 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.head(features), features


def write_images(folder: Path, classes: list[str], per_class: int, size: tuple[int, int], fmt: str) -> int:
    """Noisy images tinted by class (``folder/<class>/<n>.<fmt>``)."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for n in range(per_class):
            pixels = rng.integers(0, 120, (*size, 3), dtype=np.uint8)
            pixels[..., index % 3] += 120
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format=fmt)
            (folder / name / f"{n}.{fmt.lower()}").write_bytes(buffer.getvalue())
    return per_class * len(classes)


def reference(tmp_path: Path, toml: str, images: Path) -> tuple[DaemonProcess, subprocess.CompletedProcess[str]]:
    daemon = DaemonProcess(tmp_path, free_port(), extra_settings=toml)
    env = {**daemon.env, "MONITORD_MODEL__DEVICE": "cpu"}
    done = subprocess.run([sys.executable, "-m", "monitord", "reference", str(images), "--config", str(daemon.config),
                           "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return daemon, done


def ready_reference(daemon: DaemonProcess) -> tuple[dict, dict[str, dict]]:
    """What ``/readyz`` says of the reference, and ``/v1/detectors`` by detector name."""
    daemon.start()
    try:
        with urllib.request.urlopen(daemon.url + "/readyz", timeout=10) as answer:
            served = json.loads(answer.read())["reference"]
        with urllib.request.urlopen(daemon.url + "/v1/detectors", timeout=10) as answer:
            detectors = {d["name"]: d for d in json.loads(answer.read())["detectors"]}
        return served, detectors
    finally:
        assert daemon.terminate() == 0


def test_monitord_reference_on_a_torchscript_program(tmp_path: Path) -> None:
    torch.manual_seed(0)
    program = tmp_path / "colours.pt"
    torch.jit.save(torch.jit.script(ColourNet().eval()), str(program))
    toml = f'[model]\nprogram = "{program}"\nclasses = ["red", "green"]\ninput_size = [16, 16]\n'
    images = tmp_path / "validation"
    count = write_images(images, ["red", "green"], 80, (20, 24), "PNG")  # NM-DDM's window needs 150
    daemon, done = reference(tmp_path, toml, images)
    assert f"images: {count} in" in done.stdout and "accuracy:" in done.stdout
    assert "principal directions of 6 dimensions" in done.stdout  # the program's features
    built = read_reference(daemon.state / "model")
    assert built is not None and built.samples == count and built.summary["labelled"]
    assert set(built.summary["per_class"]) <= {"red", "green"}
    model = torchvision_model(ModelSettings(program=str(program), classes=["red", "green"], input_size=[16, 16],
                                            device="cpu"), tmp_path)
    try:
        assert built.fingerprint == model.fingerprint
    finally:
        model.close()
    served, _ = ready_reference(daemon)
    assert served["source"] == "artifact" and served["samples"] == count


def test_monitord_reference_on_a_resnet18_with_local_weights_and_its_transforms(tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = torchvision.models.resnet18(weights=None, num_classes=3)
    weights = tmp_path / "resnet18.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in network.state_dict().items()}, str(weights))
    # Detectors on the confidence and on the embedding's first principal direction, which
    # exists only with the reference: the start-up check must accept it.
    toml = ('detectors = [{ type = "pht", signal = "confidence" }, { type = "iks", signal = "embedding_1" }]\n'
            f'[model]\narchitecture = "resnet18"\nweights = "{weights}"\nclasses = ["a", "b", "c"]\n'
            'transforms = "ResNet18_Weights.IMAGENET1K_V1"\n')
    images = tmp_path / "validation"
    count = write_images(images, ["a", "b", "c"], 6, (240, 320), "JPEG")  # resized to 256, cropped to 224
    daemon, done = reference(tmp_path, toml, images)
    assert f"images: {count} in" in done.stdout
    assert "principal directions of 512 dimensions" in done.stdout  # the pooled features fc starts from
    assert read_reference(daemon.state / "model").samples == count
    served, detectors = ready_reference(daemon)
    assert served["source"] == "artifact"
    assert detectors["iks_embedding_1"]["reference"] == "model"
    assert detectors["iks_embedding_1"]["reference_samples"] == count

    # Other weights under the same name: the reference no longer describes the model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        retrained = torchvision.models.resnet18(weights=None, num_classes=3)
    save_file({name: tensor.contiguous() for name, tensor in retrained.state_dict().items()}, str(weights))
    daemon.start(wait_ready=False)
    assert daemon.process.wait(300) == 1
    assert "built for another version of model resnet18" in daemon.log()
    assert "monitord reference DIR" in daemon.log()
