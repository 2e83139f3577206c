"""Preprocessing as the weights were trained (issue 17, item 3): resize the shorter side,
centre crop, normalise, as torchvision's ``weights.transforms()`` do, on the CPU path and
on the device path, set by ``model.transforms`` or explicit keys and recorded in artifacts.

All differences are in normalised units (after ``(x - mean) / std``); with ImageNet's std
one 8-bit step of a pixel is 1 / 255 / 0.225 = 0.0174 of them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from monitord.decode import decode_image
from monitord.settings import ModelSettings, SettingsError
from PIL import Image
from torchvision.models import get_weight

from monitord_torchvision.artifact import (
    METADATA_FILE,
    WEIGHTS_FILE,
    ArtifactMetadata,
    read_metadata,
    write_metadata,
)
from monitord_torchvision.device_decode import DevicePreprocessor, read_encoded_jpeg
from monitord_torchvision.loading import load_artifact, load_from_options, load_model
from monitord_torchvision.options import parse_options
from monitord_torchvision.preprocess import PreprocessSpec, preprocess_image

CORE_TESTS = Path(__file__).parents[3] / "tests"
if str(CORE_TESTS) not in sys.path:
    sys.path.insert(0, str(CORE_TESTS))

from daemon_process import free_port, wait_http_ok  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*TorchCodec:DeprecationWarning")

MAX_PIXELS = 40_000_000
RESNET18 = "ResNet18_Weights.IMAGENET1K_V1"
#: The bicubic preset of the same shape: resize 256, crop 224.
EFFICIENTNET_B0 = "EfficientNet_B0_Weights.IMAGENET1K_V1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLASSES = ["cat", "dog", "bird"]


def scene(height: int, width: int) -> Image.Image:
    """Smooth gradients and waves, with a sharp-edged box and a 3-pixel line: the edges are
    where resampling filters differ most."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = np.stack(
        [
            255 * cols / (width - 1),
            255 * rows / (height - 1),
            127.5 + 127.5 * np.sin(rows / 9.0) * np.cos(cols / 13.0),
        ],
        axis=2,
    )
    pixels[height // 4 : height // 2, width // 5 : width // 2] = (250, 20, 40)
    pixels[:, 2 * width // 3 : 2 * width // 3 + 3] = 0
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def spec_of(weights: str) -> PreprocessSpec:
    return parse_options(
        {"architecture": "resnet18", "weights": "w.pt", "classes": CLASSES, "transforms": weights}
    ).preprocess_spec()


def max_difference(ours: np.ndarray, theirs: torch.Tensor | np.ndarray) -> float:
    theirs = theirs.numpy() if isinstance(theirs, torch.Tensor) else theirs
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max())


# -- the CPU path against torchvision's own transforms ---------------------------------------------


#: Measured: 0.0169 for 300x200 and 200x300 (0.0170-0.0172 from their JPEGs), 0.0159 for
#: 1800x2400 (width x height). torchvision resizes the 8-bit PIL image (Pillow's fixed-point 8-bit filter,
#: rounded to whole steps); ours resizes in float32 with the same antialiased kernel: at
#: most about one 8-bit step (0.0174) apart. The bound leaves 40 % over that.
AGAINST_TORCHVISION_BILINEAR = 0.025


@pytest.mark.parametrize("size", [(200, 300), (300, 200), (2400, 1800)], ids=str)
def test_the_cpu_path_gives_resnet18s_transforms_within_one_8_bit_step(size: tuple[int, int]) -> None:
    """Landscape, portrait, and a photo-sized image (where averaging whole blocks before the
    resize, as the plain resize does, was up to 1.09 apart); the image and its JPEG."""
    transforms = get_weight(RESNET18).transforms()
    spec = spec_of(RESNET18)
    image = scene(*size)
    assert max_difference(preprocess_image(image, spec), transforms(image)) < AGAINST_TORCHVISION_BILINEAR
    decoded = decode_image(jpeg(image), MAX_PIXELS)
    assert max_difference(preprocess_image(decoded, spec), transforms(decoded)) < AGAINST_TORCHVISION_BILINEAR
    # Without the crop the same image gives other inputs: the comparison can fail.
    plain = PreprocessSpec(input_size=(224, 224), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert max_difference(preprocess_image(image, plain), transforms(image)) > 1.0


def test_the_cpu_path_gives_a_bicubic_presets_transforms() -> None:
    """EfficientNet-B0's preset resizes bicubic. Measured 0.105 on the image (0.019 on its
    JPEG, mean 0.004): Pillow's 8-bit resize clips bicubic's overshoot at the box's hard
    edges to 0-255 after its first (horizontal) pass, and the second pass spreads that;
    ours clips once, at the end. Away from hard edges it stays within one 8-bit step."""
    transforms = get_weight(EFFICIENTNET_B0).transforms()
    spec = spec_of(EFFICIENTNET_B0)
    assert spec.interpolation == "bicubic"
    image = scene(300, 200)
    ours, theirs = preprocess_image(image, spec), transforms(image).numpy()
    assert max_difference(ours, theirs) < 0.15
    assert float(np.abs(ours - theirs).mean()) < 0.006
    decoded = decode_image(jpeg(image), MAX_PIXELS)
    assert max_difference(preprocess_image(decoded, spec), transforms(decoded)) < 0.03
    bilinear = PreprocessSpec(
        input_size=(224, 224), channels=3, mean=spec.mean, std=spec.std, resize_size=256
    )
    assert max_difference(preprocess_image(image, bilinear), theirs) > 0.15


def test_an_image_already_at_the_resize_size_is_only_cropped() -> None:
    """256x256 to a 224 crop: no resampling at all, so exactly torchvision's numbers (up to
    float32 rounding of the normalisation)."""
    image = scene(256, 256)
    got = preprocess_image(image, spec_of(RESNET18))
    assert max_difference(got, get_weight(RESNET18).transforms()(image)) < 1e-5


# -- the device path against the CPU path ----------------------------------------------------------


#: Measured on this machine: at most 1.2e-6 (300x200) and 9e-6 (1200x900), bilinear and
#: bicubic alike: Pillow and torchvision's decode_jpeg are both libjpeg-turbo here and gave
#: identical pixels, so what is left is float32 rounding of two implementations of the
#: same antialiased filters. (nvJPEG on a GPU may round pixels one step apart: 0.0174.)
DEVICE_AGAINST_CPU = 1e-4


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(200, 300), (300, 200), (900, 1200)], ids=str)
def test_the_device_path_preprocesses_a_jpeg_as_the_cpu_path_does(
    size: tuple[int, int], interpolation: str
) -> None:
    """``DevicePreprocessor`` (``model.decode_on_device``) on torch's CPU device, fed
    ``read_encoded_jpeg``, against ``decode_image`` + ``preprocess_image``."""
    spec = PreprocessSpec(
        input_size=(224, 224), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        resize_size=256, interpolation=interpolation,
    )
    data = jpeg(scene(*size))
    expected = preprocess_image(decode_image(data, MAX_PIXELS), spec)
    encoded = read_encoded_jpeg(data, MAX_PIXELS)
    assert encoded is not None
    got, rejected = DevicePreprocessor(spec, torch.device("cpu")).inputs([encoded])
    assert rejected == {} and got.shape == (1, 3, 224, 224)
    assert max_difference(expected, got[0]) < DEVICE_AGAINST_CPU


