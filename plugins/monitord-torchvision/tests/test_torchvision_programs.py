"""``model.program``: TorchScript and torch.export files served through the real factory.

Each program is made here from a small CNN and saved into ``tmp_path``; its answers are
compared with the eager module's on the same inputs: every signal and the embedding within
``TOLERANCE`` (1e-5); measured on this machine (torch 2.14.1, CPU), the largest difference
was 0.0 for both kinds, with and without a features output.
"""

from __future__ import annotations

import io
import json
import sys
import urllib.request
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from monitord.settings import ModelSettings, SettingsError
from PIL import Image
from torch import nn

from monitord_torchvision.errors import ModelLoadError
from monitord_torchvision.plugin import torchvision_model

CORE_TESTS = Path(__file__).parents[3] / "tests"
if str(CORE_TESTS) not in sys.path:
    sys.path.insert(0, str(CORE_TESTS))

from daemon_process import DaemonProcess, free_port  # noqa: E402

CLASSES = ["cat", "dog", "bird", "fish"]
SIZE = 16
#: Largest difference allowed between a served program's signals and the eager module's.
TOLERANCE = 1e-5

# torch 2.14 marks TorchScript deprecated; saving a program here is what a user still does.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:FutureWarning")


class SmallCNN(nn.Module):
    """Conv → ReLU → global average pool → linear: logits only."""

    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class WithFeatures(SmallCNN):
    """The same network returning ``(logits, features)``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.head(features), features


class WithFeatureDict(SmallCNN):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(x)
        return {"logits": self.head(features), "features": features}


class ThreeOutputs(SmallCNN):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.head(features), features, features


def network(kind: type[SmallCNN] = SmallCNN, seed: int = 0, classes: int = len(CLASSES)) -> SmallCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return kind(classes).eval()


def save_script(module: nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def save_export(module: nn.Module, path: Path, *, batch: int = 2, dynamic: bool = True) -> Path:
    example = (torch.randn(batch, 3, SIZE, SIZE),)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(module, example, dynamic_shapes=shapes), str(path))
    return path


def settings(program: Path, **extra: object) -> ModelSettings:
    options: dict[str, object] = {
        "program": str(program),
        "classes": CLASSES,
        "input_size": [SIZE, SIZE],
        "device": "cpu",
    }
    options.update(extra)
    return ModelSettings(**options)


def photos(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in range(count)]


def expected_signals(logits: torch.Tensor, watched: torch.Tensor) -> dict[str, np.ndarray]:
    """The plugin's signals, computed here from the eager module's outputs."""
    p = torch.softmax(logits.double(), dim=1)
    top = torch.topk(p, 2, dim=1).values
    flat = watched.double().reshape(watched.shape[0], -1)
    return {
        "confidence": top[:, 0].numpy(),
        "margin": (top[:, 0] - top[:, 1]).numpy(),
        "entropy": (-(p * p.log()).sum(dim=1)).numpy(),
        "predicted_class": p.argmax(dim=1).double().numpy(),
        "activation_mean": flat.mean(dim=1).numpy(),
        "activation_std": flat.std(dim=1, correction=0).numpy(),
    }


def assert_served_like_eager(program: Path, eager: nn.Module, tmp_path: Path, count: int = 5):
    model = torchvision_model(settings(program), tmp_path)
    try:
        batch = np.stack([model.preprocess(image) for image in photos(count)])
        result = model.predict(batch)
        with torch.no_grad():
            output = eager(torch.from_numpy(batch))
        logits, features = (output, None) if isinstance(output, torch.Tensor) else (
            (output["logits"], output["features"]) if isinstance(output, dict) else output
        )
        watched = logits if features is None else features
        expected = expected_signals(logits, watched)
        assert result.class_index.tolist() == expected["predicted_class"].astype(int).tolist()
        for name, values in expected.items():
            difference = float(np.max(np.abs(result.signals[name] - values)))
            assert difference < TOLERANCE, (name, difference)
        assert result.embedding is not None and result.embedding.dtype == np.float32
        assert result.embedding.shape == (count, watched.shape[1])
        assert float(np.max(np.abs(result.embedding - watched.numpy()))) < TOLERANCE
        return model, result
    finally:
        model.close()


# -- same answers as the eager module -------------------------------------------------------------


def test_a_torchscript_program_serves_the_eager_modules_answers(tmp_path: Path) -> None:
    eager = network()
    model, result = assert_served_like_eager(save_script(eager, tmp_path / "cnn.pt"), eager, tmp_path)
    assert model.name == "cnn" and model.activation_layer == "logits of the program"
    assert result.embedding.shape == (5, len(CLASSES))  # only logits: the embedding is them


def test_a_torch_export_program_serves_the_eager_modules_answers(tmp_path: Path) -> None:
    eager = network()
    # Named .pt, not .pt2: the kind is told from the content.
    model, _ = assert_served_like_eager(save_export(eager, tmp_path / "cnn.pt"), eager, tmp_path)
    assert model.activation_layer == "logits of the program"


@pytest.mark.parametrize("save", [save_script, save_export], ids=["torchscript", "torch.export"])
def test_a_program_returning_features_gives_an_embedding_of_their_width(save, tmp_path: Path) -> None:
    eager = network(WithFeatures)
    model, result = assert_served_like_eager(save(eager, tmp_path / "cnn.pt"), eager, tmp_path)
    assert model.activation_layer == "features of the program"
    assert result.embedding.shape == (5, 8)  # the pooled conv features, not the 4 logits


def test_a_program_returning_a_dict_of_logits_and_features(tmp_path: Path) -> None:
    eager = network(WithFeatureDict)
    _, result = assert_served_like_eager(save_export(eager, tmp_path / "cnn.pt2"), eager, tmp_path)
    assert result.embedding.shape == (5, 8)


def test_a_program_exported_for_one_image_is_served_one_image_at_a_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    eager = network()
    program = save_export(eager, tmp_path / "single.pt2", batch=1, dynamic=False)
    with caplog.at_level("WARNING", logger="monitord.torchvision"):
        assert_served_like_eager(program, eager, tmp_path, count=5)
    assert "exported for batches of exactly one image" in caplog.text
    assert "dynamic_shapes" in caplog.text


def test_a_program_exported_for_a_fixed_batch_of_several_is_refused(tmp_path: Path) -> None:
    program = save_export(network(), tmp_path / "three.pt2", batch=3, dynamic=False)
    with pytest.raises(ModelLoadError) as caught:
        torchvision_model(settings(program), tmp_path)
    message = str(caught.value)
    assert "exported for batches of exactly 3 images" in message
    assert 'dynamic_shapes=({0: torch.export.Dim("batch")},)' in message


def test_an_empty_batch_has_an_empty_embedding_of_the_right_width(tmp_path: Path) -> None:
    model = torchvision_model(settings(save_script(network(WithFeatures), tmp_path / "f.pt")), tmp_path)
    try:
        result = model.predict(np.empty((0, 3, SIZE, SIZE), dtype=np.float32))
        assert len(result) == 0 and result.embedding.shape == (0, 8)
    finally:
        model.close()


# -- refused, with what to do ---------------------------------------------------------------------


class Tripwire:
    """Unpickling this creates ``marker``: proof that a file's pickle was run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_whole_pickled_module_is_refused_without_being_unpickled(tmp_path: Path) -> None:
    whole = tmp_path / "whole.pt"
    torch.save(network(), whole)
    with pytest.raises(ModelLoadError) as caught:
        torchvision_model(settings(whole), tmp_path)
    message = str(caught.value)
    assert "model.program = '" in message and "whole.pt" in message
    assert "torch.save(model)" in message and "does not load" in message
    assert "torch.jit.save(torch.jit.script(model.eval()), path)" in message
    assert "torch.export.save(torch.export.export(model.eval(), (example,)" in message

    marker = tmp_path / "ran"
    trap = tmp_path / "trap.pt"
    torch.save({"model": Tripwire(marker)}, trap)
    with pytest.raises(ModelLoadError, match="does not load"):
        torchvision_model(settings(trap), tmp_path)
    assert not marker.exists()


