"""Any torchvision classifier, described by settings keys, with weights from a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monitord.settings import ModelSettings, SettingsError
from PIL import Image

from monitord_torchvision.architectures import DigitsCNN, available_architectures, build_network
from monitord_torchvision.errors import ModelLoadError
from monitord_torchvision.loading import load_model

CLASSES = ["cat", "dog", "bird"]


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


def photo(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_resnet18_from_safetensors_and_from_a_state_dict(
    resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    results = []
    for kind in ("safetensors", "pt"):
        model = load_model(resnet_settings(resnet_weights[kind]), tmp_path)
        try:
            assert model.name == "resnet18" and list(model.class_names) == CLASSES
            assert model.reference_signals == {}
            assert model.activation_layer == "input of fc"
            batch = np.stack([model.preprocess(photo(i)) for i in range(4)])
            assert batch.shape == (4, 3, 32, 32)
            result = model.predict(batch)
            assert result.class_index.shape == (4,)
            assert set(result.class_index.tolist()) <= {0, 1, 2}
            assert np.all((result.confidence > 1 / 3 - 1e-9) & (result.confidence <= 1))
            results.append(result)
        finally:
            model.close()
    np.testing.assert_allclose(results[0].confidence, results[1].confidence, rtol=1e-6)
    # Nothing from training the digits model: no artifact folder appeared.
    assert list(tmp_path.iterdir()) == []


def test_classes_file_and_custom_activation_layer(
    resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    settings = ModelSettings(
        architecture="resnet18",
        weights=str(resnet_weights["safetensors"]),
        classes_file=str(tmp_path / "classes.txt"),
        input_size=[32, 32],
        device="cpu",
        activation_layer="layer4",
    )
    model = load_model(settings, tmp_path)
    try:
        assert list(model.class_names) == CLASSES
        assert model.activation_layer == "output of layer4"
        result = model.predict(np.stack([model.preprocess(photo(0))]))
        assert result.signals["activation_std"][0] > 0
    finally:
        model.close()


def test_nested_checkpoint_with_data_parallel_prefix(
    resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    state = torch.load(resnet_weights["pt"], weights_only=True)
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = load_model(resnet_settings(path), tmp_path)
    model.close()


def test_class_count_not_matching_the_weights(
    resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    settings = resnet_settings(resnet_weights["safetensors"], classes=["a", "b", "c", "d"])
    with pytest.raises(ModelLoadError) as caught:
        load_model(settings, tmp_path)
    message = str(caught.value)
    assert "trained for 3 classes" in message and "model.classes lists 4" in message
    assert "resnet18.safetensors" in message


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_model(resnet_settings(tmp_path / "gone.safetensors"), tmp_path)
    message = str(caught.value)
    assert (
        "model.weights" in message and "gone.safetensors" in message and "no such file" in message
    )


def test_unreadable_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"model\.weights = '.*junk\.pt': cannot be read"):
        load_model(resnet_settings(path), tmp_path)


def test_unknown_architecture_lists_valid_names(
    resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    settings = resnet_settings(resnet_weights["safetensors"], architecture="resnet19")
    with pytest.raises(ModelLoadError) as caught:
        load_model(settings, tmp_path)
    message = str(caught.value)
    assert "model.architecture = 'resnet19'" in message
    assert "did you mean" in message and "resnet18" in message and "digits_cnn" in message


def test_weights_of_another_architecture(resnet_weights: dict[str, Path], tmp_path: Path) -> None:
    settings = resnet_settings(resnet_weights["safetensors"], architecture="mobilenet_v3_small")
    with pytest.raises(ModelLoadError, match="does not fit architecture 'mobilenet_v3_small'"):
        load_model(settings, tmp_path)


def test_unknown_activation_layer_lists_module_names(
    resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    settings = resnet_settings(resnet_weights["safetensors"], activation_layer="layer5")
    with pytest.raises(ModelLoadError) as caught:
        load_model(settings, tmp_path)
    message = str(caught.value)
    assert "model.activation_layer = 'layer5'" in message and "layer4" in message


def test_torchvision_architectures_need_three_channels(
    resnet_weights: dict[str, Path], tmp_path: Path
) -> None:
    settings = resnet_settings(resnet_weights["safetensors"], channels=1, mean=[0.5], std=[0.5])
    with pytest.raises(ModelLoadError, match=r"model\.channels = 1: torchvision's resnet18"):
        load_model(settings, tmp_path)


def test_input_too_small_for_the_network_fails_at_load(tmp_path: Path) -> None:
    network = DigitsCNN(num_classes=2, channels=3)
    path = tmp_path / "tiny.pt"
    torch.save(network.state_dict(), path)
    settings = ModelSettings(
        architecture="digits_cnn",
        weights=str(path),
        classes=["a", "b"],
        input_size=[1, 1],
        device="cpu",
    )
    with pytest.raises(ModelLoadError, match="cannot run on 3-channel 1x1 input"):
        load_model(settings, tmp_path)


def test_every_listed_name_is_buildable_by_name() -> None:
    names = available_architectures()
    assert names[0] == "digits_cnn" and "resnet18" in names and "vit_b_16" in names
    assert "fasterrcnn_resnet50_fpn" not in names  # detection models are not classifiers
    network = build_network("squeezenet1_1", num_classes=5, channels=3)
    assert network(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


def test_networks_without_linear_layers_watch_the_last_parameterised_layer() -> None:
    from monitord_torchvision.activations import default_layer

    network = build_network("squeezenet1_1", num_classes=5, channels=3)
    assert default_layer(network)[0] == "classifier.1"
    assert default_layer(DigitsCNN())[0] == "classifier.fc1"
