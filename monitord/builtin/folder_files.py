"""Moving a finished file out of the inbox, and the files written beside it.

Results never overwrite one another: a name already taken gets a short random suffix.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def free_name(target: Path) -> Path:
    """``target``, or a sibling name that is not taken yet (never overwrite a result)."""
    if not os.path.lexists(target):
        return target
    return target.with_name(f"{target.stem}-{uuid.uuid4().hex[:8]}{target.suffix}")


def sidecar(target: Path, suffix: str) -> Path:
    """The file beside ``target`` that describes it: its prediction or its failure reason."""
    return target.with_name(target.name + suffix)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError:
        shutil.move(source, target)  # across file systems: copy, then remove
