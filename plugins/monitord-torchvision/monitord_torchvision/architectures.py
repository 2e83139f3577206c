"""Network architectures by name: the default ``digits_cnn`` and torchvision's classifiers.

Networks are always built with random weights and filled from a local weights file
afterwards: the daemon must never reach the network to fetch pretrained weights.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict

import torch
from torch import nn

from .errors import ModelLoadError

DIGITS_CNN = "digits_cnn"


class DigitsCNN(nn.Module):
    """A small CNN for the 8×8 scikit-learn digits.

    Sized to train in seconds on two CPU cores while reaching ~98% held-out accuracy,
    so that a fresh install has a real model to monitor without downloading anything.
    The adaptive pooling lets the same layers take other input sizes. Layers are named
    (``features.conv3``, ``classifier.fc1``) so ``activation_layer`` reads well.
    """

    def __init__(self, num_classes: int = 10, channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(channels, 32, kernel_size=3, padding=1),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(32, 64, kernel_size=3, padding=1),
                relu2=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv3=nn.Conv2d(64, 64, kernel_size=3, padding=1),
                relu3=nn.ReLU(),
                pool2=nn.AdaptiveMaxPool2d(2),
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(64 * 2 * 2, 128),
                relu=nn.ReLU(),
                dropout=nn.Dropout(0.25),
                fc2=nn.Linear(128, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def torchvision_classifiers() -> list[str]:
    """Classification architectures this torchvision knows (no detection/segmentation)."""
    import torchvision  # here, not above: it costs a second, and the digits CNN never needs it

    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_architectures() -> list[str]:
    """Every name ``build_network`` accepts."""
    return [DIGITS_CNN, *torchvision_classifiers()]


def build_network(
    architecture: str, num_classes: int, channels: int, *, key: str = "model.architecture"
) -> nn.Module:
    """A randomly initialised network with ``num_classes`` outputs.

    ``key`` names where the architecture came from (a setting, or an artifact's
    metadata) so that the error says what to fix.
    """
    # The random initial weights are overwritten by a weights file right after; drawing
    # them from a forked generator keeps loading a model from shifting the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        return _build(architecture, num_classes, channels, key)


def _build(architecture: str, num_classes: int, channels: int, key: str) -> nn.Module:
    if architecture == DIGITS_CNN:
        return DigitsCNN(num_classes=num_classes, channels=channels)
    import torchvision

    known = torchvision_classifiers()
    if architecture not in known:
        close = difflib.get_close_matches(architecture, [DIGITS_CNN, *known], n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        examples = ", ".join(
            [
                DIGITS_CNN,
                "resnet18",
                "resnet50",
                "mobilenet_v3_small",
                "efficientnet_b0",
                "convnext_tiny",
                "vit_b_16",
            ]
        )
        raise ModelLoadError(
            f"{key} = {architecture!r}: not an architecture torchvision "
            f"{torchvision.__version__} knows; {hint}valid names include {examples} "
            f"({len(known) + 1} in all, see torchvision.models.list_models())"
        )
    if channels != 3:
        raise ModelLoadError(
            f"model.channels = {channels}: torchvision's {architecture} takes 3-channel "
            "input; set model.channels = 3 (grayscale images are then repeated over RGB)"
        )
    try:
        return torchvision.models.get_model(architecture, weights=None, num_classes=num_classes)
    except (TypeError, ValueError) as error:
        raise ModelLoadError(
            f"{key} = {architecture!r}: torchvision cannot build it with "
            f"{num_classes} classes ({error})"
        ) from None
