"""Watching one layer of a network during inference, for the activation signals.

Drift often shows in a network's internal features before it shows in its confidence,
so the plugin summarises one layer per image (mean and std). By default that layer is
the input of the first ``nn.Linear``: the pooled convolutional features, the embedding
every classifier head starts from. (Measured on the digits model with images rotated by
90°, the Kolmogorov-Smirnov distance of the per-image mean is 0.46 there, against 0.12
at the input of the last ``nn.Linear``, whose units are trained to ignore what the
classes do not need.)

The same layer gives the embedding (``BatchResult.embedding``): one vector per image, the
layer's output averaged over any dimensions beyond the channels, so a (N, C, H, W)
convolution output becomes (N, C).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .errors import ModelLoadError
from .signals import activation_statistics, pooled_features


@dataclass(frozen=True)
class LayerReading:
    """The watched features of one batch: mean and std per image (float64, (N,)) and the
    embedding (float32, (N, D)), all on the host."""

    mean: np.ndarray
    std: np.ndarray
    embedding: np.ndarray


class FeatureSource(Protocol):
    """Where a model's activation signals and embedding come from: a hooked layer
    (``ActivationProbe``) or a program's own output (``programs.ProgramOutputs``)."""

    #: What the features are, for logs and the fingerprint (e.g. ``input of fc``).
    description: str

    def reset(self) -> None:
        """Forget the last forward pass (called before each one)."""

    def logits(self, output: Any) -> Any:
        """The logits within the network's output; ``ValueError`` saying why if absent."""

    def read(self, output: Any, batch_size: int) -> LayerReading:
        """The features of the forward pass that returned ``output``; ``RuntimeError``
        saying why when they cannot be had."""

    def failure_message(self, error: str) -> str:
        """What a user should read when ``read`` failed at start-up with ``error``."""

    def remove(self) -> None:
        """Release hooks (safe to call twice)."""


def default_layer(network: nn.Module) -> tuple[str, nn.Module]:
    """The first ``nn.Linear`` (its input is the pooled features of the backbone).

    Networks without one (SqueezeNet ends in a 1×1 convolution) fall back to the last
    module that holds parameters, whose input plays the same role.
    """
    named = list(network.named_modules())
    for name, module in named:
        if isinstance(module, nn.Linear):
            return name, module
    for name, module in reversed(named):
        if next(module.children(), None) is None and any(True for _ in module.parameters(False)):
            return name, module
    raise ModelLoadError(
        "the network has no layer with parameters to watch; set model.activation_layer"
    )


class ActivationProbe:
    """Hooks one layer and keeps per-image statistics of the last forward pass.

    With ``layer=None`` it watches the *input* of ``default_layer`` (a forward
    pre-hook); with a dotted module name, that module's *output* (a forward hook).
    """

    def __init__(
        self, network: nn.Module, layer: str | None, *, key: str = "model.activation_layer"
    ) -> None:
        self._stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._problem: str | None = None
        if layer is None:
            name, module = default_layer(network)
            self.description = f"input of {name}"
            self._handle = module.register_forward_pre_hook(self._on_input)
        else:
            modules = dict(network.named_modules())
            if layer not in modules or layer == "":
                raise ModelLoadError(_unknown_layer_message(layer, modules, key))
            self.description = f"output of {layer}"
            self._handle = modules[layer].register_forward_hook(self._on_output)
        self.layer = layer

    def _on_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._store(args)

    def _on_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._store(output)

    def _store(self, value: Any) -> None:
        tensor = _first_tensor(value)
        if tensor is None or tensor.ndim == 0:
            self._problem = f"the {self.description} is not a batched tensor"
            return
        self._stats = (*activation_statistics(tensor), pooled_features(tensor))

    def reset(self) -> None:
        self._stats = None
        self._problem = None

    def logits(self, output: Any) -> Any:
        """A hooked network returns its logits as its whole output."""
        return output

    def read(self, output: Any, batch_size: int) -> LayerReading:
        """The hooked layer's reading from the forward pass that just ran."""
        if self._problem is not None:
            raise RuntimeError(self._problem)
        if self._stats is None:
            raise RuntimeError(f"the watched layer ({self.description}) did not run")
        mean, std, embedding = self._stats
        if mean.shape[0] != batch_size:
            raise RuntimeError(
                f"the {self.description} has {mean.shape[0]} rows for {batch_size} images; "
                "its first dimension is not the batch"
            )
        self._stats = None
        return LayerReading(
            mean=mean.cpu().numpy(), std=std.cpu().numpy(), embedding=embedding.cpu().numpy()
        )

    def failure_message(self, error: str) -> str:
        return (
            f"model.activation_layer: {error}; pick a layer that runs on every forward "
            "pass and returns a (batch, ...) tensor"
        )

    def remove(self) -> None:
        self._handle.remove()


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _unknown_layer_message(layer: str, modules: dict[str, nn.Module], key: str) -> str:
    names = [name for name in modules if name]
    close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    shown = names if len(names) <= 12 else [*names[:6], "...", *names[-6:]]
    return (
        f"{key} = {layer!r}: the network has no module of that name; {hint}"
        f"module names are dotted paths such as {', '.join(shown)} ({len(names)} in all; "
        "print the network, or leave the key unset to watch the pooled backbone features)"
    )
