from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monitord.settings import ModelSettings, SettingsError

from monitord_torchvision.devices import resolve_device
from monitord_torchvision.options import parse_options, read_classes_file


def test_defaults() -> None:
    options = parse_options(ModelSettings())
    assert options.architecture is None and options.train_if_missing is True
    assert options.input_size == (224, 224) and options.channels == 3
    assert options.normalisation() == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_misspelled_key_is_named() -> None:
    with pytest.raises(SettingsError, match=r"model\.archtecture: unknown setting"):
        parse_options(ModelSettings(archtecture="resnet18"))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("input_size", [0, 8], "model.input_size.0 = 0:"),
        ("input_size", [8], "model.input_size.1 = [8]: Field required"),
        ("channels", 2, "model.channels = 2:"),
        ("train_if_missing", "perhaps", "model.train_if_missing = 'perhaps':"),
        ("std", [0.0, 1.0, 1.0], "model.std.0 = 0.0:"),
        ("classes", [], "model.classes = []:"),
    ],
)
def test_bad_values_name_the_key_and_value(key: str, value: object, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_options(ModelSettings(**{key: value}))
    assert expected in str(caught.value)


def test_cross_key_rules() -> None:
    with pytest.raises(
        SettingsError, match=r"model\.weights is set but model\.architecture is not"
    ):
        parse_options(ModelSettings(weights="w.pt"))
    with pytest.raises(SettingsError, match=r"model\.weights is missing") as caught:
        parse_options(ModelSettings(architecture="resnet18", classes=["a"]))
    assert "resnet18" in str(caught.value)
    with pytest.raises(SettingsError, match=r"model\.classes is missing"):
        parse_options(ModelSettings(architecture="resnet18", weights="w.pt"))
    with pytest.raises(SettingsError, match="both set"):
        parse_options(
            ModelSettings(architecture="resnet18", weights="w.pt", classes=["a"], classes_file="c")
        )
    with pytest.raises(SettingsError, match=r"model\.mean = \[0\.5\]: needs one value per channel"):
        parse_options(
            ModelSettings(architecture="resnet18", weights="w.pt", classes=["a"], mean=[0.5])
        )
    with pytest.raises(SettingsError, match="repeated: cat"):
        parse_options(ModelSettings(architecture="x", weights="w", classes=["cat", "dog", "cat"]))


def test_lists_from_environment_variables_are_json() -> None:
    options = parse_options(
        {
            "architecture": "resnet18",
            "weights": "w.pt",
            "classes": '["a", "b"]',
            "input_size": "[32, 48]",
            "train_if_missing": "false",
        }
    )
    assert options.input_size == (32, 48) and options.classes == ["a", "b"]
    assert options.train_if_missing is False


def test_one_channel_defaults_to_gray_imagenet_statistics() -> None:
    options = parse_options({"architecture": "x", "weights": "w", "classes": ["a"], "channels": 1})
    assert options.normalisation() == ((0.449,), (0.226,))


def test_classes_file(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("# our labels\ncat\n\n dog \nbird\n", encoding="utf-8")
    assert read_classes_file(path) == ["cat", "dog", "bird"]
    with pytest.raises(SettingsError, match=r"model\.classes_file = '.*nope\.txt': no such file"):
        read_classes_file(tmp_path / "nope.txt")
    (tmp_path / "dupes.txt").write_text("a\na\n")
    with pytest.raises(SettingsError, match="repeated: a"):
        read_classes_file(tmp_path / "dupes.txt")


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SettingsError, match=r"model\.device = 'tpu': unknown device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(SettingsError, match=f"model.device = '{spec}': CUDA is not available"):
            resolve_device(spec)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_beyond_the_devices_is_a_clear_error() -> None:
    assert resolve_device("cuda").type == "cuda"
    with pytest.raises(SettingsError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


# -- speed options (issue 6) ---------------------------------------------------------------


def test_speed_options_default_to_the_plain_path() -> None:
    options = parse_options(ModelSettings())
    assert options.channels_last is None  # resolved per device: on for CUDA, off for the CPU
    assert options.autocast == "off"
    assert options.decode_on_device is False
    assert options.torch_threads is None


def test_speed_options_parse_from_toml_values_and_environment_strings() -> None:
    from_toml = parse_options(
        {"channels_last": True, "autocast": "bf16", "decode_on_device": True, "torch_threads": 4}
    )
    assert (from_toml.channels_last, from_toml.autocast) == (True, "bf16")
    assert (from_toml.decode_on_device, from_toml.torch_threads) == (True, 4)
    from_env = parse_options(
        {"channels_last": "false", "autocast": "fp16", "decode_on_device": "true", "torch_threads": "2"}
    )
    assert (from_env.channels_last, from_env.autocast) == (False, "fp16")
    assert (from_env.decode_on_device, from_env.torch_threads) == (True, 2)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("autocast", "bf17", "model.autocast = 'bf17': must be \"off\", \"bf16\" or \"fp16\""),
        ("autocast", False, "model.autocast = False: must be \"off\", \"bf16\" or \"fp16\""),
        ("autocast", "bfloat16", "bf16 is the recommended setting on a GPU"),
        ("channels_last", 2, "model.channels_last = 2: must be true or false"),
        ("channels_last", "sometimes", "model.channels_last = 'sometimes': Input should be a valid boolean"),
        ("decode_on_device", 1, "model.decode_on_device = 1: must be true or false"),
        ("decode_on_device", "gpu", "model.decode_on_device = 'gpu': Input should be a valid boolean"),
        ("torch_threads", 0, "model.torch_threads = 0: Input should be greater than 0"),
        ("torch_threads", -3, "model.torch_threads = -3: Input should be greater than 0"),
        ("torch_threads", True, "model.torch_threads = True: must be a whole number of threads"),
        ("torch_threads", "many", "model.torch_threads = 'many': Input should be a valid integer"),
        ("torch_threads", 2.5, "model.torch_threads = 2.5: Input should be a valid integer"),
    ],
)
def test_bad_speed_options_name_the_key_value_and_fix(key: str, value: object, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_options(ModelSettings(**{key: value}))
    assert expected in str(caught.value)
    assert f"MONITORD_MODEL__{key.upper()}" in str(caught.value)


def test_channels_last_and_pinned_memory_follow_the_device_unless_set() -> None:
    from monitord_torchvision.acceleration import Acceleration

    cpu = torch.device("cpu")
    assert Acceleration.for_device(cpu) == Acceleration(False, None, False)
    assert Acceleration.for_device(cpu, channels_last=True, autocast="bf16") == Acceleration(
        True, torch.bfloat16, False
    )
    assert Acceleration.for_device(cpu, autocast="fp16").autocast is torch.float16
    if torch.cuda.is_available():
        cuda = torch.device("cuda", 0)
        assert Acceleration.for_device(cuda) == Acceleration(True, None, True)
        assert Acceleration.for_device(cuda, channels_last=False).channels_last is False
