"""A folder of labelled images for ``monitord train --data``: its classes and its split.

Two layouts, as torchvision's ``ImageFolder`` reads them: ``DIR/train/<class>/*`` with
``DIR/val/<class>/*``, or ``DIR/<class>/*``, from which a seeded, stratified share is held
out for validation. Class names are the sorted folder names, so the model's output order
follows from the folder alone. Only file names are read here; decoding (and skipping the
files that turn out unreadable) is the trainer's job, which decodes every image anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monitord.reference.images import IMAGE_SUFFIXES, is_image_file  # one rule for training and the reference

#: Share of each class held out for validation when the folder has no val/ split.
VAL_FRACTION = 0.2
TRAIN_FOLDER, VAL_FOLDER = "train", "val"

LAYOUT = (
    "expected DIR/train/<class>/<image> and DIR/val/<class>/<image>, or DIR/<class>/<image> "
    f"(then {VAL_FRACTION:.0%} of each class is held out for validation); images are "
    f"{', '.join(sorted(IMAGE_SUFFIXES))} files"
)


class DatasetError(ValueError):
    """The folder cannot be trained on; the message says what is wrong and the layout."""


@dataclass(frozen=True)
class LabelledImage:
    """One image file and the index of its class in ``ImageFolderDataset.class_names``."""

    path: Path
    class_index: int


@dataclass(frozen=True)
class ImageFolderDataset:
    """The images found, split into training and validation."""

    root: Path
    class_names: tuple[str, ...]
    train: tuple[LabelledImage, ...]
    val: tuple[LabelledImage, ...]
    #: Whether validation was held out here (seeded) rather than read from DIR/val.
    split_made: bool
    seed: int
    #: Files in the class folders whose extension is not an image's.
    ignored: tuple[Path, ...]

    def describe(self) -> str:
        """Where the data came from, for ``metadata.json`` and the summary (the image
        counts there are those actually read, after unreadable files are skipped)."""
        if self.split_made:
            how = (
                f"{self.root}/<class>/, {VAL_FRACTION:.0%} of each class held out for "
                f"validation (stratified, seed {self.seed})"
            )
        else:
            how = f"{self.root}/{TRAIN_FOLDER}/<class>/ and {self.root}/{VAL_FOLDER}/<class>/"
        return f"image folder {how}, {len(self.class_names)} classes"


def discover(root: Path, *, seed: int, val_fraction: float = VAL_FRACTION) -> ImageFolderDataset:
    """The classes and images under ``root``, or ``DatasetError`` saying what is amiss.

    Files are listed in sorted order (recursively within a class folder; hidden ones
    skipped), so the same folder and seed always give the same split.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"{root} {what}; {LAYOUT}")
    subfolders = {path.name: path for path in _visible(root) if path.is_dir()}
    has_train, has_val = TRAIN_FOLDER in subfolders, VAL_FOLDER in subfolders
    if has_train != has_val:
        present, absent = (TRAIN_FOLDER, VAL_FOLDER) if has_train else (VAL_FOLDER, TRAIN_FOLDER)
        raise DatasetError(
            f"{root} has {present}/ but no {absent}/; add {root / absent}/<class>/ with "
            f"images, or put the class folders directly in {root} to have a validation "
            f"share held out; {LAYOUT}"
        )
    if has_train:
        train_classes, train_ignored = _classes_in(subfolders[TRAIN_FOLDER])
        val_classes, val_ignored = _classes_in(subfolders[VAL_FOLDER])
        _check_same_classes(root, train_classes, val_classes)
        class_names = tuple(sorted(train_classes))
        train = _labelled(train_classes, class_names)
        val = _labelled(val_classes, class_names)
        return ImageFolderDataset(
            root, class_names, train, val, False, seed, (*train_ignored, *val_ignored)
        )
    classes, ignored = _classes_in(root)
    class_names = tuple(sorted(classes))
    train, val = split_stratified(classes, class_names, seed=seed, val_fraction=val_fraction)
    return ImageFolderDataset(root, class_names, train, val, True, seed, ignored)


def split_stratified(
    classes: dict[str, list[Path]],
    class_names: tuple[str, ...],
    *,
    seed: int,
    val_fraction: float = VAL_FRACTION,
) -> tuple[tuple[LabelledImage, ...], tuple[LabelledImage, ...]]:
    """``(train, val)``: ``val_fraction`` of each class, at least one image where the class
    has two or more, drawn with ``seed``.

    Written out rather than taken from scikit-learn's ``train_test_split``, which refuses
    a class with a single image and rounds the held-out share over the whole set, not per
    class.
    """
    rng = np.random.default_rng(seed)
    train: list[LabelledImage] = []
    val: list[LabelledImage] = []
    for index, name in enumerate(class_names):
        paths = classes[name]
        held = min(len(paths) - 1, max(1, round(len(paths) * val_fraction)))
        chosen = set(rng.permutation(len(paths))[:held].tolist())
        for position, path in enumerate(paths):
            (val if position in chosen else train).append(LabelledImage(path, index))
    return tuple(train), tuple(val)


def _visible(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if not path.name.startswith("."))


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _classes_in(folder: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Class name → its image files, and the non-image files passed over."""
    entries = _visible(folder)
    class_folders = [path for path in entries if path.is_dir()]
    loose_images = [path for path in entries if path.is_file() and is_image_file(path)]
    if not class_folders:
        images = f"{len(loose_images)} images but " if loose_images else ""
        raise DatasetError(f"{folder} holds {images}no class folders; {LAYOUT}")
    if loose_images:
        names = ", ".join(path.name for path in loose_images[:3])
        more = " ..." if len(loose_images) > 3 else ""
        raise DatasetError(
            f"{folder} holds images outside the class folders ({names}{more}); move each into "
            f"its class's folder; {LAYOUT}"
        )
    classes: dict[str, list[Path]] = {}
    ignored: list[Path] = []
    empty: list[str] = []
    for class_folder in class_folders:
        files = sorted(
            path
            for path in class_folder.rglob("*")
            if path.is_file() and not _hidden(path.relative_to(folder))
        )
        images = [path for path in files if is_image_file(path)]
        ignored.extend(path for path in files if not is_image_file(path))
        if not images:
            empty.append(class_folder.name)
        classes[class_folder.name] = images
    if empty:
        raise DatasetError(
            f"{folder}: class folder(s) {', '.join(empty)} hold no images; every class needs "
            f"at least one (remove the folder if it is not a class); {LAYOUT}"
        )
    return classes, ignored


def _check_same_classes(
    root: Path, train: dict[str, list[Path]], val: dict[str, list[Path]]
) -> None:
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    if only_train or only_val:
        parts = []
        if only_train:
            parts.append(f"only in {TRAIN_FOLDER}/: {', '.join(only_train)}")
        if only_val:
            parts.append(f"only in {VAL_FOLDER}/: {', '.join(only_val)}")
        raise DatasetError(
            f"{root}: {TRAIN_FOLDER}/ and {VAL_FOLDER}/ must hold the same class folders "
            f"({'; '.join(parts)}); add the missing folders or remove the extra ones"
        )


def _labelled(
    classes: dict[str, list[Path]], class_names: tuple[str, ...]
) -> tuple[LabelledImage, ...]:
    return tuple(
        LabelledImage(path, index)
        for index, name in enumerate(class_names)
        for path in classes[name]
    )
