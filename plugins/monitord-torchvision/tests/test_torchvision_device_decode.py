"""``model.decode_on_device``: JPEGs decoded in batches on the model's device (issue 6).

Exercised on the CPU (``torchvision.io.decode_jpeg`` with libjpeg-turbo), the way this
machine can; the CUDA test at the end runs the same checks through nvJPEG where there is
a GPU. What is checked: the same classes as the Pillow path, EXIF orientation, the pixel
cap, formats left to the core, and a damaged JPEG costing only itself.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import torch
from monitord.decode import DecodeError, decode_image
from monitord.settings import ModelSettings
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import monitord_torchvision.device_decode as device_decode
from monitord_torchvision.device_decode import EncodedJpeg, orient, read_encoded_jpeg
from monitord_torchvision.digits import digit_png_bytes, held_out_digits
from monitord_torchvision.inference import DeviceDecodingModel, TorchvisionModel
from monitord_torchvision.loading import load_artifact, load_model
from monitord_torchvision.preprocess import PreprocessSpec, preprocess_image
from monitord_torchvision.signals import SIGNAL_NAMES

pytestmark = pytest.mark.filterwarnings("ignore:.*TorchCodec:DeprecationWarning")

MAX_PIXELS = 40_000_000
ORIENTATION = 0x0112
#: For each EXIF orientation, what turns an upright image into the stored one (the
#: inverse of what a viewer, and Pillow's exif_transpose, applies).
STORE_TURNED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def jpeg_bytes(image: Image.Image, orientation: int = 1, **options: object) -> bytes:
    """``image`` (upright) stored the way a camera held at ``orientation`` stores it."""
    method = STORE_TURNED[orientation]
    stored = image if method is None else image.transpose(method)
    if orientation != 1:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=options.pop("quality", 95), **options)
    return buffer.getvalue()


def digit_rgb(pixels: np.ndarray, index: int, size: int = 24) -> Image.Image:
    """A held-out digit as a tinted colour photo, larger than the model's 8x8 input."""
    image = Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST).convert("RGB")
    tint = np.array([1.0, 0.8 + 0.1 * (index % 3), 0.9])
    return Image.fromarray(np.clip(np.asarray(image) * tint, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def device_model(artifact_dir: Path) -> DeviceDecodingModel:
    model = load_artifact(artifact_dir, device="cpu", decode_on_device=True)
    assert isinstance(model, DeviceDecodingModel)
    yield model
    model.close()


def pillow_path(model: TorchvisionModel, data: list[bytes]):
    """What the core does without decode_on_device: Pillow, then ``preprocess``."""
    return model.predict(np.stack([model.preprocess(decode_image(d, MAX_PIXELS)) for d in data]))


def device_path(model: DeviceDecodingModel, data: list[bytes]):
    inputs = [model.prepare_encoded(d, MAX_PIXELS) for d in data]
    assert all(isinstance(item, EncodedJpeg) for item in inputs)
    return model.predict_inputs(inputs)


def assert_agree(expected, got, tolerance: float = 1e-4) -> None:
    assert float(np.mean(expected.class_index == got.class_index)) >= 0.98
    for name in SIGNAL_NAMES:
        np.testing.assert_allclose(got.signals[name], expected.signals[name], atol=tolerance, err_msg=name)


def refusing(real_decode, poisoned: bytes, calls: list[int]):
    """``decode_jpeg`` that fails a whole list holding ``poisoned``, as nvJPEG fails a
    batch over one image it cannot take (an unusual encoder, a damaged scan)."""

    def decode(encoded: list[torch.Tensor], **kwargs: object) -> list[torch.Tensor]:
        calls.append(len(encoded))
        if any(bytes(t.numpy()) == poisoned for t in encoded):
            raise RuntimeError("Error while decoding JPEG images: nvjpeg status 6 (simulated)")
        return real_decode(encoded, **kwargs)

    return decode


# -- same answers as the Pillow path -------------------------------------------------------------


def test_gray_digit_jpegs_give_the_pillow_paths_classes(
    digits_model: TorchvisionModel, device_model: DeviceDecodingModel
) -> None:
    images, labels = held_out_digits()
    data = [jpeg_bytes(Image.fromarray(pixels)) for pixels in images]
    expected, got = pillow_path(digits_model, data), device_path(device_model, data)
    assert_agree(expected, got)
    assert float(np.mean(got.class_index == labels)) >= 0.95


def test_resized_colour_jpegs_with_exif_orientations_give_the_pillow_paths_classes(
    digits_model: TorchvisionModel, device_model: DeviceDecodingModel
) -> None:
    """Colour → luma for the one-channel model, 24x24 → 8x8 resizing, and every image
    stored turned, with the EXIF orientation that brings it upright."""
    images, labels = held_out_digits()
    upright = [digit_rgb(pixels, i) for i, pixels in enumerate(images)]
    data = [jpeg_bytes(image, orientation=1 + i % 8, quality=90) for i, image in enumerate(upright)]
    assert [device_model.prepare_encoded(d, MAX_PIXELS).orientation for d in data[:8]] == list(range(1, 9))
    expected, got = pillow_path(digits_model, data), device_path(device_model, data)
    assert_agree(expected, got)
    assert float(np.mean(got.class_index == labels)) >= 0.9
    # Without the orientation the turned digits would be misread: it was applied.
    ignored = [EncodedJpeg(d, 24, 24, 1, MAX_PIXELS) for d in data]
    unturned = device_model.predict_inputs(ignored)
    assert float(np.mean(unturned.class_index == got.class_index)) < 0.7


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_matches_pillows_exif_transpose(orientation: int) -> None:
    """An asymmetric 20x12 image, turned and stored with each orientation: the device
    input equals the core's (``decode_image`` applies ``exif_transpose``)."""
    rows, cols = np.mgrid[0:12, 0:20]
    pixels = np.stack([rows * 20, cols * 12, (rows * cols) % 256], axis=2).astype(np.uint8)
    data = jpeg_bytes(Image.fromarray(pixels), orientation=orientation)
    spec = PreprocessSpec(input_size=(12, 20), channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    expected = preprocess_image(decode_image(data, MAX_PIXELS), spec)
    encoded = read_encoded_jpeg(data, MAX_PIXELS)
    assert encoded is not None and encoded.orientation == orientation
    got, _ = device_decode.DevicePreprocessor(spec, torch.device("cpu")).inputs([encoded])
    np.testing.assert_allclose(got[0].numpy(), expected, atol=1e-4)


#: (stored size (H, W), model input (H, W)): whole and broken factors, shrinking and enlarging,
#: a last block left over (37 = 4 * 9 + 1) and one axis shrunk while the other grows.
RESIZES = [((32, 32), (8, 8)), ((20, 20), (8, 8)), ((37, 23), (8, 8)), ((40, 40), (32, 32)),
           ((12, 12), (32, 32)), ((300, 224), (64, 64)), ((16, 90), (32, 8))]


@pytest.mark.parametrize(("source", "size"), RESIZES)
def test_the_device_resizes_as_the_cpu_path_does(source: tuple[int, int], size: tuple[int, int]) -> None:
    """Whole blocks averaged, then antialiased bilinear: the same numbers on both paths."""
    pixels = np.random.default_rng(sum(source)).integers(0, 256, (*source, 3), dtype=np.uint8)
    data = jpeg_bytes(Image.fromarray(pixels))
    spec = PreprocessSpec(input_size=size, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    expected = preprocess_image(decode_image(data, MAX_PIXELS), spec)
    encoded = read_encoded_jpeg(data, MAX_PIXELS)
    got, _ = device_decode.DevicePreprocessor(spec, torch.device("cpu")).inputs([encoded])
    assert np.abs(got[0].numpy() - expected).max() < 1e-4


def test_an_enlarged_digit_jpeg_is_shrunk_back_to_the_digit_on_the_device() -> None:
    """Issue 15, item 16, on the device path: a 32x32 copy of a digit (nearest upscale,
    a near-lossless JPEG) gives the 8x8 digit's input, not a blurred one."""
    images, _ = held_out_digits()
    spec = PreprocessSpec(input_size=(8, 8), channels=1, mean=(0.0,), std=(1.0,))
    preprocessor = device_decode.DevicePreprocessor(spec, torch.device("cpu"))
    for pixels in images[:20]:
        data = jpeg_bytes(Image.fromarray(pixels).resize((32, 32), Image.Resampling.NEAREST), quality=100)
        got, _ = preprocessor.inputs([read_encoded_jpeg(data, MAX_PIXELS)])
        assert np.abs(got[0, 0].numpy() - pixels / 255.0).max() < 0.02  # JPEG rounding; blurred: 0.36


def test_orient_is_the_identity_for_unknown_orientations() -> None:
    image = torch.arange(6).view(1, 2, 3)
    for orientation in (0, 1, 9):
        assert torch.equal(orient(image, orientation), image)


def test_three_channel_models_get_the_same_inputs_from_gray_and_colour_jpegs(
    resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    settings = dict(architecture="resnet18", weights=str(resnet_weights["safetensors"]), classes=["a", "b", "c"],
                    input_size=[32, 32], device="cpu")
    plain = load_model(ModelSettings(**settings), tmp_path)
    on_device = load_model(ModelSettings(**settings, decode_on_device=True), tmp_path)
    try:
        images, _ = held_out_digits()
        data = [jpeg_bytes(digit_rgb(pixels, i, size=40)) for i, pixels in enumerate(images[:40])]
        data += [jpeg_bytes(Image.fromarray(pixels).resize((20, 28))) for pixels in images[40:80]]  # gray
        expected, got = pillow_path(plain, data), device_path(on_device, data)
    finally:
        plain.close()
        on_device.close()
    assert_agree(expected, got)


def test_a_batch_mixing_arrays_and_jpegs_keeps_its_order(
    digits_model: TorchvisionModel, device_model: DeviceDecodingModel
) -> None:
    images, _ = held_out_digits()
    inputs, expected_rows = [], []
    for i, pixels in enumerate(images[:30]):
        if i % 3 == 0:  # a PNG: the core decodes it and calls preprocess
            png = digit_png_bytes(pixels)
            assert device_model.prepare_encoded(png, MAX_PIXELS) is None
            inputs.append(device_model.preprocess(decode_image(png, MAX_PIXELS)))
        else:
            inputs.append(device_model.prepare_encoded(jpeg_bytes(Image.fromarray(pixels)), MAX_PIXELS))
        expected_rows.append(digits_model.predict(np.stack([
            digits_model.preprocess(Image.fromarray(pixels))
        ])))
    got = device_model.predict_inputs(inputs)
    assert len(got) == 30
    for row, expected in enumerate(expected_rows):
        assert got.class_index[row] == expected.class_index[0]
        assert got.confidence[row] == pytest.approx(expected.confidence[0], abs=0.02)
    assert len(device_model.predict_inputs([])) == 0


def test_a_batch_is_decoded_a_bounded_number_of_pixels_at_a_time(
    device_model: DeviceDecodingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large photos must not be decoded all at once; chunks change nothing in the result."""
    images, _ = held_out_digits()
    data = [jpeg_bytes(Image.fromarray(pixels)) for pixels in images[:23]]
    whole = device_path(device_model, data)
    calls: list[int] = []
    monkeypatch.setattr(device_decode, "CHUNK_PIXELS", 5 * 8 * 8)
    monkeypatch.setattr(device_decode, "decode_jpeg", refusing(device_decode.decode_jpeg, b"", calls))
    chunked = device_path(device_model, data)
    assert calls == [5, 5, 5, 5, 3]
    assert np.array_equal(chunked.class_index, whole.class_index)
    np.testing.assert_allclose(chunked.confidence, whole.confidence, rtol=1e-6)
    big, small = EncodedJpeg(b"", 100, 100, 1, MAX_PIXELS), EncodedJpeg(b"", 8, 8, 1, MAX_PIXELS)
    runs = device_decode.chunks_by_pixels([small, big, small, small], 200)
    assert [[item.width for item in run] for run in runs] == [[8], [100], [8, 8]]


# -- what is refused, and what is left to the core -------------------------------------------------


def test_pixel_bomb_header_is_refused_before_decoding_with_the_cores_reason() -> None:
    small = jpeg_bytes(Image.new("RGB", (16, 16), "white"))
    at = small.index(b"\xff\xc0") + 5
    bomb = small[:at] + (8000).to_bytes(2, "big") + (8000).to_bytes(2, "big") + small[at + 4 :]
    with pytest.raises(DecodeError, match=r"image is 8000x8000 = 64000000 pixels, over the limit of "
                                          r"40000000 \(pipeline.max_image_pixels\)"):
        read_encoded_jpeg(bomb, MAX_PIXELS)
    assert read_encoded_jpeg(bomb, 64_000_000) is not None  # at the cap is allowed


def test_other_formats_and_doubtful_jpegs_are_left_to_the_core() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    formats = {}
    for name in ("PNG", "GIF", "BMP", "WEBP", "TIFF"):
        buffer = io.BytesIO()
        image.save(buffer, name)
        formats[name] = buffer.getvalue()
    good = jpeg_bytes(image)
    cmyk = io.BytesIO()
    image.convert("CMYK").save(cmyk, "JPEG")
    doubtful = {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "text": b"\xff\xd8\xff not really a jpeg",
        "cmyk": cmyk.getvalue(),
        "progressive-arithmetic": good.replace(b"\xff\xc0", b"\xff\xc9", 1),
    }
    for name, data in {**formats, **doubtful}.items():
        assert read_encoded_jpeg(data, MAX_PIXELS) is None, name
    assert isinstance(read_encoded_jpeg(good, MAX_PIXELS), EncodedJpeg)


def test_an_image_the_device_decoder_refuses_is_decoded_on_the_cpu_and_costs_nothing_else(
    digits_model: TorchvisionModel, device_model: DeviceDecodingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One image of 40 refused: the batch is split in halves until it is found, it takes
    the core's CPU path, and every image gets its own, right answer."""
    images, _ = held_out_digits()
    data = [jpeg_bytes(Image.fromarray(pixels)) for pixels in images[:40]]
    calls: list[int] = []
    monkeypatch.setattr(device_decode, "decode_jpeg", refusing(device_decode.decode_jpeg, data[17], calls))
    before = device_model.device_preprocessor.fallbacks
    got = device_path(device_model, data)
    expected = pillow_path(digits_model, data)
    assert device_model.device_preprocessor.fallbacks == before + 1
    assert_agree(expected, got)
    assert got.class_index[17] == expected.class_index[17]
    assert got.confidence[17] == pytest.approx(expected.confidence[17], abs=1e-5)
    assert calls[0] == 40 and len(calls) <= 2 * math.ceil(math.log2(40)) + 1  # halving, not 40 calls


def test_a_jpeg_nothing_can_decode_is_rejected_alone_naming_both_reasons(
    device_model: DeviceDecodingModel,
) -> None:
    """Only reachable by bypassing ``prepare_encoded`` (which sends such bytes to the
    core's decoder): that row is rejected with what each decoder said, and the rest of
    the batch is classified as it would be without it."""
    good = jpeg_bytes(Image.new("L", (8, 8), 128))
    broken = EncodedJpeg(good[: len(good) // 2], 8, 8, 1, MAX_PIXELS)
    fine = [EncodedJpeg(jpeg_bytes(Image.new("L", (8, 8), level)), 8, 8, 1, MAX_PIXELS) for level in (30, 220)]
    result = device_model.predict_inputs([fine[0], broken, fine[1]])
    assert list(result.rejected) == [1] and len(result) == 2
    assert re.search(r"(?s)(truncated|unreadable).*\(the cpu decoder also refused it: .*truncated", result.rejected[1])
    assert_agree(device_model.predict_inputs(fine), result)
    alone = device_model.predict_inputs([broken])
    assert list(alone.rejected) == [0] and len(alone) == 0


# -- through the real daemon ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metric_samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_daemon_classifies_a_batch_around_a_corrupt_jpeg(artifact_dir: Path, tmp_path: Path) -> None:
    """``monitord run`` with decode_on_device: one multipart request of JPEG digits (some
    EXIF-turned), a PNG, a truncated JPEG, a JPEG with a broken Huffman table and a pixel
    bomb. The broken ones get 422 with a reason, every other part its prediction, and the
    detectors see each classified image once."""
    port = free_port()
    config = tmp_path / "monitord.toml"
    config.write_text(
        f'sources = ["http"]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[http]\nport = {port}\n'
        f'[pipeline]\nmax_batch_delay = 0.05\n'
        f'[model]\nartifact = "{artifact_dir}"\ndevice = "cpu"\ndecode_on_device = true\n'
        'autocast = "bf16"\nchannels_last = true\n'
    )
    log_path = tmp_path / "daemon.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MONITORD_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "monitord", "run", "--config", str(config)],
                                   cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log_path)
        images, labels = held_out_digits()
        parts: list[tuple[str, bytes, str]] = []
        for i, pixels in enumerate(images[:24]):
            parts.append((f"{labels[i]}-{i}.jpg", jpeg_bytes(Image.fromarray(pixels), orientation=1 + i % 8), "image/jpeg"))
        parts.append(("png.png", digit_png_bytes(images[24]), "image/png"))
        good = parts[0][1]
        dht = good.index(b"\xff\xc4")
        photo = jpeg_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
        bad = {
            "truncated.jpg": photo[: len(photo) * 3 // 4],  # cut inside the compressed data
            "huffman.jpg": good[: dht + 5] + b"\x01" * 16 + good[dht + 21 :],
        }
        small = jpeg_bytes(Image.new("RGB", (16, 16), "white"))
        at = small.index(b"\xff\xc0") + 5
        bad["bomb.jpg"] = small[:at] + (8000).to_bytes(2, "big") * 2 + small[at + 4 :]
        parts[5:5] = [(name, body, "image/jpeg") for name, body in bad.items()]
        status, body = asyncio.run(post_parts(url, parts))
        assert status == 200, body
        predictions = {p["filename"]: p for p in body["predictions"]}
        assert body["count"] == 28 and body["errors"] == 3
        assert predictions["truncated.jpg"]["status"] == 422
        assert "corrupt or truncated JPEG data" in predictions["truncated.jpg"]["error"]
        assert predictions["huffman.jpg"]["status"] == 422
        assert "JPEG" in predictions["huffman.jpg"]["error"]
        assert predictions["bomb.jpg"]["status"] == 422
        assert "8000x8000 = 64000000 pixels, over the limit" in predictions["bomb.jpg"]["error"]
        classified = [p for name, p in predictions.items() if name not in bad]
        assert len(classified) == 25 and all("class" in p for p in classified)
        correct = sum(p["class"] == name.split("-")[0] for name, p in predictions.items() if name.endswith(".jpg") and name not in bad)
        assert correct >= 22  # of 24 JPEGs, many EXIF-turned
        assert predictions["png.png"]["class"] == str(labels[24])
        samples = metric_samples(url)
        assert samples[("monitord_images_total", (("outcome", "ok"), ("source", "http")))] == 25
        assert samples[("monitord_images_total", (("outcome", "rejected"), ("source", "http")))] == 3
        with urllib.request.urlopen(url + "/v1/detectors", timeout=10) as response:
            detectors = json.loads(response.read())["detectors"]
        # Every detector of a model signal saw each classified image once (no labels: the
        # error detector saw none).
        watching_model_signals = [d for d in detectors if d["signal"] != "error"]
        assert len(watching_model_signals) == 4
        assert all(d["samples"] == 25 for d in watching_model_signals), watching_model_signals
        assert "JPEGs decoded on the device" in log_path.read_text(errors="replace")
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


async def post_parts(url: str, parts: list[tuple[str, bytes, str]]) -> tuple[int, dict]:
    form = aiohttp.FormData()
    for filename, body, content_type in parts:
        form.add_field("image", body, filename=filename, content_type=content_type)
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/predict", data=form) as response:
            return response.status, await response.json()


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the daemon exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"the daemon was not ready after {timeout} s:\n{log_path.read_text(errors='replace')}")


# -- on a GPU ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_batches_give_the_pillow_paths_classes(
    artifact_dir: Path, digits_model: TorchvisionModel, tmp_path: Path
) -> None:
    model = load_model(
        ModelSettings(artifact=str(artifact_dir), device="cuda", decode_on_device=True, autocast="bf16"), tmp_path
    )
    try:
        images, _ = held_out_digits()
        data = [jpeg_bytes(digit_rgb(pixels, i), orientation=1 + i % 8) for i, pixels in enumerate(images)]
        data[::3] = [jpeg_bytes(Image.fromarray(pixels).resize((24, 24))) for pixels in images[::3]]  # gray
        expected, got = pillow_path(digits_model, data), device_path(model, data)
        assert model.device_preprocessor.fallbacks == 0  # nvJPEG took every one, gray ones too
        calls: list[int] = []
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(device_decode, "decode_jpeg", refusing(device_decode.decode_jpeg, data[3], calls))
            around_a_refused_one = device_path(model, data[:10])
    finally:
        model.close()
    assert float(np.mean(expected.class_index == got.class_index)) >= 0.98
    np.testing.assert_allclose(got.confidence, expected.confidence, atol=0.05)
    assert np.array_equal(around_a_refused_one.class_index, got.class_index[:10]) and len(calls) > 1