def test_a_state_dict_under_model_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save(network().state_dict(), path)
    with pytest.raises(ModelLoadError) as caught:
        torchvision_model(settings(path), tmp_path)
    message = str(caught.value)
    assert "a state dict saved with torch.save" in message
    assert "model.architecture and model.weights" in message and "torch.jit.save" in message


def test_files_that_are_no_program_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"definitely not a model")
    with pytest.raises(ModelLoadError, match="neither a TorchScript nor a torch.export program"):
        torchvision_model(settings(junk), tmp_path)
    with pytest.raises(ModelLoadError, match="no such file"):
        torchvision_model(settings(tmp_path / "gone.pt2"), tmp_path)


def rewritten(source: Path, target: Path, replace) -> Path:
    """A copy of the zip ``source`` with each entry's bytes passed through ``replace``."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info, replace(info.filename, old.read(info.filename)))
    return target


def test_an_export_archive_that_would_be_unpickled_is_refused_unread(tmp_path: Path) -> None:
    program = save_export(network(), tmp_path / "cnn.pt2")
    marker = tmp_path / "ran"
    poisoned = io.BytesIO()
    torch.save(((Tripwire(marker),), {}), poisoned)

    def poison_inputs(name: str, data: bytes) -> bytes:
        return poisoned.getvalue() if "/data/sample_inputs/" in name else data

    bad_inputs = rewritten(program, tmp_path / "inputs.pt2", poison_inputs)
    with pytest.raises(ModelLoadError) as caught:
        torchvision_model(settings(bad_inputs), tmp_path)
    assert not marker.exists()  # torch.export.load alone would have run it
    assert "example inputs" in str(caught.value) and "pickle" in str(caught.value)

    def pickled_weights(name: str, data: bytes) -> bytes:
        if not name.endswith("weights_config.json"):
            return data
        config = json.loads(data)
        for entry in config["config"].values():
            entry["use_pickle"] = True
        return json.dumps(config).encode()

    flagged = rewritten(program, tmp_path / "weights.pt2", pickled_weights)
    with pytest.raises(ModelLoadError, match="is stored as a pickled object"):
        torchvision_model(settings(flagged), tmp_path)


def test_a_class_count_other_than_the_programs_outputs_is_refused(tmp_path: Path) -> None:
    for save in (save_script, save_export):
        program = save(network(classes=3), tmp_path / f"three-{save.__name__}.pt")
        with pytest.raises(ModelLoadError) as caught:
            torchvision_model(settings(program), tmp_path)
        message = str(caught.value)
        assert "returns output of shape (2, 3) for 2 images" in message
        assert "4 class names are configured" in message


def test_an_input_size_the_program_cannot_take_is_refused(tmp_path: Path) -> None:
    flat = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * SIZE * SIZE, 4)).eval()
    scripted = save_script(flat, tmp_path / "flat.pt")
    with pytest.raises(ModelLoadError, match="cannot run on 3-channel 32x32 input"):
        torchvision_model(settings(scripted, input_size=[32, 32]), tmp_path)
    exported = save_export(flat, tmp_path / "flat.pt2")
    with pytest.raises(ModelLoadError) as caught:
        torchvision_model(settings(exported, input_size=[32, 32]), tmp_path)
    assert "exported for input of shape (N, 3, 16, 16)" in str(caught.value)
    assert "model.input_size = [32, 32]" in str(caught.value)


def test_an_output_of_another_structure_is_refused(tmp_path: Path) -> None:
    program = save_script(network(ThreeOutputs), tmp_path / "three.pt")
    with pytest.raises(ModelLoadError) as caught:
        torchvision_model(settings(program), tmp_path)
    message = str(caught.value)
    assert "returns a tuple of 3 (Tensor, Tensor, Tensor)" in message
    assert '(logits, features)' in message and '"logits" and "features"' in message


def test_keys_that_do_not_go_with_a_program_are_refused_before_loading(tmp_path: Path) -> None:
    program = tmp_path / "never-read.pt"
    with pytest.raises(SettingsError) as caught:
        torchvision_model.signals(settings(program, activation_layer="features.0"))
    assert "model.activation_layer = 'features.0' cannot be used with model.program" in str(caught.value)
    assert "return (logits, features)" in str(caught.value)
    with pytest.raises(SettingsError, match="model.program and model.architecture are both set"):
        torchvision_model.signals(settings(program, architecture="resnet18"))
    with pytest.raises(SettingsError, match="model.weights is set with model.program"):
        torchvision_model.signals(settings(program, weights=str(tmp_path / "w.pt")))
    with pytest.raises(SettingsError, match="model.classes is missing"):
        torchvision_model.signals(ModelSettings(program=str(program), device="cpu"))


# -- fingerprint ----------------------------------------------------------------------------------


def test_a_programs_fingerprint_follows_its_file_and_its_preprocessing(tmp_path: Path) -> None:
    def fingerprint(program: Path, **extra: object) -> str:
        model = torchvision_model(settings(program, **extra), tmp_path)
        model.close()
        return model.fingerprint

    first = save_script(network(seed=0), tmp_path / "a.pt")
    again = fingerprint(first)
    assert len(again) == 64 and again == fingerprint(first)
    assert fingerprint(save_script(network(seed=1), tmp_path / "b.pt")) != again
    assert fingerprint(first, mean=[0.5, 0.5, 0.5]) != again
    assert fingerprint(first, input_size=[SIZE, SIZE + 1]) != again


# -- the daemon ----------------------------------------------------------------------------------


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_the_daemon_serves_a_torchscript_program_over_http(tmp_path: Path) -> None:
    program = save_script(network(WithFeatures), tmp_path / "cnn.pt")
    image = photos(1, seed=7)[0]
    in_process = torchvision_model(settings(program), tmp_path)
    try:
        expected = in_process.predict(np.stack([in_process.preprocess(image)]))
    finally:
        in_process.close()
    toml = (
        "[model]\n"
        f"program = {json.dumps(str(program))}\n"
        f"classes = {json.dumps(CLASSES)}\n"
        f"input_size = [{SIZE}, {SIZE}]\n"
        'device = "cpu"\n'
    )
    daemon = DaemonProcess(tmp_path, free_port(), extra_settings=toml)
    try:
        daemon.start()
        request = urllib.request.Request(
            daemon.url + "/v1/predict?id=one", data=png(image), headers={"Content-Type": "image/png"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        assert answer["id"] == "one"
        assert answer["class"] == CLASSES[int(expected.class_index[0])]
        for name, values in expected.signals.items():
            assert answer["signals"][name] == pytest.approx(float(values[0]), abs=TOLERANCE), name
        assert "serving cnn on cpu" in daemon.log()
    finally:
        daemon.kill()
