"""Image decoding: bytes or a file in, a PIL image out, or a reason it cannot be used.

Runs in the decode threads. The pixel cap is checked from the header, before any pixel
data is decompressed, so a decompression bomb costs nothing. Only the formats named in
``FORMATS`` are opened: for each of them the header's size is the decoded size, whereas
some other Pillow formats decode while opening (ICO) or hand the file to an external
program (EPS, via Ghostscript), which would defeat the cap or widen what untrusted bytes
can reach.

Whatever Pillow raises while parsing untrusted bytes is a property of the input, not a
fault of ours, so every exception from the parse becomes a ``DecodeError`` with a reason.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

#: The Pillow formats we open (JPEG includes its multi-picture variant, MPO).
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")


class DecodeError(ValueError):
    """The input is not an image we can use; the message says why."""


def display_name(path: Path) -> str:
    """The file's name for a message: bytes that are not UTF-8 shown as ``\\xNN`` escapes.

    A name read from disk may hold bytes that are not valid UTF-8 (Python keeps them as
    lone surrogates); such a string cannot be written to a UTF-8 file or a JSON body.
    """
    return os.fsencode(path.name).decode("utf-8", "backslashreplace")


def read_payload(payload: bytes | Path) -> bytes:
    """The bytes to decode: ``payload`` itself, or the content of the regular file it names.

    Opened without blocking and checked with ``fstat`` before reading, so a path that leads
    (through a symlink) to a FIFO, a device or a directory is refused instead of blocking
    a decode thread forever or reading without end.
    """
    if isinstance(payload, bytes):
        return payload
    name = display_name(payload)
    try:
        fd = os.open(payload, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except IsADirectoryError:
        raise DecodeError(f"{name} is a directory, not an image file") from None
    except OSError as error:
        raise DecodeError(f"cannot read {name}: {error.strerror or error}") from None
    try:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            raise DecodeError(f"{name} is a directory, not an image file")
        if not stat.S_ISREG(status.st_mode):
            raise DecodeError(f"{name} is not a regular file (a FIFO, socket or device); send image files only")
        # A regular file ignores O_NONBLOCK, and a read shorter than asked means its end:
        # one read of a byte more than its size takes it whole (open, fstat, read, close;
        # a file object adds two fcntl, another fstat, an lseek and a second read, which
        # cost more than decoding a small image on a virtual machine's file system).
        data = os.read(fd, status.st_size + 1)
        if len(data) <= status.st_size:
            return data
        chunks = [data]  # it grew since fstat: read on to its end
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as error:
        raise DecodeError(f"cannot read {name}: {error.strerror or error}") from None
    finally:
        os.close(fd)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode ``data`` fully, upright (EXIF orientation applied), first frame only."""
    if not data:
        raise DecodeError("empty input: 0 bytes, expected an encoded image (PNG, JPEG, ...)")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise DecodeError(
            f"not a recognised image format ({len(data)} bytes starting {data[:8]!r}); "
            "send PNG, JPEG, GIF, BMP, TIFF or WebP"
        ) from None
    except Image.DecompressionBombError:
        # Pillow's own guard fired first: the header declares far more than any cap.
        raise DecodeError(
            f"image header declares dimensions far over the limit of {max_pixels} pixels "
            "(pipeline.max_image_pixels); refused before decoding (a likely decompression bomb)"
        ) from None
    except Exception as error:  # noqa: BLE001 - any parse failure is bad input
        raise DecodeError(f"unreadable image header: {_describe(error)}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (pipeline.max_image_pixels); resize it before sending"
        )
    if width == 0 or height == 0:
        raise DecodeError(f"image has no pixels ({width}x{height})")
    fmt = image.format or "image"
    try:
        image.load()
        upright = ImageOps.exif_transpose(image) or image
    except Exception as error:  # noqa: BLE001 - truncated or corrupt data, malformed EXIF
        raise DecodeError(f"corrupt or truncated {fmt} data: {_describe(error)}") from None
    if upright.width * upright.height > max_pixels:  # a format that grew while loading
        raise DecodeError(
            f"image decoded to {upright.width}x{upright.height} pixels, over the limit of "
            f"{max_pixels} (pipeline.max_image_pixels)"
        )
    return upright


def _describe(error: Exception) -> str:
    """The exception's message, with its type where the message alone says little."""
    text = str(error)
    if isinstance(error, OSError) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
