from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from monitord.model import BatchResult, Model
from PIL import Image

from monitord_torchvision.digits import digit_png_bytes, held_out_digits
from monitord_torchvision.inference import TorchvisionModel
from monitord_torchvision.loading import load_artifact
from monitord_torchvision.signals import SIGNAL_NAMES


def test_model_meets_the_core_protocol(digits_model: TorchvisionModel) -> None:
    assert isinstance(digits_model, Model)
    assert digits_model.name == "digits_cnn"
    assert list(digits_model.class_names) == [str(d) for d in range(10)]
    assert digits_model.device == "cpu"
    assert digits_model.activation_layer == "input of classifier.fc1"


def test_predict_returns_columnar_arrays_in_range(
    digits_model: TorchvisionModel, held_out_inputs: tuple[np.ndarray, np.ndarray]
) -> None:
    inputs, _ = held_out_inputs
    result = digits_model.predict(inputs[:17])
    assert isinstance(result, BatchResult) and len(result) == 17
    assert result.class_index.shape == (17,) and result.class_index.dtype == np.int64
    assert set(result.signals) == set(SIGNAL_NAMES)
    for name, values in result.signals.items():
        assert values.shape == (17,) and values.dtype == np.float64, name
    s = result.signals
    assert np.array_equal(result.confidence, s["confidence"])
    assert np.all((s["confidence"] > 0) & (s["confidence"] <= 1))
    assert np.all(s["entropy"] >= 0) and np.all(s["entropy"] <= np.log(10) + 1e-9)
    assert np.all((s["margin"] >= 0) & (s["margin"] <= 1))
    assert np.array_equal(s["predicted_class"], result.class_index.astype(np.float64))
    assert np.all(s["activation_std"] >= 0)


def test_signals_agree_with_a_direct_computation(
    digits_model: TorchvisionModel, held_out_inputs: tuple[np.ndarray, np.ndarray]
) -> None:
    inputs, _ = held_out_inputs
    batch = inputs[:8]
    result = digits_model.predict(batch)
    network = digits_model.network
    with torch.no_grad():
        x = torch.from_numpy(batch)
        features = network.features(x).flatten(1).double()  # the input of classifier.fc1
        probabilities = torch.softmax(network(x).double(), dim=1).numpy()
    top2 = np.sort(probabilities, axis=1)[:, ::-1][:, :2]
    entropy = -(probabilities * np.log(np.clip(probabilities, 1e-300, None))).sum(axis=1)
    np.testing.assert_allclose(result.signals["confidence"], top2[:, 0], rtol=1e-6)
    np.testing.assert_allclose(result.signals["margin"], top2[:, 0] - top2[:, 1], atol=1e-6)
    np.testing.assert_allclose(result.signals["entropy"], entropy, atol=1e-6)
    np.testing.assert_allclose(
        result.signals["activation_mean"], features.mean(dim=1).numpy(), rtol=1e-5
    )
    np.testing.assert_allclose(
        result.signals["activation_std"], features.std(dim=1, correction=0).numpy(), rtol=1e-5
    )


def test_held_out_pngs_from_disk_are_classified_correctly(
    digits_model: TorchvisionModel, tmp_path: Path
) -> None:
    images, labels = held_out_digits()
    inputs = []
    for index, pixels in enumerate(images):
        path = tmp_path / f"{index}.png"
        path.write_bytes(digit_png_bytes(pixels))
        with Image.open(path) as image:
            inputs.append(digits_model.preprocess(image))
    result = digits_model.predict(np.stack(inputs))
    assert float(np.mean(result.class_index == labels)) >= 0.95


def test_reference_signals_are_what_the_model_gives_on_held_out_data(
    digits_model: TorchvisionModel, held_out_inputs: tuple[np.ndarray, np.ndarray]
) -> None:
    inputs, _ = held_out_inputs
    result = digits_model.predict(inputs)
    assert set(digits_model.reference_signals) == set(SIGNAL_NAMES)
    for name in SIGNAL_NAMES:  # the reference's rows are stored in a random order
        np.testing.assert_allclose(
            np.sort(digits_model.reference_signals[name]), np.sort(result.signals[name]), rtol=1e-5, atol=1e-9
        )


def test_results_do_not_depend_on_batch_composition(
    digits_model: TorchvisionModel, held_out_inputs: tuple[np.ndarray, np.ndarray]
) -> None:
    inputs, _ = held_out_inputs
    whole = digits_model.predict(inputs[:6])
    for i in range(6):
        single = digits_model.predict(inputs[i : i + 1])
        assert single.class_index[0] == whole.class_index[i]
        for name in SIGNAL_NAMES:
            assert single.signals[name][0] == pytest.approx(whole.signals[name][i], rel=1e-5)


def test_empty_and_misshapen_batches(digits_model: TorchvisionModel) -> None:
    empty = digits_model.predict(np.zeros((0, 1, 8, 8), dtype=np.float32))
    assert len(empty) == 0 and set(empty.signals) == set(SIGNAL_NAMES)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        digits_model.predict(np.zeros((2, 3, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        digits_model.predict(np.zeros((1, 8, 8), dtype=np.float32))


def test_activation_layer_is_configurable_and_changes_the_signals(
    artifact_dir: Path,
    digits_model: TorchvisionModel,
    held_out_inputs: tuple[np.ndarray, np.ndarray],
) -> None:
    inputs, _ = held_out_inputs
    conv = load_artifact(artifact_dir, device="cpu", activation_layer="features.conv3")
    try:
        assert conv.activation_layer == "output of features.conv3"
        default = digits_model.predict(inputs[:20])
        custom = conv.predict(inputs[:20])
        # Same predictions, different layer measured.
        assert np.array_equal(default.class_index, custom.class_index)
        assert not np.allclose(
            default.signals["activation_mean"], custom.signals["activation_mean"]
        )
        with torch.no_grad():
            network = conv.network
            x = torch.from_numpy(inputs[:20])
            after_conv3 = network.features[:6](x).double().flatten(1)
        np.testing.assert_allclose(
            custom.signals["activation_mean"], after_conv3.mean(1).numpy(), rtol=1e-5
        )
        # References measured on another layer would mislead detectors: dropped.
        assert "activation_mean" not in conv.reference_signals
        assert "confidence" in conv.reference_signals
    finally:
        conv.close()


def test_preprocess_is_thread_safe(digits_model: TorchvisionModel) -> None:
    images, _ = held_out_digits()
    pil_images = [Image.fromarray(pixels) for pixels in images[:64]]
    serial = [digits_model.preprocess(image) for image in pil_images]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(digits_model.preprocess, pil_images))
    assert all(np.array_equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_closed_model_refuses_to_predict(artifact_dir: Path) -> None:
    model = load_artifact(artifact_dir, device="cpu")
    model.close()
    model.close()
    with pytest.raises(RuntimeError, match="closed"):
        model.predict(np.zeros((1, 1, 8, 8), dtype=np.float32))
