"""channels_last, autocast and torch_threads (issue 6), checked on the CPU.

The GPU is where these pay off, but their semantics are the same on the CPU: the layout
and precision must change how the network runs, and must not change what it says beyond
the rounding bfloat16 brings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monitord.model import EncodedInputModel
from monitord.settings import ModelSettings
from PIL import Image

from monitord_torchvision.acceleration import Acceleration
from monitord_torchvision.inference import DeviceDecodingModel, TorchvisionModel
from monitord_torchvision.loading import load_artifact, load_model
from monitord_torchvision.signals import SIGNAL_NAMES


def conv_calls(model: TorchvisionModel) -> list[tuple[torch.dtype, bool]]:
    """Records (output dtype, input is channels_last) of a convolution, once per call.

    The first one whose input has several channels: with one, NCHW and NHWC coincide.
    """
    conv = next(m for m in model.network.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    calls: list[tuple[torch.dtype, bool]] = []

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        calls.append(
            (output.dtype, args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous())
        )

    conv.register_forward_hook(hook)
    return calls


def test_bf16_autocast_with_channels_last_agrees_with_the_plain_path(
    artifact_dir: Path,
    digits_model: TorchvisionModel,
    held_out_inputs: tuple[np.ndarray, np.ndarray],
) -> None:
    inputs, labels = held_out_inputs
    plain = digits_model.predict(inputs)
    fast = load_artifact(
        artifact_dir, device="cpu", acceleration=Acceleration(channels_last=True, autocast=torch.bfloat16)
    )
    try:
        calls = conv_calls(fast)
        result = fast.predict(inputs)
    finally:
        fast.close()
    # It really ran in bfloat16 on NHWC input...
    assert calls == [(torch.bfloat16, True)]
    assert not np.array_equal(result.signals["confidence"], plain.signals["confidence"])
    # ...and says what the float32 network says, up to bfloat16's rounding.
    assert float(np.mean(result.class_index == plain.class_index)) >= 0.98
    assert float(np.mean(result.class_index == labels)) >= 0.95
    for name in ("confidence", "margin", "entropy"):
        np.testing.assert_allclose(result.signals[name], plain.signals[name], atol=0.05, err_msg=name)
    for name in ("activation_mean", "activation_std"):
        np.testing.assert_allclose(result.signals[name], plain.signals[name], rtol=0.05, err_msg=name)
    # Signals leave in float64 whatever the network computed in.
    assert all(result.signals[name].dtype == np.float64 for name in SIGNAL_NAMES)


def test_fp16_autocast_runs_the_network_in_half_precision(
    artifact_dir: Path,
    digits_model: TorchvisionModel,
    held_out_inputs: tuple[np.ndarray, np.ndarray],
) -> None:
    inputs, _ = held_out_inputs
    half = load_artifact(artifact_dir, device="cpu", acceleration=Acceleration(autocast=torch.float16))
    try:
        calls = conv_calls(half)
        result = half.predict(inputs[:64])
    finally:
        half.close()
    assert calls == [(torch.float16, False)]  # channels_last is off by default on the CPU
    plain = digits_model.predict(inputs[:64])
    assert float(np.mean(result.class_index == plain.class_index)) >= 0.98
    np.testing.assert_allclose(result.confidence, plain.confidence, atol=0.02)


def test_channels_last_alone_changes_the_layout_not_the_answer(
    artifact_dir: Path,
    digits_model: TorchvisionModel,
    held_out_inputs: tuple[np.ndarray, np.ndarray],
) -> None:
    inputs, _ = held_out_inputs
    model = load_artifact(artifact_dir, device="cpu", acceleration=Acceleration(channels_last=True))
    try:
        conv = model.network.features.conv2
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert not conv.weight.is_contiguous()
        calls = conv_calls(model)
        result = model.predict(inputs[:50])
    finally:
        model.close()
    assert calls == [(torch.float32, True)]
    plain = digits_model.predict(inputs[:50])
    assert np.array_equal(result.class_index, plain.class_index)
    for name in SIGNAL_NAMES:
        np.testing.assert_allclose(result.signals[name], plain.signals[name], rtol=1e-4, atol=1e-6)


def test_resnet_in_channels_last_matches_nchw(resnet_weights: dict[str, Path], tmp_path: Path) -> None:
    settings = dict(
        architecture="resnet18", weights=str(resnet_weights["safetensors"]), classes=["a", "b", "c"],
        input_size=[32, 32], device="cpu",
    )
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(6)]
    nchw = load_model(ModelSettings(**settings, channels_last=False), tmp_path)
    nhwc = load_model(ModelSettings(**settings, channels_last=True), tmp_path)
    try:
        batch = np.stack([nchw.preprocess(photo) for photo in photos])
        calls = conv_calls(nhwc)
        expected, got = nchw.predict(batch), nhwc.predict(batch)
    finally:
        nchw.close()
        nhwc.close()
    assert calls == [(torch.float32, True)]
    assert np.array_equal(expected.class_index, got.class_index)
    for name in SIGNAL_NAMES:
        np.testing.assert_allclose(got.signals[name], expected.signals[name], rtol=1e-4, atol=1e-6)


def test_load_model_applies_the_settings(artifact_dir: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        model = load_model(
            ModelSettings(
                artifact=str(artifact_dir), device="cpu", channels_last=True, autocast="bf16", torch_threads=1
            ),
            tmp_path,
        )
        try:
            assert model.acceleration == Acceleration(channels_last=True, autocast=torch.bfloat16)
            assert torch.get_num_threads() == 1
            assert not isinstance(model, EncodedInputModel)  # JPEGs still decoded by the core
        finally:
            model.close()
    finally:
        torch.set_num_threads(threads)
    plain = load_model(ModelSettings(artifact=str(artifact_dir), device="cpu"), tmp_path)
    on_device = load_model(ModelSettings(artifact=str(artifact_dir), device="cpu", decode_on_device=True), tmp_path)
    try:
        assert plain.acceleration == Acceleration()  # the CPU default: float32, NCHW, pageable
        assert torch.get_num_threads() == threads
        assert not isinstance(plain, EncodedInputModel)
        assert isinstance(on_device, DeviceDecodingModel) and isinstance(on_device, EncodedInputModel)
    finally:
        plain.close()
        on_device.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_defaults_to_channels_last_pinned_copies_and_agrees_with_the_cpu(
    artifact_dir: Path,
    digits_model: TorchvisionModel,
    held_out_inputs: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    inputs, _ = held_out_inputs
    model = load_model(ModelSettings(artifact=str(artifact_dir), device="cuda", autocast="bf16"), tmp_path)
    try:
        assert model.acceleration == Acceleration(channels_last=True, autocast=torch.bfloat16, pin_memory=True)
        result = model.predict(inputs)
        result_again = model.predict(inputs[:7])  # the pinned staging buffer is reused
    finally:
        model.close()
    plain = digits_model.predict(inputs)
    assert float(np.mean(result.class_index == plain.class_index)) >= 0.98
    np.testing.assert_allclose(result.confidence, plain.confidence, atol=0.05)
    np.testing.assert_allclose(result_again.confidence, result.confidence[:7], atol=1e-3)


def test_cpu_inference_leaves_half_the_cores_to_the_rest_of_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    from monitord_torchvision.loading import default_cpu_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(2)))
    assert default_cpu_threads() == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert default_cpu_threads() == 8
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert default_cpu_threads() == 1
