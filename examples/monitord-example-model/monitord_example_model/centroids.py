"""The centroid file: class means of downsampled gray images, and held-out feature vectors.

Plain JSON (never pickle), so that loading a file from elsewhere runs no code::

    {"format": "monitord-example-centroids", "version": 1,
     "size": [8, 8],                  # width, height of the gray grid images are reduced to
     "classes": ["0", "1", ...],
     "centroids": [[...64 floats...], ...],   # one mean feature vector per class
     "reference": [[...64 floats...], ...]}   # feature vectors of held-out images

The held-out vectors let the model compute its reference signals at load time, with the
``temperature`` the settings give, instead of freezing values computed with another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

FORMAT = "monitord-example-centroids"
VERSION = 1


class CentroidFileError(ValueError):
    """A centroid file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Centroids:
    """What a centroid file holds, as arrays."""

    #: (width, height) of the gray grid every image is reduced to.
    size: tuple[int, int]
    class_names: tuple[str, ...]
    #: (classes, width * height) float32: each class's mean feature vector.
    means: np.ndarray
    #: (n, width * height) float32: feature vectors of held-out images (may be empty).
    reference: np.ndarray

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "size": list(self.size),
            "classes": list(self.class_names),
            "centroids": self.means.tolist(),
            "reference": self.reference.tolist(),
        }


def features(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """An image as the model sees it: gray, reduced to ``size``, values in [0, 1], (h, w).

    Pure (no shared state), so decode threads may call it concurrently.
    """
    if image.width < size[0] or image.height < size[1]:
        raise ValueError(
            f"the image is {image.width}x{image.height} pixels, smaller than the {size[0]}x{size[1]} "
            "grid the centroids were built on; send images at least that large"
        )
    gray = image.convert("L").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.float32) / np.float32(255.0)


def fit_centroids(
    images: Sequence[Image.Image], labels: Sequence[str], size: tuple[int, int] = (8, 8), held_out_every: int = 4
) -> Centroids:
    """Class means of ``images`` by ``labels``; every ``held_out_every``-th image of each
    class is held out of the means and kept as the reference instead (0: none held out)."""
    if len(images) != len(labels) or not images:
        raise ValueError(f"need as many labels as images, and at least one: got {len(images)} and {len(labels)}")
    class_names = tuple(sorted(set(labels), key=_natural))
    rows = np.stack([features(image, size).reshape(-1) for image in images])
    label_array = np.asarray(labels)
    means, held_out = [], []
    for name in class_names:
        members = rows[label_array == name]
        if held_out_every and len(members) >= 2:
            keep = np.ones(len(members), dtype=bool)
            keep[::held_out_every] = False
            if not keep.any():
                keep[0] = True
            held_out.append(members[~keep])
            members = members[keep]
        means.append(members.mean(axis=0))
    reference = np.concatenate(held_out) if held_out else np.empty((0, rows.shape[1]))
    return Centroids(size, class_names, np.stack(means).astype(np.float32), reference.astype(np.float32))


def save(centroids: Centroids, path: Path) -> None:
    path.write_text(json.dumps(centroids.to_json()), encoding="utf-8")


def load(path: Path) -> Centroids:
    """Read and check a centroid file; ``CentroidFileError`` says what is wrong with it."""
    def bad(why: str) -> CentroidFileError:
        return CentroidFileError(f"centroid file {path}: {why}; make a new one with "
                                 "`python -m monitord_example_model.build DIR FILE`")

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise bad(f"cannot be read ({error.strerror or error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad(f"is not JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise bad(f"is not a centroid file (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise bad(f"has version {data.get('version')!r}; this plugin reads version {VERSION}")
    try:
        width, height = (int(value) for value in data["size"])
        class_names = tuple(str(name) for name in data["classes"])
        means = np.asarray(data["centroids"], dtype=np.float32)
        reference = np.asarray(data.get("reference", []), dtype=np.float32).reshape(-1, width * height)
    except (KeyError, TypeError, ValueError) as error:
        raise bad(f"is malformed ({type(error).__name__}: {error})") from None
    if width < 1 or height < 1:
        raise bad(f"has size {width}x{height}")
    if means.shape != (len(class_names), width * height) or not class_names:
        raise bad(f"holds centroids of shape {means.shape} for {len(class_names)} classes of "
                  f"{width}x{height} pixels; expected ({len(class_names)}, {width * height})")
    return Centroids((width, height), class_names, means, reference)


def _natural(name: str) -> tuple[int, int | str]:
    """Numeric class names in numeric order ("2" before "10"), then the rest by name."""
    return (0, int(name)) if name.isdigit() else (1, name)
