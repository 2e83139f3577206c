"""A corpus of bad and unusual inputs, generated in code, with what the daemon must do.

Every case names a file (its path under the inbox, or the multipart filename over HTTP),
how to make it (bytes, or a symlink or directory made on disk) and the expected outcome:

- ``ok``: an unusual but valid image; it is classified (processed/ or HTTP 200).
- ``rejected``: bad input; it goes to failed/ with ``<name>.reason.txt`` (HTTP 422) and
  the reason contains ``reason`` (compared case-insensitively).
- ``ignored``: not a file at all (a directory named like an image, a symlink to a
  directory); the daemon leaves it where it is and neither moves nor counts it.

Decisions the cases pin down:

- A symlink whose target lies outside the inbox is refused (failed/, with a reason), so
  the inbox cannot be used to read arbitrary files. A symlink whose target lies inside the
  inbox is an image in its own right: the picture is read through the link, and the link
  (not its target) moves to processed/. The corpus points such links at a hidden folder
  (``.targets/``, never taken itself) so that each picture is counted once: a link to
  another inbox file would classify that picture twice, once under each name.
- A directory is never a file, whatever its name: ``x.png/`` is a folder like any
  other. Its files are taken (``x.png/a.png`` → ``processed/x.png/a.png``) and the folder
  itself stays in the inbox; it is neither moved to failed/ nor counted.
- The extension does not matter, the bytes do: a PNG named ``.jpg`` is classified.

Nothing is downloaded: images are drawn with Pillow and numpy from a fixed seed, so the
corpus is the same bytes on every run.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image

Expect = Literal["ok", "rejected", "ignored"]

#: Where the corpus keeps the targets of its symlinks inside the inbox: hidden, so the
#: daemon never takes them on their own.
TARGETS = ".targets"

#: Makes a case's entry on disk: ``make(path, inbox, outside)``.
Maker = Callable[[Path, Path, Path], None]


@dataclass(frozen=True)
class Case:
    """One input and what the daemon must do with it."""

    name: str
    expect: Expect
    reason: str = ""
    data: bytes | None = None
    make: Maker | None = field(default=None, compare=False)
    #: Whether the case can travel as an HTTP body (plain bytes, a name we can send).
    http: bool = True

    @property
    def relative(self) -> Path:
        return Path(self.name)

    def create(self, inbox: Path, outside: Path, staging: Path) -> None:
        """Put the case in ``inbox``; files appear whole (written in ``staging``, then renamed)."""
        target = inbox / self.relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.make is not None:
            self.make(target, inbox, outside)
            return
        assert self.data is not None, self.name
        staging.mkdir(parents=True, exist_ok=True)
        temporary = staging / f"case-{os.getpid()}-{zlib.crc32(os.fsencode(self.name)):08x}"
        temporary.write_bytes(self.data)
        os.replace(temporary, target)


# -- encoders -------------------------------------------------------------------------


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def digit_like(size: int = 32, seed: int = 0) -> Image.Image:
    """A gray blob on black, vaguely digit-shaped: content the model can classify."""
    y, x = np.mgrid[0:size, 0:size] / size
    ring = np.exp(-(((x - 0.5) ** 2 + (y - 0.5) ** 2) ** 0.5 - 0.3) ** 2 / 0.005)
    noise = _rng(seed).normal(0, 0.05, (size, size))
    return Image.fromarray(np.clip((ring + noise) * 255, 0, 255).astype(np.uint8))


def noise_rgb(size: int = 64, seed: int = 1) -> Image.Image:
    """Random colour pixels: they do not compress, so truncation cuts real pixel data."""
    return Image.fromarray(_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_header(width: int, height: int, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` but holds a few bytes of pixels.

    Decoding it would fail (the data is far too short), so a rejection that speaks of
    the pixel limit proves the header was judged before any decoding.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def gif_with_screen(width: int, height: int) -> bytes:
    """A valid 1x1 GIF whose logical screen declares ``width`` x ``height``."""
    data = bytearray(encode(Image.new("L", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def jpeg_with_frame(width: int, height: int) -> bytes:
    """A small JPEG whose SOF segment is patched to declare ``width`` x ``height``."""
    data = bytearray(encode(Image.new("L", (8, 8), 128), "JPEG"))
    index = 2
    while index < len(data):
        marker, length = data[index + 1], struct.unpack(">H", data[index + 2:index + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[index + 5:index + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        index += 2 + length
    raise AssertionError("no SOF segment in Pillow's JPEG")


def ico_with_png(size: int) -> bytes:
    """An ICO file (a format we do not take) holding one ``size`` x ``size`` PNG."""
    png = encode(Image.new("L", (size, size)), "PNG")
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def exif_rotated_jpeg(orientation: int) -> bytes:
    """A 24x12 JPEG carrying an EXIF orientation tag (applied, it stands 12x24 for 6 and 8)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = Image.new("L", (24, 12), 0)
    image.paste(255, (0, 0, 6, 6))  # one bright corner, so a rotation is visible
    return encode(image, "JPEG", exif=exif, quality=95)


