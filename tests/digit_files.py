"""Held-out digits as PNG files, dropped into an inbox the way a careful producer would."""

from __future__ import annotations

import os
from pathlib import Path

from monitord_torchvision.digits import digit_png_bytes, held_out_digits


def held_out_pngs(count: int) -> list[tuple[int, bytes]]:
    images, labels = held_out_digits()
    assert len(images) >= count, f"held-out split has only {len(images)} digits"
    return [(int(labels[i]), digit_png_bytes(images[i])) for i in range(count)]


def drop_atomically(inbox: Path, relative: str, data: bytes) -> Path:
    """Write beside the inbox, then rename into place: the reader sees all or nothing."""
    target = inbox / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = inbox.parent / f".staging-{os.getpid()}-{target.name}"
    staging.write_bytes(data)
    os.replace(staging, target)
    return target


def files_under(folder: Path, pattern: str = "*.png") -> list[Path]:
    return sorted(p for p in folder.rglob(pattern) if p.is_file()) if folder.exists() else []


def write_digit_folder(folder: Path, held_out: bool = True, per_class: int | None = None) -> dict[str, int]:
    """Digits as ``folder/<class>/<n>.png`` (the layout ``monitord reference`` reads); counts per class."""
    from monitord_torchvision.digits import training_digits

    images, labels = held_out_digits() if held_out else training_digits()
    counts: dict[str, int] = {}
    for index, (image, label) in enumerate(zip(images, labels)):
        name = str(int(label))
        if per_class is not None and counts.get(name, 0) >= per_class:
            continue
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / f"{index}.png").write_bytes(digit_png_bytes(image))
        counts[name] = counts.get(name, 0) + 1
    return counts
