"""The marker check that decides which JPEGs are decoded on the device."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from monitord.decode import DecodeError, decode_image
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from monitord_torchvision.jpeg_scan import NotPlainJpeg, scan_jpeg

# torchvision 0.29 deprecates its codecs (for TorchCodec) and warns on every call.
pytestmark = pytest.mark.filterwarnings("ignore:.*TorchCodec:DeprecationWarning")


def jpeg(pixels: np.ndarray, mode: str | None = None, **options: object) -> bytes:
    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def noise(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("options", "components", "progressive"),
    [
        ({"quality": 90}, 3, False),
        ({"quality": 5, "subsampling": 0}, 3, False),
        ({"optimize": True, "subsampling": 2}, 3, False),
        ({"progressive": True}, 3, True),
        ({"mode": "L", "progressive": True}, 1, True),
        ({"mode": "L", "quality": 75}, 1, False),
    ],
)
def test_everyday_jpegs_pass_with_their_layout(options: dict, components: int, progressive: bool) -> None:
    mode = options.pop("mode", None)
    layout = scan_jpeg(jpeg(noise(), mode, **options))
    assert (layout.width, layout.height) == (64, 48)
    assert layout.components == components and layout.progressive is progressive
    assert layout.scans > 1 if progressive else layout.scans == 1


def test_exif_trailing_bytes_and_restart_markers_pass() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    assert scan_jpeg(jpeg(noise(), exif=exif.tobytes())).width == 64
    assert scan_jpeg(jpeg(noise()) + b"\x00trailer after the end").height == 48
    # Pillow writes DRI + RSTn markers with `restart_marker_blocks`.
    with_restarts = jpeg(noise(), restart_marker_blocks=1)
    assert b"\xff\xdd" in with_restarts and b"\xff\xd0" in with_restarts
    assert scan_jpeg(with_restarts).scans == 1


def sof_offset(data: bytes) -> int:
    return data.index(b"\xff\xc0")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: d[:-2], "without an end-of-image marker"),
        (lambda d: d[: d.index(b"\xff\xda")], "truncated"),
        (lambda d: b"\x89PNG" + d[4:], "start-of-image"),
        (lambda d: d[:sof_offset(d) + 1] + b"\xc9" + d[sof_offset(d) + 2 :], "arithmetic-coded"),
        (lambda d: d[:sof_offset(d) + 4] + b"\x0c" + d[sof_offset(d) + 5 :], "12-bit"),
        (lambda d: d[:sof_offset(d) + 5] + b"\x00\x00" + d[sof_offset(d) + 7 :], "64x0 pixels"),
        # Every code count of the first Huffman table set to 1: more codes than fit.
        (lambda d: d[: d.index(b"\xff\xc4") + 5] + b"\x01" * 16 + d[d.index(b"\xff\xc4") + 21 :], "Huffman"),
        # The scan's first component renamed to one the frame does not have.
        (lambda d: d[: d.index(b"\xff\xda") + 5] + b"\x09" + d[d.index(b"\xff\xda") + 6 :], "component 9"),
    ],
)
def test_damaged_or_unusual_jpegs_are_refused_with_a_reason(damage, reason: str) -> None:
    with pytest.raises(NotPlainJpeg, match=reason):
        scan_jpeg(damage(jpeg(noise(), quality=90)))


def test_cmyk_goes_the_pillow_way() -> None:
    with pytest.raises(NotPlainJpeg, match="4 colour components"):
        scan_jpeg(jpeg(noise(), "CMYK"))


def test_what_passes_the_check_decodes_with_pillow_and_libjpeg() -> None:
    """The property the device path relies on: a JPEG the check lets through decodes,
    both with the core's Pillow decoder and with torchvision's. Random damage to real
    JPEGs (bytes changed in the headers or the data, cut, or inserted), seeded."""
    rng = np.random.default_rng(7)
    bases = []
    for index in range(8):
        mode = "L" if index % 4 == 0 else None
        bases.append(jpeg(noise(32 + index, 40, seed=index), mode, quality=80,
                          optimize=bool(index % 2), progressive=index % 3 == 0))
    accepted = refused = 0
    for trial in range(1500):
        data = bytearray(bases[trial % len(bases)])
        kind = trial % 4
        if kind == 0:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        elif kind == 1:
            header_end = bytes(data).index(b"\xff\xda") + 12
            data[int(rng.integers(2, header_end))] = int(rng.integers(0, 256))
        elif kind == 2:
            data = data[: int(rng.integers(2, len(data)))]
        else:
            at = int(rng.integers(2, len(data)))
            data = data[:at] + bytes(rng.integers(0, 256, int(rng.integers(1, 20)), dtype=np.uint8)) + data[at:]
        damaged = bytes(data)
        try:
            scan_jpeg(damaged)
        except NotPlainJpeg:
            refused += 1
            continue
        accepted += 1
        try:
            decode_image(damaged, 10**7)
            decode_jpeg(torch.frombuffer(bytearray(damaged), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except (DecodeError, RuntimeError) as error:
            pytest.fail(f"trial {trial}: passed the check but does not decode: {error}")
    # Both sides of the check were exercised.
    assert accepted > 300 and refused > 300
