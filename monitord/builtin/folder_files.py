"""Moving a finished file out of the inbox, and the files written beside it.

Results never overwrite one another: a name already taken gets a short random suffix.

File names are limited to ``NAME_MAX`` bytes (255 on Linux file systems), counted in the
file system's encoding, where one character of a UTF-8 name can take up to 4 bytes. A file
whose name is already near the limit cannot take a suffix as it is, so the names derived
here (``<name>.json``, ``<name>.reason.txt``, the ``-<random>`` of ``free_name`` and the
temporary file of ``write_atomically``) shorten the name's start, on a character
boundary, to fit; a sidecar then also carries a short hash of the full name, so two long
names that share their beginning keep apart.

The folder source calls these for every file, so they take plain ``str`` paths as well
as ``Path`` objects (and give back the kind they were given), and they create a missing
destination folder only when an operation finds it missing, instead of asking first.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import TypeVar

#: The longest file name, in bytes, that the file systems we run on accept.
NAME_MAX = 255
#: A longer "extension" is just part of the name: ``free_name`` may shorten it.
MAX_SUFFIX_BYTES = 32
#: A name of at most this many characters fits in ``NAME_MAX`` bytes with any suffix
#: derived here, whatever its characters (4 bytes each at most): no need to count bytes.
_SURELY_SHORT = (NAME_MAX - 64) // 4

_P = TypeVar("_P", str, Path)


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


def free_name(target: _P) -> _P:
    """``target``, or a sibling name that is not taken yet (never overwrite a result)."""
    if not os.path.lexists(target):
        return target
    path = Path(target)
    tag = f"-{uuid.uuid4().hex[:8]}"
    stem, suffix = path.stem, path.suffix
    if name_bytes(suffix) > MAX_SUFFIX_BYTES:  # not an extension: keep the name's start instead
        stem, suffix = path.name, ""
    stem = shorten(stem, NAME_MAX - name_bytes(tag + suffix))
    free = path.with_name(f"{stem}{tag}{suffix}")
    return free if isinstance(target, Path) else str(free)


def sidecar(target: _P, suffix: str) -> _P:
    """The file beside ``target`` that describes it: its prediction or its failure reason.

    ``<name><suffix>`` where that fits in ``NAME_MAX`` bytes; otherwise the start of the
    name, ``~``, 8 hex digits of the full name's SHA-256, and the suffix.
    """
    name = os.path.basename(target)
    if len(name) <= _SURELY_SHORT or name_bytes(name + suffix) <= NAME_MAX:
        return target.with_name(name + suffix) if isinstance(target, Path) else target + suffix
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    tail = f"~{digest}{suffix}"
    short = shorten(name, NAME_MAX - name_bytes(tail)) + tail
    return target.with_name(short) if isinstance(target, Path) else os.path.join(os.path.dirname(target), short)


def write_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file, then a rename).

    Characters that UTF-8 cannot hold (lone surrogates from a file name that is not UTF-8)
    are written as backslash escapes rather than failing the write.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    # A fixed name: a write a crash interrupted is redone (from the ledger) under the same
    # name, so the half-written temporary is replaced instead of left behind.
    tag = ".tmp"
    if len(name) > _SURELY_SHORT:
        name = shorten(name, NAME_MAX - 1 - name_bytes(tag))
    temporary = os.path.join(folder, "." + name + tag)
    data = text.encode("utf-8", "backslashreplace")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(temporary, flags, 0o666)
    except FileNotFoundError:  # the folder is new
        os.makedirs(folder or ".", exist_ok=True)
        fd = os.open(temporary, flags, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def move(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move ``source`` to ``target``, creating the target's folder when it is missing.

    A rename where it can be; across file systems a copy, then a delete.
    """
    try:
        os.replace(source, target)
        return
    except FileNotFoundError:
        folder = os.path.dirname(target)
        if not folder or os.path.isdir(folder):
            raise  # the source is gone
        os.makedirs(folder, exist_ok=True)
        try:
            os.replace(source, target)
            return
        except OSError:
            pass
    except OSError:
        pass
    shutil.move(source, target)  # across file systems: copy, then remove