def test_the_device_path_crops_each_size_of_a_mixed_batch_on_its_own() -> None:
    """A batch of a landscape, a portrait and a square JPEG: each row is its own image's
    resize and centre crop, in order."""
    spec = spec_of(RESNET18)
    data = [jpeg(scene(200, 300)), jpeg(scene(300, 200)), jpeg(scene(256, 256))]
    got, _ = DevicePreprocessor(spec, torch.device("cpu")).inputs(
        [read_encoded_jpeg(d, MAX_PIXELS) for d in data]
    )
    for row, image in enumerate(data):
        expected = preprocess_image(decode_image(image, MAX_PIXELS), spec)
        assert max_difference(expected, got[row]) < DEVICE_AGAINST_CPU


# -- the spec itself -------------------------------------------------------------------------------


def test_the_shorter_side_is_resized_and_the_crop_is_centred_as_torchvision_rounds() -> None:
    spec = PreprocessSpec(input_size=(224, 224), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize_size=256)
    assert spec.resized_size((200, 300)) == (256, 384)
    assert spec.resized_size((300, 200)) == (384, 256)
    assert spec.resized_size((333, 500)) == (256, 384)  # 256 * 500 / 333 = 384.4, truncated
    assert spec.crop_origin((256, 384)) == (16, 80)
    assert spec.crop_origin((257, 385)) == (16, 80)  # round(16.5), round(80.5): to even
    assert spec.block_factors_for((2400, 1800)) == (1, 1)
    plain = PreprocessSpec(input_size=(224, 224), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert plain.resized_size((200, 300)) == (224, 224)
    assert plain.block_factors_for((2400, 1800)) == (10, 8)


def test_a_resize_smaller_than_the_crop_is_refused() -> None:
    with pytest.raises(ValueError, match="resize_size 200 is smaller than input_size"):
        PreprocessSpec(input_size=(224, 224), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize_size=200)
    with pytest.raises(ValueError, match="interpolation must be one of bilinear, bicubic"):
        PreprocessSpec(input_size=(8, 8), channels=1, mean=(0.5,), std=(0.2,), interpolation="nearest")


# -- settings ----------------------------------------------------------------------------------------


def architecture_options(**extra: object) -> dict[str, object]:
    return {"architecture": "resnet18", "weights": "w.pt", "classes": CLASSES, **extra}


def test_model_transforms_fills_the_spec_from_the_weights_entry() -> None:
    assert parse_options(architecture_options(transforms=RESNET18)).preprocess_spec() == PreprocessSpec(
        input_size=(224, 224), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        resize_size=256, interpolation="bilinear",
    )
    # Another entry, other values: they come from torchvision, not from defaults.
    vit = parse_options(architecture_options(transforms="ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1"))
    assert vit.preprocess_spec().input_size == (518, 518)
    assert vit.preprocess_spec().resize_size == 518
    assert vit.preprocess_spec().interpolation == "bicubic"
    # Keys that agree with it may stay (as they arrive from the environment, too).
    agreeing = parse_options(
        architecture_options(transforms=RESNET18, input_size="[224, 224]", resize_size="256",
                             mean=[0.485, 0.456, 0.406], interpolation="bilinear")
    )
    assert agreeing.preprocess_spec().resize_size == 256


def test_explicit_keys_without_transforms_make_the_spec() -> None:
    spec = parse_options(
        architecture_options(input_size=[32, 48], resize_size="64", interpolation="bicubic")
    ).preprocess_spec()
    assert (spec.input_size, spec.resize_size, spec.interpolation) == ((32, 48), 64, "bicubic")
    assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
    plain = parse_options(architecture_options()).preprocess_spec()
    assert (plain.resize_size, plain.interpolation) == (None, "bilinear")


@pytest.mark.parametrize(
    ("key", "value", "shown", "theirs"),
    [
        ("input_size", [256, 256], "model.input_size = [256, 256]", "give [224, 224]"),
        ("resize_size", 232, "model.resize_size = 232", "give 256"),
        ("interpolation", "bicubic", "model.interpolation = 'bicubic'", "give 'bilinear'"),
        ("mean", [0.5, 0.5, 0.5], "model.mean = [0.5, 0.5, 0.5]", "give [0.485, 0.456, 0.406]"),
        ("channels", 1, "model.channels = 1", "give 3"),
    ],
)
def test_a_key_that_contradicts_model_transforms_is_refused_naming_both(
    key: str, value: object, shown: str, theirs: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_options(architecture_options(transforms=RESNET18, **{key: value}))
    message = str(caught.value)
    assert f"{shown} contradicts model.transforms = '{RESNET18}'" in message
    assert theirs in message and f"remove model.{key}" in message


def test_an_unknown_transforms_name_is_refused_with_the_close_ones() -> None:
    with pytest.raises(SettingsError) as caught:
        parse_options(architecture_options(transforms="resnet18_weights.imagenet1k_v1"))
    assert "model.transforms = 'resnet18_weights.imagenet1k_v1': not a torchvision weights entry" in str(caught.value)
    assert f"did you mean '{RESNET18}'" in str(caught.value)
    with pytest.raises(SettingsError, match="did you mean 'ResNet18_Weights.DEFAULT'"):
        parse_options(architecture_options(transforms="ResNet18_Weights"))
    with pytest.raises(SettingsError, match="SemanticSegmentation, not an image classification preset"):
        parse_options(architecture_options(transforms="FCN_ResNet50_Weights.DEFAULT"))


def test_preprocessing_keys_need_an_architecture_and_a_crop_within_the_resize() -> None:
    with pytest.raises(SettingsError, match=r"model\.transforms is set but model\.architecture is not"):
        parse_options({"transforms": RESNET18})
    with pytest.raises(SettingsError, match=r"model\.resize_size is set but model\.architecture is not"):
        parse_options({"resize_size": 256})
    with pytest.raises(SettingsError, match=r"model\.resize_size = 200 is smaller than model\.input_size = \[224, 224\]"):
        parse_options(architecture_options(resize_size=200))
    with pytest.raises(SettingsError, match=r"model\.interpolation = 'nearest'"):
        parse_options(architecture_options(interpolation="nearest"))


def test_load_from_options_serves_with_the_transforms_spec(resnet_weights: dict[str, Path]) -> None:
    """The model's CPU path is torchvision's transforms; the plain resize gives others."""
    options = parse_options(
        architecture_options(weights=str(resnet_weights["safetensors"]), transforms=RESNET18)
    )
    model = load_from_options(options, device="cpu")
    try:
        assert model.spec == spec_of(RESNET18)
        image = scene(300, 200)
        expected = get_weight(RESNET18).transforms()(image).numpy()
        assert max_difference(model.preprocess(image), expected) < AGAINST_TORCHVISION_BILINEAR
    finally:
        model.close()


# -- the artifact ----------------------------------------------------------------------------------


def resnet_artifact(folder: Path, weights: Path, **preprocessing: object) -> Path:
    folder.mkdir(parents=True)
    shutil.copyfile(weights, folder / WEIGHTS_FILE)
    write_metadata(
        folder,
        ArtifactMetadata(
            format_version=1, architecture="resnet18", class_names=CLASSES, input_size=(224, 224),
            channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, **preprocessing,
        ),
    )
    return folder


def test_an_artifact_with_resize_size_is_format_2_and_served_with_it(
    resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    folder = resnet_artifact(tmp_path / "model", resnet_weights["safetensors"], resize_size=256)
    written = json.loads((folder / METADATA_FILE).read_text())
    # Readers of version 1 would ignore resize_size; version 2 makes them refuse it.
    assert written["format_version"] == 2
    assert written["resize_size"] == 256 and written["interpolation"] == "bilinear"
    assert read_metadata(folder).preprocess_spec() == spec_of(RESNET18)
    model = load_model(ModelSettings(artifact=str(folder), device="cpu"), tmp_path)
    try:
        assert model.spec == spec_of(RESNET18)
        image = scene(200, 300)
        expected = get_weight(RESNET18).transforms()(image).numpy()
        assert max_difference(model.preprocess(image), expected) < AGAINST_TORCHVISION_BILINEAR
    finally:
        model.close()
    device = load_artifact(folder, device="cpu", decode_on_device=True)
    try:
        assert device.device_preprocessor.spec.resize_size == 256
    finally:
        device.close()


def test_artifact_format_versions_follow_the_preprocessing(
    resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    plain = resnet_artifact(tmp_path / "plain", resnet_weights["safetensors"])
    assert json.loads((plain / METADATA_FILE).read_text())["format_version"] == 1
    bicubic = resnet_artifact(tmp_path / "bicubic", resnet_weights["safetensors"], interpolation="bicubic")
    assert json.loads((bicubic / METADATA_FILE).read_text())["format_version"] == 2
    assert read_metadata(bicubic).preprocess_spec().interpolation == "bicubic"
    # A hand-edited crop larger than the resize is refused with the file's path.
    broken = json.loads((bicubic / METADATA_FILE).read_text())
    broken["resize_size"] = 100
    (bicubic / METADATA_FILE).write_text(json.dumps(broken))
    from monitord_torchvision.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="resize_size 100 is smaller than input_size"):
        read_metadata(bicubic)


# -- the daemon --------------------------------------------------------------------------------------


def test_monitord_run_refuses_a_key_contradicting_model_transforms(tmp_path: Path) -> None:
    """The real command, with the settings a user would write: it exits at once, naming
    both keys, before loading anything."""
    config = tmp_path / "monitord.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[model]\narchitecture = "resnet18"\n'
        'weights = "missing.safetensors"\nclasses = ["a", "b"]\ndevice = "cpu"\n'
        f'transforms = "{RESNET18}"\ninput_size = [256, 256]\n'
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("MONITORD_")}
    done = subprocess.run(
        [sys.executable, "-m", "monitord", "run", "--config", str(config)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"model.input_size = [256, 256] contradicts model.transforms = '{RESNET18}'" in output
    assert not (tmp_path / "state" / "model").exists()


def test_the_daemon_serves_a_resnet18_with_its_weights_transforms(
    resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    """``monitord run`` with ``model.transforms`` and ``decode_on_device`` (on the CPU):
    the confidence it answers for a landscape and a portrait JPEG is the network's on
    torchvision's transforms of them, and not the one a plain resize gives."""
    from safetensors.torch import load_file
    from torchvision.models import resnet18

    network = resnet18(weights=None, num_classes=len(CLASSES)).eval()
    network.load_state_dict(load_file(str(resnet_weights["safetensors"])))
    transforms = get_weight(RESNET18).transforms()
    plain = PreprocessSpec(input_size=(224, 224), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    port = free_port()
    config = tmp_path / "monitord.toml"
    config.write_text(
        f'sources = ["http"]\nstate_dir = "{tmp_path / "state"}"\n[http]\nport = {port}\n'
        f'[model]\narchitecture = "resnet18"\nweights = "{resnet_weights["safetensors"]}"\n'
        f'classes = {json.dumps(CLASSES)}\ndevice = "cpu"\ndecode_on_device = true\n'
        f'transforms = "{RESNET18}"\n'
    )
    log_path = tmp_path / "daemon.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MONITORD_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "monitord", "run", "--config", str(config)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(url + "/readyz", process, lambda: log_path.read_text(errors="replace"), 120, "daemon")
        for size in ((200, 300), (300, 200)):
            data = jpeg(scene(*size))
            request = urllib.request.Request(
                url + "/v1/predict", data=data, headers={"Content-Type": "image/jpeg"}
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                answered = json.loads(response.read())["confidence"]
            decoded = decode_image(data, MAX_PIXELS)
            with torch.no_grad():
                expected = float(network(transforms(decoded)[None]).softmax(1).max())
                resized = torch.from_numpy(preprocess_image(decoded, plain))[None]
                unexpected = float(network(resized).softmax(1).max())
            # Measured: 2e-4 apart (one 8-bit step at most per input); the plain resize 0.04-0.06.
            assert abs(answered - expected) < 0.003, (size, answered, expected)
            assert abs(answered - unexpected) > 0.02, (size, answered, unexpected)
        assert "JPEGs decoded on the device" in log_path.read_text(errors="replace")
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
