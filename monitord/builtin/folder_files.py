"""Moving a finished file out of the inbox, and the files written beside it.

Results never overwrite one another: a name already taken gets a short random suffix.

File names are limited to ``NAME_MAX`` bytes (255 on Linux file systems), counted in the
file system's encoding, where one character of a UTF-8 name can take up to 4 bytes. A file
whose name is already near the limit cannot take a suffix as it is, so the names derived
here (``<name>.json``, ``<name>.reason.txt``, the ``-<random>`` of ``free_name`` and the
temporary file of ``write_atomically``) shorten the name's start, on a character
boundary, to fit; a sidecar then also carries a short hash of the full name, so two long
names that share their beginning keep apart.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

#: The longest file name, in bytes, that the file systems we run on accept.
NAME_MAX = 255
#: A longer "extension" is just part of the name: ``free_name`` may shorten it.
MAX_SUFFIX_BYTES = 32


def name_bytes(name: str) -> int:
    """Length of ``name`` on disk, in bytes (names that are not UTF-8 count their raw bytes)."""
    try:
        return len(os.fsencode(name))
    except UnicodeEncodeError:  # a surrogate that no file name produced
        return len(name.encode("utf-8", "surrogatepass"))


def shorten(name: str, max_bytes: int) -> str:
    """The longest start of ``name`` that takes at most ``max_bytes`` on disk.

    Cut between characters, never inside one, so a UTF-8 name stays valid UTF-8.
    """
    if name_bytes(name) <= max_bytes:
        return name
    used = 0
    for index, character in enumerate(name):
        used += name_bytes(character)
        if used > max_bytes:
            return name[:index]
    return name


def free_name(target: Path) -> Path:
    """``target``, or a sibling name that is not taken yet (never overwrite a result)."""
    if not os.path.lexists(target):
        return target
    tag = f"-{uuid.uuid4().hex[:8]}"
    stem, suffix = target.stem, target.suffix
    if name_bytes(suffix) > MAX_SUFFIX_BYTES:  # not an extension: keep the name's start instead
        stem, suffix = target.name, ""
    stem = shorten(stem, NAME_MAX - name_bytes(tag + suffix))
    return target.with_name(f"{stem}{tag}{suffix}")


def sidecar(target: Path, suffix: str) -> Path:
    """The file beside ``target`` that describes it: its prediction or its failure reason.

    ``<name><suffix>`` where that fits in ``NAME_MAX`` bytes; otherwise the start of the
    name, ``~``, 8 hex digits of the full name's SHA-256, and the suffix.
    """
    whole = target.name + suffix
    if name_bytes(whole) <= NAME_MAX:
        return target.with_name(whole)
    digest = hashlib.sha256(os.fsencode(target.name)).hexdigest()[:8]
    tail = f"~{digest}{suffix}"
    return target.with_name(shorten(target.name, NAME_MAX - name_bytes(tail)) + tail)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file, then a rename).

    Characters that UTF-8 cannot hold (lone surrogates from a file name that is not UTF-8)
    are written as backslash escapes rather than failing the write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fixed name: a write a crash interrupted is redone (from the ledger) under the same
    # name, so the half-written temporary is replaced instead of left behind.
    tag = ".tmp"
    temporary = path.with_name("." + shorten(path.name, NAME_MAX - 1 - name_bytes(tag)) + tag)
    try:
        temporary.write_text(text, encoding="utf-8", errors="backslashreplace")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError:
        shutil.move(source, target)  # across file systems: copy, then remove
