"""Drifts for the demo: held-out digit images in, drifted digit images out.

Each kind changes the images the way a real deployment drifts (a camera turned, a noisy
sensor, a focus problem, new lighting, a flipped polarity, a changed mix of classes).
Every kind takes an ``amount`` in its own units (the full-strength drift) and an
``intensity`` between 0 and 1, so a gradual scenario can ramp the strength: intensity 0
always returns the image unchanged, intensity 1 applies the full ``amount``.

Images are the daemon's input format: uint8 arrays (H, W), 0–255, bright ink on dark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

#: Mid-grey, the level contrast changes pull towards.
MID_GREY = 127.5


@dataclass(frozen=True)
class DriftKind:
    """One kind of drift: its name on the command line, its amount and what that means."""

    name: str
    default_amount: float
    #: What ``amount`` measures, for ``--help`` and error messages.
    unit: str
    describe: str


DRIFT_KINDS: dict[str, DriftKind] = {
    kind.name: kind
    for kind in (
        DriftKind("rotation", 90.0, "degrees, counter-clockwise", "the camera turned"),
        DriftKind("noise", 100.0, "std dev of Gaussian noise, grey levels", "a noisy sensor"),
        DriftKind("blur", 1.0, "Gaussian blur radius, pixels", "a focus problem"),
        DriftKind("contrast", 0.3, "contrast factor, 1 = unchanged", "washed-out images"),
        DriftKind("brightness", 100.0, "grey levels added, negative darkens", "new lighting"),
        DriftKind("invert", 1.0, "share of the inversion, 0-1", "flipped polarity"),
        DriftKind("class-mix", 1.0, "share of images from --classes, 0-1", "a new mix of classes"),
    )
}

#: The kinds that change the pixels (class-mix changes which images arrive instead).
PIXEL_KINDS = tuple(name for name in DRIFT_KINDS if name != "class-mix")


class DriftError(ValueError):
    """A drift that cannot be applied; the message names the bad value."""


def _rotate(image: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    # PIL turns exact multiples of 90 degrees into a lossless transpose.
    rotated = Image.fromarray(image).rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=0)
    return np.asarray(rotated, dtype=np.uint8)


def _noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noisy = image.astype(np.float64) + rng.normal(0.0, sigma, size=image.shape)
    return _to_uint8(noisy)


def _blur(image: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(blurred, dtype=np.uint8)


def _contrast(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(MID_GREY + (image.astype(np.float64) - MID_GREY) * factor)


def _brightness(image: np.ndarray, offset: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(image.astype(np.float64) + offset)


def _invert(image: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    pixels = image.astype(np.float64)
    return _to_uint8(pixels + share * (255.0 - 2.0 * pixels))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


#: Pixel transforms, each given the amount already scaled by the intensity.
_TRANSFORMS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "rotation": _rotate,
    "noise": _noise,
    "blur": _blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "invert": _invert,
}


def scaled_amount(kind: str, amount: float, intensity: float) -> float:
    """The amount in effect at ``intensity``: a straight line from "no change" to ``amount``.

    The no-change point is 1 for contrast (a factor) and 0 for every other kind.
    """
    neutral = 1.0 if kind == "contrast" else 0.0
    return neutral + (amount - neutral) * intensity


def validate_drift(kind: str, amount: float) -> None:
    """Raise ``DriftError`` for an unknown kind or an amount the kind cannot use."""
    if kind not in DRIFT_KINDS:
        raise DriftError(f"unknown drift {kind!r}; choose one of {', '.join(DRIFT_KINDS)}")
    if not np.isfinite(amount):
        raise DriftError(f"the {kind} amount must be a finite number, got {amount}")
    unit = DRIFT_KINDS[kind].unit
    if kind in ("noise", "blur", "contrast") and amount < 0:
        raise DriftError(f"the {kind} amount ({unit}) must be 0 or more, got {amount}")
    if kind in ("invert", "class-mix") and not 0.0 <= amount <= 1.0:
        raise DriftError(f"the {kind} amount ({unit}) must be between 0 and 1, got {amount}")


def drift_image(
    image: np.ndarray,
    kind: str,
    amount: float | None = None,
    intensity: float = 1.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One digit image drifted by ``kind`` at ``intensity`` (0–1) of ``amount``.

    ``amount`` defaults to the kind's ``default_amount``; ``rng`` drives the noise (pass a
    seeded one for a reproducible scenario). class-mix leaves pixels alone: it changes
    which images arrive (see ``class_mix_share``). Returns a new uint8 array, same shape.
    """
    if kind not in DRIFT_KINDS:
        validate_drift(kind, 0.0)  # raises, naming the known kinds
    amount = DRIFT_KINDS[kind].default_amount if amount is None else float(amount)
    validate_drift(kind, amount)
    if not 0.0 <= intensity <= 1.0:
        raise DriftError(f"intensity must be between 0 and 1, got {intensity}")
    pixels = np.asarray(image)
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise DriftError(f"expected a 2-D uint8 image, got shape {pixels.shape} dtype {pixels.dtype}")
    if kind == "class-mix" or intensity == 0.0:
        return pixels.copy()
    effective = scaled_amount(kind, amount, intensity)
    return _TRANSFORMS[kind](pixels, effective, rng if rng is not None else np.random.default_rng())


def class_mix_share(amount: float, intensity: float) -> float:
    """Share of images a class-mix drift draws from its chosen classes at ``intensity``."""
    return scaled_amount("class-mix", amount, intensity)