def animated_gif() -> bytes:
    """Three frames of different content; only the first one is classified."""
    frames = [digit_like(24, seed) for seed in range(3)]
    frames[1] = Image.new("L", (24, 24), 255)
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def gray16_png() -> bytes:
    values = (np.asarray(digit_like(16), dtype=np.uint16) * 257).astype(np.uint16)
    return encode(Image.fromarray(values), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(digit_like(24).convert("RGB").convert("CMYK"), "JPEG")


def float_tiff() -> bytes:
    """A 32-bit float TIFF: a valid image in a mode the default model does not take."""
    return encode(Image.fromarray(_rng(2).random((8, 8), dtype=np.float32)), "TIFF")


def large_png(size: int = 3000) -> bytes:
    """A smooth gradient: many pixels, few bytes."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    return encode(Image.fromarray((ramp[None, :] * 0 + ramp[:, None]).astype(np.uint8)), "PNG")


# -- on-disk makers --------------------------------------------------------------------


def _make_target(inbox: Path, name: str, data: bytes | None) -> Path:
    folder = inbox / TARGETS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if data is not None:
        path.write_bytes(data)
    return path


def _atomic_symlink(destination: str | Path, link: Path) -> None:
    staging = link.with_name(f".link-{os.getpid()}")
    os.symlink(destination, staging)
    os.replace(staging, link)


def symlink_outside(path: Path, inbox: Path, outside: Path) -> None:
    target = outside / "secret.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(encode(digit_like(), "PNG"))
    _atomic_symlink(target, path)


def symlink_inside(path: Path, inbox: Path, outside: Path) -> None:
    target = _make_target(inbox, "real.png", encode(digit_like(seed=5), "PNG"))
    _atomic_symlink(os.path.relpath(target, path.parent), path)


def symlink_dangling(path: Path, inbox: Path, outside: Path) -> None:
    _atomic_symlink(_make_target(inbox, "missing.png", None), path)


def symlink_to_fifo(path: Path, inbox: Path, outside: Path) -> None:
    fifo = _make_target(inbox, "pipe", None)
    if not fifo.exists():
        os.mkfifo(fifo)
    _atomic_symlink(fifo, path)


def symlink_to_directory(path: Path, inbox: Path, outside: Path) -> None:
    folder = _make_target(inbox, "a-folder", None)
    folder.mkdir(exist_ok=True)
    _atomic_symlink(folder, path)


def empty_directory(path: Path, inbox: Path, outside: Path) -> None:
    path.mkdir()


# -- names -----------------------------------------------------------------------------


def raw_name(data: bytes) -> str:
    """A file name made of raw bytes, as Python reads it from disk (not UTF-8: surrogates)."""
    return os.fsdecode(data)


LONG_ASCII = "a" * 251 + ".png"  # 255 bytes: NAME_MAX exactly
LONG_CJK = "数" * 83 + ".png"  # 253 bytes, 3 per character
LONG_EMOJI = "\U0001f600" * 62 + ".png"  # 252 bytes, 4 per character
LONG_ACCENTED_BAD = "é" * 125 + ".png"  # 254 bytes, 2 per character; text inside
NOT_UTF8_OK = raw_name(b"latin1-caf\xe9.png")
NOT_UTF8_BAD = raw_name(b"\xff\xfe-broken.png")
NOT_UTF8_DANGLING = raw_name(b"dangling-\xe9.png")

UNRECOGNISED = "not a recognised image format"
OVER_LIMIT = "over the limit of"


def corpus() -> list[Case]:
    """Every case, bad and unusual; the same list (and bytes) on every call."""
    png = encode(digit_like(), "PNG")
    jpeg = encode(digit_like().convert("RGB"), "JPEG", quality=90)
    noisy_png = encode(noise_rgb(), "PNG")
    noisy_jpeg = encode(noise_rgb(), "JPEG", quality=95)
    bad_crc = bytearray(png)
    bad_crc[-20] ^= 0xFF  # inside the last IDAT: the checksum no longer matches
    palette = digit_like().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    rgba = digit_like().convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))))
    return [
        # -- bad: rejected with a reason ------------------------------------------------
        Case("truncated.png", "rejected", "truncated", noisy_png[: len(noisy_png) // 2]),
        Case("truncated.jpg", "rejected", "truncated", noisy_jpeg[: len(noisy_jpeg) // 2]),
        Case("signature-only.png", "rejected", UNRECOGNISED, b"\x89PNG\r\n\x1a\n"),
        Case("bad-crc.png", "rejected", "corrupt", bytes(bad_crc)),
        Case("empty.png", "rejected", "empty input", b""),
        Case("empty.jpg", "rejected", "empty input", b""),
        Case("notes.png", "rejected", UNRECOGNISED, b"Meeting notes\nbring the digits\n" * 20),
        Case("program.jpg", "rejected", UNRECOGNISED,
             b"\x7fELF\x02\x01\x01\x00" + bytes(8) + struct.pack("<HHI", 2, 0x3E, 1) + bytes(200)),
        Case("script.gif", "rejected", UNRECOGNISED, b"#!/bin/sh\necho 'I am not a picture'\nexit 0\n"),
        Case("page.webp", "rejected", UNRECOGNISED, b"<!doctype html><title>404 Not Found</title>"),
        Case("bomb-100000x100000.png", "rejected", OVER_LIMIT, png_with_header(100_000, 100_000)),
        Case("bomb-7000x7000.png", "rejected", OVER_LIMIT, png_with_header(7000, 7000)),
        Case("bomb-65535x65535.gif", "rejected", OVER_LIMIT, gif_with_screen(65535, 65535)),
        Case("bomb-65500x65500.jpg", "rejected", OVER_LIMIT, jpeg_with_frame(65500, 65500)),
        Case("zero-width.png", "rejected", UNRECOGNISED, png_with_header(0, 10)),
        Case("favicon.png", "rejected", UNRECOGNISED, ico_with_png(7000)),
        Case("float32.tif", "rejected", "unsupported image mode", float_tiff()),
        Case(LONG_ACCENTED_BAD, "rejected", UNRECOGNISED, b"not an image, and a long name"),
        Case("outside-link.png", "rejected", "outside the inbox", make=symlink_outside, http=False),
        Case("dangling-link.png", "rejected", "cannot read", make=symlink_dangling, http=False),
        Case("pipe-link.png", "rejected", "not a regular file", make=symlink_to_fifo, http=False),
        # -- unusual but valid: classified ---------------------------------------------
        Case("png-named.jpg", "ok", data=png),
        Case("jpeg-named.png", "ok", data=jpeg),
        Case("gif-named.bmp", "ok", data=encode(digit_like(), "GIF")),
        Case("gray16.png", "ok", data=gray16_png()),
        Case("palette-transparent.png", "ok", data=encode(palette, "PNG")),
        Case("rgba.png", "ok", data=encode(rgba, "PNG")),
        Case("gray-alpha.png", "ok", data=encode(digit_like().convert("LA"), "PNG")),
        Case("bilevel.png", "ok", data=encode(digit_like().convert("1"), "PNG")),
        Case("cmyk.jpg", "ok", data=cmyk_jpeg()),
        Case("gray.jpg", "ok", data=encode(digit_like(), "JPEG")),
        Case("progressive.jpg", "ok", data=encode(digit_like().convert("RGB"), "JPEG", progressive=True)),
        Case("animated.gif", "ok", data=animated_gif()),
        Case("exif-rotate-180.jpg", "ok", data=exif_rotated_jpeg(3)),
        Case("exif-rotate-cw.jpg", "ok", data=exif_rotated_jpeg(6)),
        Case("exif-rotate-ccw.jpg", "ok", data=exif_rotated_jpeg(8)),
        Case("one-pixel.png", "ok", data=encode(Image.new("L", (1, 1), 200), "PNG")),
        Case("large-3000x3000.png", "ok", data=large_png()),
        Case("bitmap.bmp", "ok", data=encode(digit_like(), "BMP")),
        Case("scan.tiff", "ok", data=encode(digit_like(), "TIFF", compression="tiff_lzw")),
        Case("photo.webp", "ok", data=encode(digit_like().convert("RGB"), "WEBP")),
        Case("ünïcödé-数字-\U0001f600.png", "ok", data=png),
        Case("spaces & 'quotes' (1).png", "ok", data=png),
        Case(LONG_ASCII, "ok", data=png),
        Case(LONG_CJK, "ok", data=png),
        Case(LONG_EMOJI, "ok", data=png),
        Case("album.jpg/inner.png", "ok", data=png),
        Case("inside-link.png", "ok", make=symlink_inside, http=False),
        # -- not files: left alone -------------------------------------------------------
        Case("folder.png", "ignored", make=empty_directory, http=False),
        Case("folder-link.png", "ignored", make=symlink_to_directory, http=False),
    ]


def not_utf8_cases() -> list[Case]:
    """Names whose bytes are not UTF-8 (folder only: HTTP has no such names).

    Kept apart from ``corpus()``: watchfiles (the watcher off Linux) cannot report such
    names, so their daemon tests check that they are processed however they are found.
    """
    png = encode(digit_like(), "PNG")
    return [
        Case(NOT_UTF8_OK, "ok", data=png, http=False),
        Case(NOT_UTF8_BAD, "rejected", UNRECOGNISED, b"not an image, and a name that is not UTF-8", http=False),
        Case(NOT_UTF8_DANGLING, "rejected", "cannot read", make=symlink_dangling, http=False),
    ]


def by_expectation(cases: list[Case], expect: Expect) -> list[Case]:
    return [case for case in cases if case.expect == expect]
