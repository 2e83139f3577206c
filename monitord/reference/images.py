"""The images a reference is built from: a folder of validation images, labelled or not.

``DIR/<class>/*`` is the labelled layout (the folder names are the model's class names,
as torchvision's ``ImageFolder`` and ``monitord train --data`` read them); a folder of
image files with no class folders is unlabelled. Anything else is refused with the layout
expected, because a reference silently built from the wrong images would make every later
drift verdict wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from monitord.decode import FORMATS

#: File extensions read as images: those Pillow maps to a format the core decodes.
IMAGE_SUFFIXES = frozenset(suffix for suffix, fmt in Image.registered_extensions().items() if fmt in FORMATS)


class ReferenceError(ValueError):
    """The reference cannot be built, read or used; the message says what to do."""


@dataclass(frozen=True)
class ReferenceImage:
    """One image of the reference set: a file or its bytes, and its class name if known."""

    source: Path | bytes
    label: str | None = None
    #: How messages name it; a file's path by default.
    name: str = ""

    @property
    def display(self) -> str:
        if self.name:
            return self.name
        return str(self.source) if isinstance(self.source, Path) else f"<{len(self.source)} bytes>"


@dataclass(frozen=True)
class FolderContents:
    """What ``images_in_folder`` found: the images, and the files it passed over."""

    images: list[ReferenceImage]
    labelled: bool
    #: Files whose extension is not an image's (hidden files are not counted).
    ignored: list[Path]

    def refuse_unknown_classes(self, folder: Path, class_names: Sequence[str]) -> None:
        """``ReferenceError`` when a class folder names no class of the model."""
        known = set(class_names)
        unknown = sorted({image.label for image in self.images if image.label is not None and image.label not in known})
        if unknown:
            raise ReferenceError(
                f"{folder}: folder(s) {', '.join(unknown[:5])} name no class of the model; its classes are "
                f"{', '.join(list(class_names)[:10])}{' ...' if len(class_names) > 10 else ''} (folder names must "
                "be class names, exactly)")


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def images_in_folder(folder: Path, class_names: Sequence[str] | None = None) -> FolderContents:
    """The images of ``folder``, in a stable order (sorted by path).

    With sub-folders, each holds one class's images and its name must be one of
    ``class_names`` (when given). Without, the images directly in ``folder`` are unlabelled.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ReferenceError(f"{folder} {what}; give a folder of validation images, one sub-folder per class "
                             "(DIR/<class>/*.png) or the images directly in it")
    entries = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    classes = [path for path in entries if path.is_dir()]
    loose = [path for path in entries if path.is_file()]
    if classes and any(is_image_file(path) for path in loose):
        raise ReferenceError(
            f"{folder} holds both class folders ({', '.join(p.name for p in classes[:3])}) and images; "
            "put every image in its class's folder (DIR/<class>/image.png), or use a folder without sub-folders "
            "for unlabelled images")
    if not classes:
        images = [ReferenceImage(path) for path in loose if is_image_file(path)]
        ignored = [path for path in loose if not is_image_file(path)]
        if not images:
            raise ReferenceError(_no_images(folder))
        return FolderContents(images, False, ignored)
    images, ignored = [], list(loose)
    for class_folder in classes:
        files = sorted(path for path in class_folder.rglob("*") if path.is_file() and not path.name.startswith("."))
        images.extend(ReferenceImage(path, class_folder.name) for path in files if is_image_file(path))
        ignored.extend(path for path in files if not is_image_file(path))
    if not images:
        raise ReferenceError(_no_images(folder))
    contents = FolderContents(images, True, ignored)
    if class_names is not None:
        contents.refuse_unknown_classes(folder, class_names)
    return contents


def _no_images(folder: Path) -> str:
    return (f"{folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); give a folder of validation "
            "images, one sub-folder per class (DIR/<class>/*.png) or the images directly in it")
