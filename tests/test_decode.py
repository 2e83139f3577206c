"""Decoding: good images come out upright, bad input gets a reason that says what was wrong."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from monitord.decode import DecodeError, decode_image, read_payload


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
def test_common_formats_decode(fmt: str) -> None:
    image = decode_image(encode(Image.new("RGB", (12, 7), (200, 10, 10)), fmt), max_pixels=10_000)
    assert image.size == (12, 7)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = encode(Image.new("RGB", (20, 10)), "JPEG", exif=exif)
    assert decode_image(data, max_pixels=10_000).size == (10, 20)


def test_truncated_png_names_the_problem() -> None:
    data = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")
    with pytest.raises(DecodeError, match="corrupt or truncated PNG"):
        decode_image(data[: len(data) // 2], max_pixels=100_000)


def test_text_with_an_image_extension_is_not_an_image() -> None:
    with pytest.raises(DecodeError, match="not a recognised image format"):
        decode_image(b"hello, I am a text file pretending to be a PNG", max_pixels=100)


def test_pixel_cap_refuses_from_the_header() -> None:
    data = encode(Image.new("L", (300, 300)), "PNG")
    with pytest.raises(DecodeError, match="90000 pixels, over the limit of 1000"):
        decode_image(data, max_pixels=1000)


def test_read_payload_reports_unreadable_paths(tmp_path: Path) -> None:
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DecodeError, match="is a directory"):
        read_payload(tmp_path / "dir.png")
    with pytest.raises(DecodeError, match="cannot read missing.png"):
        read_payload(tmp_path / "missing.png")
    (tmp_path / "ok.png").write_bytes(b"abc")
    assert read_payload(tmp_path / "ok.png") == b"abc"
