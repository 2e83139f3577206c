"""``BatchResult.embedding`` and the ``fingerprint`` of architectures and artifacts.

The embedding is the watched layer's output per image, averaged over the dimensions after
the channels; for the default layer of a ResNet (the input of ``fc``) that is the 512
pooled backbone features the eager network computes.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import torch
import torchvision
from monitord.decode import decode_image
from monitord.settings import ModelSettings
from PIL import Image
from safetensors.torch import load_file, save_file

from monitord_torchvision.digits import held_out_digits
from monitord_torchvision.inference import DeviceDecodingModel, TorchvisionModel
from monitord_torchvision.loading import load_artifact
from monitord_torchvision.plugin import torchvision_model

CLASSES = ["cat", "dog", "bird"]
MAX_PIXELS = 10_000_000


def resnet_settings(weights: Path, **extra: object) -> ModelSettings:
    options: dict[str, object] = {
        "architecture": "resnet18",
        "weights": str(weights),
        "classes": CLASSES,
        "input_size": [32, 32],
        "device": "cpu",
    }
    options.update(extra)
    return ModelSettings(**options)


def photos(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(count)]


def served(settings: ModelSettings, tmp_path: Path, images: list[Image.Image]):
    model = torchvision_model(settings, tmp_path)
    try:
        batch = np.stack([model.preprocess(image) for image in images])
        return model, batch, model.predict(batch)
    finally:
        model.close()


def test_a_resnet18s_embedding_is_its_512_pooled_features(
    resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    model, batch, result = served(resnet_settings(resnet_weights["safetensors"]), tmp_path, photos(4))
    assert model.activation_layer == "input of fc" and model.embedding_size == 512
    assert result.embedding.shape == (4, 512) and result.embedding.dtype == np.float32

    eager = torchvision.models.resnet18(weights=None, num_classes=3)
    eager.load_state_dict(load_file(str(resnet_weights["safetensors"])))
    pooled: list[torch.Tensor] = []
    eager.avgpool.register_forward_hook(lambda module, args, output: pooled.append(output.flatten(1)))
    with torch.no_grad():
        eager.eval()(torch.from_numpy(batch))
    np.testing.assert_allclose(result.embedding, pooled[0].numpy(), atol=1e-5)


def test_a_convolutional_layers_embedding_is_averaged_over_height_and_width(
    resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    settings = resnet_settings(resnet_weights["safetensors"])
    _, _, default = served(settings, tmp_path, photos(3))
    _, _, layer4 = served(settings.model_copy(update={"activation_layer": "layer4"}), tmp_path, photos(3))
    _, _, layer1 = served(settings.model_copy(update={"activation_layer": "layer1"}), tmp_path, photos(3))
    # ResNet's avgpool is the mean of layer4 over H and W: the same 512 numbers.
    np.testing.assert_allclose(layer4.embedding, default.embedding, atol=1e-5)
    assert layer1.embedding.shape == (3, 64)


def test_the_digits_artifacts_embedding_and_its_activation_signals_agree(
    digits_model: TorchvisionModel, held_out_inputs: tuple[np.ndarray, np.ndarray]
) -> None:
    inputs, _ = held_out_inputs
    result = digits_model.predict(inputs[:20])
    assert digits_model.activation_layer == "input of classifier.fc1"
    assert result.embedding.shape == (20, 256) and result.embedding.dtype == np.float32
    # A (N, D) layer is its own embedding: its per-image mean is activation_mean.
    np.testing.assert_allclose(result.embedding.mean(axis=1), result.signals["activation_mean"], atol=1e-5)
    empty = digits_model.predict(inputs[:0])
    assert empty.embedding.shape == (0, 256)


def test_jpegs_decoded_on_the_device_get_an_embedding_per_row(
    artifact_dir: Path, digits_model: TorchvisionModel
) -> None:
    model = load_artifact(artifact_dir, device="cpu", decode_on_device=True)
    assert isinstance(model, DeviceDecodingModel)
    try:
        images, _ = held_out_digits()
        jpegs = []
        for pixels in images[:6]:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
            jpegs.append(buffer.getvalue())
        arrays = [model.preprocess(decode_image(data, MAX_PIXELS)) for data in jpegs[:3]]
        encoded = [model.prepare_encoded(data, MAX_PIXELS) for data in jpegs[3:]]
        assert all(item is not None for item in encoded)  # these take the device path
        result = model.predict_inputs([*arrays, *encoded])
        assert result.embedding.shape == (6, 256)
        expected = digits_model.predict(np.stack(arrays))
        np.testing.assert_allclose(result.embedding[:3], expected.embedding, atol=1e-5)
    finally:
        model.close()


def test_the_fingerprint_follows_the_weights_the_preprocessing_and_the_watched_layer(
    resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    def fingerprint(settings: ModelSettings) -> str:
        model = torchvision_model(settings, tmp_path)
        model.close()
        return model.fingerprint

    weights = resnet_weights["safetensors"]
    base = fingerprint(resnet_settings(weights))
    assert len(base) == 64 and set(base) <= set("0123456789abcdef")
    assert fingerprint(resnet_settings(weights)) == base

    other = tmp_path / "other.safetensors"
    state = load_file(str(weights))
    state["fc.bias"] = state["fc.bias"] + 1.0
    save_file(state, str(other))
    assert fingerprint(resnet_settings(other)) != base
    assert fingerprint(resnet_settings(weights, input_size=[40, 40])) != base
    assert fingerprint(resnet_settings(weights, std=[0.5, 0.5, 0.5])) != base
    assert fingerprint(resnet_settings(weights, activation_layer="layer4")) != base


def test_an_artifacts_fingerprint_changes_with_its_weights(artifact_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact_dir, copy)
    original = load_artifact(artifact_dir, device="cpu")
    same = load_artifact(copy, device="cpu")
    assert same.fingerprint == original.fingerprint
    state = load_file(str(copy / "model.safetensors"))
    state["classifier.fc2.bias"] = state["classifier.fc2.bias"] + 0.5
    save_file(state, str(copy / "model.safetensors"), metadata={"format": "pt"})
    changed = load_artifact(copy, device="cpu")
    assert changed.fingerprint != original.fingerprint
    for model in (original, same, changed):
        model.close()


def test_a_network_built_in_code_gets_a_fingerprint_from_its_tensors() -> None:
    from monitord_torchvision.architectures import DigitsCNN
    from monitord_torchvision.preprocess import PreprocessSpec

    spec = PreprocessSpec(input_size=(8, 8), channels=1, mean=(0.5,), std=(0.5,))

    def fingerprint(seed: int) -> str:
        torch.manual_seed(seed)
        model = TorchvisionModel(
            DigitsCNN(), name="digits_cnn", class_names=[str(i) for i in range(10)],
            spec=spec, device=torch.device("cpu"),
        )
        model.close()
        return model.fingerprint

    assert fingerprint(0) == fingerprint(0) != fingerprint(1)
