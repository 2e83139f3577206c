"""Reading weights files into a network, with errors that say which file and why.

Only formats that cannot run code are read: safetensors, and ``torch.load`` with
``weights_only=True`` (a pickle restricted to tensors and plain containers).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .errors import ModelLoadError

#: Keys under which training scripts commonly nest the state dict in a checkpoint.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


def read_state_dict(path: Path, *, key: str = "model.weights") -> dict[str, torch.Tensor]:
    """Tensors by parameter name from a ``.safetensors`` file or a torch state dict."""
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "no such file"
        raise ModelLoadError(
            f"{key} = '{path}': {what}; give the path of the trained weights "
            "(.safetensors, or a .pt/.pth state dict saved with torch.save(model.state_dict()))"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: object = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # each library raises its own types for a bad file
        raise ModelLoadError(
            f"{key} = '{path}': cannot be read as "
            f"{'safetensors' if path.suffix == '.safetensors' else 'a torch state dict'} "
            f"({type(error).__name__}: {error}); if it is a whole pickled model rather than "
            "a state dict, re-save it with torch.save(model.state_dict(), path)"
        ) from None
    state = _unwrap(loaded)
    if state is None:
        raise ModelLoadError(
            f"{key} = '{path}': holds a {type(loaded).__name__}, not a state dict of tensors; "
            "save the weights with torch.save(model.state_dict(), path)"
        )
    return state


def _unwrap(loaded: object) -> dict[str, torch.Tensor] | None:
    if not isinstance(loaded, Mapping):
        return None
    if loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        state = {str(k): v for k, v in loaded.items()}
        # Weights saved from nn.DataParallel carry a "module." prefix on every key.
        if all(k.startswith("module.") for k in state):
            state = {k[len("module.") :]: v for k, v in state.items()}
        return state
    for nested in _NESTED_KEYS:
        if isinstance(loaded.get(nested), Mapping):
            return _unwrap(loaded[nested])
    return None


def load_weights(
    network: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    architecture: str,
    num_classes: int,
    classes_key: str = "model.classes",
) -> None:
    """Fill ``network`` from ``state``, explaining any mismatch in user terms.

    The usual mismatch is a class list that does not match the training run, so it is
    recognised and reported as such before the generic "wrong architecture" message.
    """
    expected = network.state_dict()
    for name, tensor in state.items():
        target = expected.get(name)
        if target is None or target.shape == tensor.shape or tensor.ndim == 0:
            continue
        if target.shape[0] == num_classes and tensor.shape[1:] == target.shape[1:]:
            raise ModelLoadError(
                f"{source} was trained for {tensor.shape[0]} classes ({name} has shape "
                f"{list(tensor.shape)}), but {classes_key} lists {num_classes}; list the "
                f"{tensor.shape[0]} class names in the order the model was trained with"
            )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        name for name in set(expected) & set(state) if expected[name].shape != state[name].shape
    )
    if missing or unexpected or mismatched:
        details = []
        for label, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", mismatched),
        ):
            if names:
                more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                details.append(f"{label}: {', '.join(names[:3])}{more}")
        raise ModelLoadError(
            f"{source} does not fit architecture {architecture!r} ({'; '.join(details)}); "
            "check that model.architecture names the network these weights were trained with"
        )
    network.load_state_dict(state, strict=True)
