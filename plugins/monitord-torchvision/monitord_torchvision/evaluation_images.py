"""The image sets of ``monitord evaluate``: held-out images, each corruption of them, and
what the model made of every set.

Each set goes once through the serving path (``monitord.reference.run_model``: the core's
decoder, the model's preprocessing, its ``predict``) as the files the daemon would receive,
and keeps every image's signals as the daemon would publish them, ``error`` included
(the images' labels are known) and the embedding projected onto the served reference's
directions. Streams are then drawn from these rows, so no image is run twice.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
from monitord.decode import DecodeError, decode_image, read_payload
from monitord.model import Model
from monitord.reference import (
    FolderContents,
    ReferenceError,
    ReferenceImage,
    ServedReference,
    images_in_folder,
    run_model,
)
from PIL import Image

from .drifts import DRIFT_KINDS, drift_image, scaled_amount

#: The corruptions a scenario can apply, in the order tables list them.
KINDS: tuple[str, ...] = ("rotation", "noise", "blur", "contrast", "brightness", "invert", "class-mix")
#: Each kind's severities by default: shares of its default amount (``DRIFT_KINDS``).
DEFAULT_SEVERITIES: tuple[Fraction, ...] = (Fraction(1, 3), Fraction(2, 3), Fraction(1))
#: The signal a label makes: 1 for a wrong prediction, 0 for a right one (the daemon's name).
ERROR_SIGNAL = "error"


class EvaluationError(ValueError):
    """Input an evaluation cannot use; the message says what to do."""


@dataclass(frozen=True)
class Corruption:
    """One scenario: a kind of drift at a severity (a share of the kind's default amount)."""

    kind: str
    severity: float

    @property
    def amount(self) -> float:
        """The drift's amount in the kind's own units (``DRIFT_KINDS[kind].unit``)."""
        return scaled_amount(self.kind, DRIFT_KINDS[self.kind].default_amount, self.severity)

    @property
    def name(self) -> str:
        return f"{self.kind} {self.amount:.3g}"


@dataclass(frozen=True)
class HeldOut:
    """Labelled held-out images: their pixels (to corrupt) and the files the daemon receives."""

    pixels: list[np.ndarray]
    #: Each image's class name.
    labels: list[str]
    files: list[ReferenceImage]
    #: Where they came from, for the report.
    source: str


@dataclass(frozen=True)
class ImageSignals:
    """The model's signals on one image set, a row per image it could use."""

    #: Signal name → one value per row: the model's signals, ``error`` and the embedding's.
    signals: dict[str, np.ndarray]
    #: Each row's true class index.
    labels: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.labels)

    @property
    def accuracy(self) -> float:
        return float(1.0 - self.signals[ERROR_SIGNAL].mean())


