"""Image decoding: bytes or a file in, a PIL image out, or a reason it cannot be used.

Runs in the decode threads. The pixel cap is checked from the header, before any pixel
data is decompressed, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError


class DecodeError(ValueError):
    """The input is not an image we can use; the message says why."""


def read_payload(payload: bytes | Path) -> bytes:
    if isinstance(payload, bytes):
        return payload
    try:
        return payload.read_bytes()
    except IsADirectoryError:
        raise DecodeError(f"{payload.name} is a directory, not an image file") from None
    except OSError as error:
        raise DecodeError(f"cannot read {payload.name}: {error.strerror or error}") from None


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode ``data`` fully, upright (EXIF orientation applied), first frame only."""
    if not data:
        raise DecodeError("empty input: 0 bytes, expected an encoded image (PNG, JPEG, ...)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError(
            f"not a recognised image format ({len(data)} bytes starting {data[:8]!r}); "
            "send PNG, JPEG, GIF, BMP, TIFF or WebP"
        ) from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DecodeError(f"unreadable image header: {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (pipeline.max_image_pixels); resize it before sending"
        )
    if width == 0 or height == 0:
        raise DecodeError(f"image has no pixels ({width}x{height})")
    try:
        image.load()
        return ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        fmt = image.format or "image"
        raise DecodeError(f"corrupt or truncated {fmt} data: {error}") from None
