"""Decoding: good images come out upright, bad input gets a reason that says what was wrong."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from monitord.decode import FORMATS, DecodeError, decode_image, read_payload


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


# -- bad and unusual input (see tests/bad_inputs.py for the whole corpus) ----------------


def test_a_decompression_bomb_is_refused_from_its_header_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    from bad_inputs import gif_with_screen, jpeg_with_frame, png_with_header

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for data in (png_with_header(100_000, 100_000), png_with_header(7000, 7000), gif_with_screen(65535, 65535),
                 jpeg_with_frame(65500, 65500)):
        with pytest.raises(DecodeError, match="over the limit of 40000000"):
            decode_image(data, max_pixels=40_000_000)


def test_formats_outside_the_list_are_not_opened() -> None:
    """ICO decodes while opening (past the pixel cap); EPS would run Ghostscript."""
    from bad_inputs import ico_with_png

    with pytest.raises(DecodeError, match="not a recognised image format"):
        decode_image(ico_with_png(64), max_pixels=10**9)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(DecodeError, match="not a recognised image format"):
        decode_image(eps, max_pixels=10**9)
    assert set(FORMATS) == {"PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"}


@pytest.mark.parametrize("error", [IndexError("list index out of range"), struct.error("unpack requires 4 bytes"),
                                   EOFError(), TypeError("bad tile"), MemoryError()])
def test_any_failure_while_decoding_is_a_decode_error(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """Pillow raises many exception types on hostile files; all are the input's fault."""
    def failing(self: ImageFile.ImageFile) -> None:
        raise error

    monkeypatch.setattr(ImageFile.ImageFile, "load", failing)
    with pytest.raises(DecodeError, match=f"corrupt or truncated PNG data: {type(error).__name__}"):
        decode_image(encode(Image.new("L", (4, 4)), "PNG"), max_pixels=100)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("L", (6, 6), 10), Image.new("L", (6, 6), 250)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    image = decode_image(data, max_pixels=100)
    assert image.convert("L").getpixel((3, 3)) == 10


@pytest.mark.parametrize("orientation, size, bright", [(1, (24, 12), (1, 1)), (3, (24, 12), (22, 10)),
                                                       (6, (12, 24), (10, 1)), (8, (12, 24), (1, 22))])
def test_every_exif_rotation_comes_out_upright(orientation: int, size: tuple[int, int],
                                               bright: tuple[int, int]) -> None:
    from bad_inputs import exif_rotated_jpeg

    image = decode_image(exif_rotated_jpeg(orientation), max_pixels=10_000)
    assert image.size == size
    assert image.convert("L").getpixel(bright) > 200  # the bright corner moved with the rotation


def test_sixteen_bit_gray_keeps_its_depth() -> None:
    from bad_inputs import gray16_png

    assert decode_image(gray16_png(), max_pixels=10_000).mode in {"I;16", "I"}


def test_read_payload_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    """A FIFO reached through a symlink in the inbox would block a decode thread for good."""
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path / "pipe", tmp_path / "pipe.png")
    with pytest.raises(DecodeError, match="pipe.png is not a regular file"):
        read_payload(tmp_path / "pipe.png")


def test_read_payload_refuses_a_link_to_a_directory_and_a_loop(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    os.symlink(tmp_path / "folder", tmp_path / "folder.png")
    with pytest.raises(DecodeError, match="folder.png is a directory"):
        read_payload(tmp_path / "folder.png")
    os.symlink("loop.png", tmp_path / "loop.png")
    with pytest.raises(DecodeError, match="cannot read loop.png: Too many levels of symbolic links"):
        read_payload(tmp_path / "loop.png")


def test_a_name_that_is_not_utf8_is_shown_with_escapes(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.png")
    with pytest.raises(DecodeError) as raised:
        read_payload(tmp_path / name)
    message = str(raised.value)
    assert "caf\\xe9.png" in message
    message.encode("utf-8")  # writable to a UTF-8 file or a JSON body as it is


def test_a_file_that_grew_after_fstat_is_read_to_its_end(tmp_path, monkeypatch) -> None:
    """One read of its size plus one byte takes a file whole; one that has grown since
    ``fstat`` (a writer appending) is read on to its end, across several reads."""
    from monitord import decode

    data = bytes(range(256)) * 6000  # 1.5 MB: more than one read of 1 MiB
    path = tmp_path / "grown.png"
    path.write_bytes(data)
    assert decode.read_payload(path) == data
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:
        status = real_fstat(fd)
        return os.stat_result((*status[:6], 10, *status[7:10]))

    monkeypatch.setattr(decode.os, "fstat", stale_fstat)
    assert decode.read_payload(path) == data