def parse_severities(text: str) -> tuple[Fraction, ...]:
    """``"1/3,2/3,1"`` → shares of each kind's default amount, each in (0, 1]."""
    shares = []
    for part in (piece.strip() for piece in text.split(",")):
        try:
            share = Fraction(part)
        except (ValueError, ZeroDivisionError):
            raise EvaluationError(f"severity {part!r} is not a number; give shares of each kind's default "
                                  "amount, e.g. --severities 1/3,2/3,1") from None
        if not 0 < share <= 1:
            raise EvaluationError(f"severity {part} is outside (0, 1]; a severity is a share of the kind's "
                                  "default amount (1 = the full default, e.g. rotation 90°)")
        shares.append(share)
    if not shares:
        raise EvaluationError("give at least one severity, e.g. --severities 1")
    return tuple(dict.fromkeys(shares))


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"rotation,noise"`` → those kinds, checked against the ones the demo knows."""
    kinds = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise EvaluationError(f"unknown corruption {', '.join(map(repr, unknown)) or repr(text)}; choose from "
                              f"{', '.join(KINDS)}")
    return kinds


def labelled_folder(folder: Path) -> FolderContents:
    """The images of ``folder`` (``DIR/<class>/*``, as ``monitord reference`` reads it),
    listed before the model loads (slow), so a wrong layout is said at once."""
    try:
        contents = images_in_folder(folder)
    except ReferenceError as error:
        raise EvaluationError(str(error)) from None
    if not contents.labelled:
        raise EvaluationError(f"{folder} holds unlabelled images; an evaluation needs the true class of each "
                              "image (DIR/<class>/*.png, the folder names being the model's class names)")
    return contents


def held_out_folder(folder: Path, contents: FolderContents, class_names: Sequence[str], max_pixels: int) -> HeldOut:
    """The labelled images ``labelled_folder`` found, decoded, for a model of ``class_names``."""
    try:
        contents.refuse_unknown_classes(folder, class_names)
    except ReferenceError as error:
        raise EvaluationError(str(error)) from None
    pixels, labels, files = [], [], []
    for image in contents.images:
        try:
            decoded = decode_image(read_payload(image.source), max_pixels)
        except (DecodeError, OSError):
            continue  # the clean run skips and counts it too
        pixels.append(np.asarray(decoded if decoded.mode == "L" else decoded.convert("RGB"), dtype=np.uint8))
        labels.append(str(image.label))
        files.append(image)
    if not files:
        raise EvaluationError(f"none of the {len(contents.images)} image(s) in {folder} could be decoded")
    return HeldOut(pixels, labels, files, str(folder))


def held_out_digits_set(class_names: Sequence[str]) -> HeldOut:
    """The 360 held-out digits the plugin ships (those ``monitord train`` measured and
    built the reference from), as the PNG files the daemon would receive."""
    from .digits import DIGIT_CLASS_NAMES, digit_png_bytes, held_out_digits

    if tuple(class_names) != DIGIT_CLASS_NAMES:
        raise EvaluationError(f"the configured model's classes are {', '.join(list(class_names)[:10])}, not the "
                              "digits 0-9, so the held-out digits cannot stand for its data; give labelled images "
                              "of its own with --data DIR (DIR/<class>/*.png)")
    images, labels = held_out_digits()
    names = [DIGIT_CLASS_NAMES[int(label)] for label in labels]
    files = [ReferenceImage(digit_png_bytes(image), name, name=f"held-out digit {index}")
             for index, (image, name) in enumerate(zip(images, names))]
    return HeldOut(list(images), names, files, "scikit-learn digits, held-out split")


def corrupted_files(held_out: HeldOut, corruption: Corruption, seed: int) -> list[ReferenceImage]:
    """Every held-out image with ``corruption`` applied, as a PNG file (lossless)."""
    rng = np.random.default_rng(seed)
    files = []
    for index, (pixels, label) in enumerate(zip(held_out.pixels, held_out.labels)):
        drifted = _corrupt(pixels, corruption, rng)
        buffer = io.BytesIO()
        Image.fromarray(drifted).save(buffer, format="PNG", compress_level=1)
        files.append(ReferenceImage(buffer.getvalue(), label, name=f"{corruption.name}: held-out image {index}"))
    return files


def _corrupt(pixels: np.ndarray, corruption: Corruption, rng: np.random.Generator) -> np.ndarray:
    # The demo's drifts take one grey channel; each works channel by channel, so colour
    # images get the same drift on every channel.
    if pixels.ndim == 2:
        return drift_image(pixels, corruption.kind, corruption.amount, 1.0, rng)
    channels = [drift_image(np.ascontiguousarray(pixels[:, :, c]), corruption.kind, corruption.amount, 1.0, rng)
                for c in range(pixels.shape[2])]
    return np.stack(channels, axis=2)


def model_signals(model: Model, files: Sequence[ReferenceImage], served: ServedReference, *,
                  batch_size: int = 64, max_pixels: int) -> ImageSignals:
    """What the daemon would publish for each of ``files``: the model's signals, the
    projected embedding (when the served reference has a projection) and ``error``."""
    try:
        outputs = run_model(model, files, batch_size=batch_size, max_pixels=max_pixels)
    except ReferenceError as error:
        raise EvaluationError(str(error)) from None
    labels = np.asarray(outputs.labels, dtype=np.int64)
    signals = dict(outputs.signals)
    if served.projection is not None and outputs.embedding is not None:
        try:
            signals.update(served.projection.project(outputs.embedding))
        except ValueError as error:  # the daemon leaves them out too (and says so in its log)
            raise EvaluationError(f"the model's embedding does not fit the reference's projection ({error}); "
                                  "build the reference again with `monitord reference DIR`") from None
    signals[ERROR_SIGNAL] = (outputs.predicted != labels).astype(np.float64)
    return ImageSignals(signals, labels)
