"""Turning the ``model.device`` setting into a torch device, with errors a user can act on."""

from __future__ import annotations

import re

import torch
from monitord.settings import SettingsError

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(spec: str, *, key: str = "model.device") -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU.

    An explicit ``cuda``/``cuda:N`` on a machine without that GPU is an error rather
    than a silent fallback: someone asked for the GPU, and serving at CPU speed
    instead would surprise them much later, under load.
    """
    value = spec.strip().lower()
    if value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    if value == "cpu":
        return torch.device("cpu")
    match = _CUDA.match(value)
    if match is None:
        raise SettingsError(
            f"{key} = {spec!r}: unknown device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        )
    if not torch.cuda.is_available():
        built = (
            f"torch {torch.__version__} was built without CUDA"
            if torch.version.cuda is None
            else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
        )
        raise SettingsError(
            f"{key} = {spec!r}: CUDA is not available on this machine ({built}); "
            "set it to 'cpu', or to 'auto' to use a GPU only where there is one"
        )
    index = int(match.group(1)) if match.group(1) is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise SettingsError(
            f"{key} = {spec!r}: this machine has {count} CUDA device(s), numbered 0 to "
            f"{count - 1}; pick one of them, or 'auto'"
        )
    return torch.device("cuda", index)
