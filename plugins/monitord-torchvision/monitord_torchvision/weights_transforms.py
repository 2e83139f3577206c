"""``model.transforms``: the preprocessing a torchvision weights entry was trained with.

torchvision records it with the weights (``weights.transforms()``: an
``ImageClassification`` preset holding the resize, centre crop, mean, std and
interpolation), so naming the entry is the surest way to preprocess as the model was
trained. Only that metadata is read; nothing is downloaded.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

from .preprocess import Interpolation


@dataclass(frozen=True)
class WeightsTransform:
    """The values of one weights entry's ``transforms()``, in ``PreprocessSpec`` terms."""

    name: str
    #: The centre crop, (height, width): the model's input size.
    input_size: tuple[int, int]
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: Interpolation


#: What torchvision's ``ImageClassification`` preset holds (segmentation, detection and
#: video presets lack the crop or more).
_CLASSIFICATION_PRESET = ("crop_size", "resize_size", "mean", "std", "interpolation", "antialias")


class UnknownTransform(ValueError):
    """The name is not a torchvision weights entry with an image classification preset."""


@lru_cache(maxsize=16)
def weights_transform(name: str) -> WeightsTransform:
    """The preset of ``name`` ("ResNet18_Weights.IMAGENET1K_V1", any name
    ``torchvision.models.get_weight`` accepts), or ``UnknownTransform`` saying why not,
    with the closest known names when it is not one."""
    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (ValueError, KeyError):
        raise UnknownTransform(_unknown(name)) from None
    preset = weights.transforms()
    if not all(hasattr(preset, key) for key in _CLASSIFICATION_PRESET):
        raise UnknownTransform(
            f"{name}.transforms() is {type(preset).__name__}, not an image classification "
            "preset (resize, centre crop, normalise); name the weights of a classifier"
        )
    interpolation = preset.interpolation.value
    if interpolation not in ("bilinear", "bicubic") or not preset.antialias:
        raise UnknownTransform(
            f"{name}.transforms() resizes with {interpolation}"
            f"{'' if preset.antialias else ' without antialiasing'}, which monitord does "
            "not reproduce (it resizes with antialiased bilinear or bicubic)"
        )
    crop = preset.crop_size[0]
    return WeightsTransform(
        name=name,
        input_size=(crop, crop),
        resize_size=preset.resize_size[0],
        mean=tuple(float(value) for value in preset.mean),
        std=tuple(float(value) for value in preset.std),
        interpolation=interpolation,
    )


def _unknown(name: str) -> str:
    known = _weights_names()
    by_lower = {known_name.lower(): known_name for known_name in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    hint = (
        f"did you mean {' or '.join(repr(by_lower[match]) for match in close)}?"
        if close
        else "names look like 'ResNet18_Weights.IMAGENET1K_V1' (torchvision.models.get_weight)"
    )
    return f"not a torchvision weights entry; {hint}"


@lru_cache(maxsize=1)
def _weights_names() -> tuple[str, ...]:
    """Every "Enum.ENTRY" name torchvision knows, aliases such as DEFAULT included."""
    from torchvision.models import get_model_weights, list_models

    names: set[str] = set()
    for model in list_models():
        enum = get_model_weights(model)
        names.update(f"{enum.__name__}.{entry}" for entry in enum.__members__)
    return tuple(sorted(names))
