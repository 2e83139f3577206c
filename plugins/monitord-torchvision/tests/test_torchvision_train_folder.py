"""``monitord train --data DIR``: a model of one's own from a folder of labelled images.

The datasets are the scikit-learn digits rendered as RGB PNGs on the fly, under class
names whose sorted order is not the digits' order, so that a model trained with the wrong
class list would show. Training runs through the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file

from monitord.decode import decode_image, read_payload
from monitord.reference import read_reference
from monitord.settings import ModelSettings
from monitord_torchvision import plugin
from monitord_torchvision.artifact import METADATA_FILE, WEIGHTS_FILE
from monitord_torchvision.digits import digits_split
from monitord_torchvision.folder_training import train_on_folder
from monitord_torchvision.image_folder import discover
from monitord_torchvision.loading import load_artifact, load_model
from monitord_torchvision.options import TorchvisionOptions



#: Digit → class folder name; sorted, the names are not in digit order.
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def render_digits(
    folder: Path, digits: tuple[int, ...], per_class: int, *, size: int = 32, start: int = 0
) -> dict[str, list[Path]]:
    """``folder/<name>/<n>.png``: ``per_class`` digits of each kind, RGB, ``size`` pixels."""
    split = digits_split()
    images = np.concatenate([split.train_images, split.held_out_images])
    labels = np.concatenate([split.train_labels, split.held_out_labels])
    written: dict[str, list[Path]] = {}
    for digit in digits:
        class_folder = folder / NAMES[digit]
        class_folder.mkdir(parents=True, exist_ok=True)
        chosen = np.flatnonzero(labels == digit)[start : start + per_class]
        paths = []
        for n, index in enumerate(chosen):
            gray = Image.fromarray(images[index]).resize((size, size), Image.Resampling.NEAREST)
            path = class_folder / f"{n:03d}.png"
            gray.convert("RGB").save(path)
            paths.append(path)
        written[NAMES[digit]] = paths
    return written


def monitord_train(cwd: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """``monitord train ARGS`` with ``MONITORD_MODEL__<KEY>`` settings, on the CPU."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MONITORD_")}
    env["MONITORD_MODEL__DEVICE"] = "cpu"
    env.update({f"MONITORD_MODEL__{key.upper()}": value for key, value in settings.items()})
    return subprocess.run(
        [sys.executable, "-m", "monitord", "train", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def predicted_names(artifact: Path, paths: list[Path]) -> list[str]:
    """What the artifact, served alone, answers for image files (through the core's decoder)."""
    model = load_artifact(artifact, device="cpu")
    try:
        inputs = np.stack([model.preprocess(decode_image(read_payload(p), 10**7)) for p in paths])
        return [model.class_names[i] for i in model.predict(inputs).class_index]
    finally:
        model.close()


def test_resnet18_on_train_and_val_folders_serves_from_the_artifact_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    render_digits(data / "train", (0, 1, 2), per_class=30)
    val = render_digits(data / "val", (0, 1, 2), per_class=8, start=30)
    output = tmp_path / "model"
    completed = monitord_train(
        tmp_path, "--data", str(data), "--output", str(output), "--epochs", "2", "--no-progress",
        architecture="resnet18", input_size="[32, 32]",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    metadata = json.loads((output / METADATA_FILE).read_text())
    assert metadata["architecture"] == "resnet18"
    assert metadata["class_names"] == ["one", "two", "zero"]  # sorted folder names
    assert metadata["input_size"] == [32, 32] and metadata["channels"] == 3
    assert metadata["train_samples"] == 90 and metadata["held_out_samples"] == 24
    assert metadata["epochs"] <= 2 and "train/<class>/ and" in metadata["dataset"]
    assert metadata["held_out_per_class"]["zero"]["samples"] == 8
    reference = read_reference(output)  # built from the validation images
    assert reference.samples == 24 and tuple(reference.class_names) == ("one", "two", "zero")
    # The recorded accuracy is the served artifact's on the validation images.
    val_items = [(path, name) for name, paths in val.items() for path in paths]
    answers = predicted_names(output, [path for path, _ in val_items])
    measured = np.mean([answer == name for answer, (_, name) in zip(answers, val_items)])
    assert metadata["held_out_accuracy"] == pytest.approx(measured)
    assert f"held-out accuracy: {measured:.2%} (24 validation images)" in out
    assert re.search(r"^  zero +(\d+\.\d\d%) +8$", out, re.M), out
    assert "(no --min-accuracy given: written whatever the accuracy)" in out
    assert "unset model.architecture" in out
    assert "epoch 1/2" not in completed.stderr  # --no-progress
    # model.artifact alone, through the plugin's factory as the daemon calls it.
    served = load_model(ModelSettings(artifact=output, device="cpu"), tmp_path / "state")
    try:
        assert served.name == "resnet18" and served.class_names == ("one", "two", "zero")
    finally:
        served.close()


def test_digits_cnn_on_a_flat_folder_learns_from_a_seeded_split(tmp_path: Path) -> None:
    data = tmp_path / "data"
    render_digits(data, tuple(range(10)), per_class=30, size=16)
    output = tmp_path / "model"
    completed = monitord_train(
        tmp_path, "--data", str(data), "--output", str(output), "--epochs", "12", "--seed", "3",
        input_size="[8, 8]",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    metadata = json.loads((output / METADATA_FILE).read_text())
    assert metadata["architecture"] == "digits_cnn"  # model.architecture unset
    assert metadata["class_names"] == sorted(NAMES)
    assert metadata["held_out_samples"] == 60 and metadata["train_samples"] == 240  # 20 %
    assert "held out for validation (stratified, seed 3)" in metadata["dataset"]
    assert metadata["held_out_accuracy"] >= 0.8, completed.stdout
    assert "epoch 1/12" in completed.stderr  # the progress bar, on by default
    # The split the CLI made is the one discover() makes with that seed.
    dataset = discover(data, seed=3)
    val_paths = [item.path for item in dataset.val]
    answers = predicted_names(output, val_paths)
    truth = [dataset.class_names[item.class_index] for item in dataset.val]
    assert np.mean([a == t for a, t in zip(answers, truth)]) == pytest.approx(
        metadata["held_out_accuracy"]
    )


def test_the_preprocessing_trained_with_is_recorded_and_served(tmp_path: Path) -> None:
    data = tmp_path / "data"
    val = render_digits(data / "val", (0, 1), per_class=4, size=40, start=20)
    render_digits(data / "train", (0, 1), per_class=20, size=40)
    output = tmp_path / "model"
    completed = monitord_train(
        tmp_path, "--data", str(data), "--output", str(output), "--epochs", "1", "--no-progress",
        architecture="digits_cnn", input_size="[16, 16]", resize_size="20", interpolation="bicubic",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    metadata = json.loads((output / METADATA_FILE).read_text())
    assert metadata["resize_size"] == 20 and metadata["interpolation"] == "bicubic"
    assert metadata["format_version"] == 2  # older readers would ignore the crop: they refuse it
    model = load_artifact(output, device="cpu")
    try:
        assert model.spec.resize_size == 20 and model.spec.input_size == (16, 16)
        assert model.preprocess(decode_image(read_payload(val["zero"][0]), 10**7)).shape == (3, 16, 16)
    finally:
        model.close()


def test_the_split_is_stratified_and_follows_the_seed(tmp_path: Path) -> None:
    written = render_digits(tmp_path, (0, 1, 2), per_class=11, size=8)
    render_digits(tmp_path / "lonely_parent", (3,), per_class=1, size=8)  # a nested class
    first, again, other = (discover(tmp_path, seed=s) for s in (5, 5, 6))
    assert first.val == again.val and first.train == again.train
    assert {item.path for item in first.val} != {item.path for item in other.val}
    for index, name in enumerate(first.class_names):
        held = [item for item in first.val if item.class_index == index]
        if name in written:
            assert len(held) == 2  # round(11 * 0.2)
            assert {item.path for item in held} <= set(written[name])
    lonely = first.class_names.index("lonely_parent")
    assert not any(item.class_index == lonely for item in first.val)  # its only image trains


def test_fine_tuning_keeps_the_backbone_and_gives_a_new_head(tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        start = torchvision.models.resnet18(weights=None, num_classes=5).state_dict()
    weights = tmp_path / "pretrained.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in start.items()}, str(weights))
    data = tmp_path / "data"
    render_digits(data, (4, 5, 6), per_class=10)
    output = tmp_path / "model"
    completed = monitord_train(
        tmp_path, "--data", str(data), "--output", str(output), "--epochs", "1", "--no-progress",
        architecture="resnet18", input_size="[32, 32]", weights=str(weights),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (
        f"started from {weights}: kept {len(start) - 2} of {len(start)} tensors; "
        "reinitialised 2: fc.weight, fc.bias"
    ) in completed.stdout
    trained = load_file(str(output / WEIGHTS_FILE))
    assert trained["fc.weight"].shape == (3, 512)
    assert json.loads((output / METADATA_FILE).read_text())["started_from"] == str(weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        fresh = torchvision.models.resnet18(weights=None, num_classes=3).state_dict()
    # One epoch moved the backbone a little from the weights it started from, which a
    # training from scratch would be nowhere near.
    name = "layer3.0.conv1.weight"
    moved = torch.linalg.norm(trained[name] - start[name]) / torch.linalg.norm(start[name])
    apart = torch.linalg.norm(fresh[name] - start[name]) / torch.linalg.norm(start[name])
    assert moved < 0.2 and apart > 1.0, (moved, apart)


def test_unreadable_images_are_skipped_and_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    render_digits(data, (0, 1), per_class=10, size=8)
    (data / "one" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (data / "zero" / "truncated.jpg").write_bytes(b"\xff\xd8\xff")
    (data / "zero" / "notes.txt").write_text("not an image")
    output = tmp_path / "model"
    completed = monitord_train(
        tmp_path, "--data", str(data), "--output", str(output), "--epochs", "1", "--no-progress",
        input_size="[8, 8]",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    assert "skipped 2 unreadable images: " in out, out
    assert str(data / "one" / "broken.png") in out and str(data / "zero" / "truncated.jpg") in out
    assert f"ignored 1 files that are not images: {data / 'zero' / 'notes.txt'}" in out
    metadata = json.loads((output / METADATA_FILE).read_text())
    assert metadata["skipped_images"] == 2
    assert metadata["train_samples"] + metadata["held_out_samples"] == 20


def test_a_minimum_accuracy_not_reached_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    render_digits(data, (0, 1), per_class=5, size=8)
    output = tmp_path / "model"
    completed = monitord_train(
        tmp_path, "--data", str(data), "--output", str(output), "--epochs", "1", "--no-progress",
        "--min-accuracy", "1.0", input_size="[8, 8]",
    )  # fmt: skip
    if completed.returncode == 0:  # one epoch reached 100 %: nothing to refuse
        pytest.skip("one epoch already reached 100 % on this machine")
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "is below the required 100%" in completed.stderr
    assert "held-out accuracy: " in completed.stdout
    assert not output.exists()


def test_preprocessed_in_memory_or_decoded_per_epoch_train_the_same(tmp_path: Path) -> None:
    data = tmp_path / "data"
    render_digits(data, (0, 1, 2), per_class=12, size=16)
    options = TorchvisionOptions(input_size=(8, 8), channels=1)
    kept, streamed = tmp_path / "kept", tmp_path / "streamed"
    common = dict(seed=0, device=torch.device("cpu"), max_pixels=10**7, epochs=2, progress=False)
    first = train_on_folder(data, kept, options, **common)
    second = train_on_folder(data, streamed, options, memory_budget=0, **common)
    assert first.in_memory and not second.in_memory
    assert (kept / WEIGHTS_FILE).read_bytes() == (streamed / WEIGHTS_FILE).read_bytes()
    assert first.held_out_accuracy == second.held_out_accuracy


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> click.Group:
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("MONITORD_")]:
        monkeypatch.delenv(name)
    group = click.Group("monitord")
    plugin.register_commands(group)
    return group


def test_bad_layouts_are_refused_with_the_expected_layout(cli: click.Group, tmp_path: Path) -> None:
    def refused(data: Path) -> str:
        output = tmp_path / "never"
        args = ["train", "--data", str(data), "--output", str(output), "--no-progress"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("Error: ") and "Traceback" not in result.output
        assert not output.exists()
        return " ".join(result.stderr.split())  # click wraps the message

    assert f"{tmp_path / 'absent'} does not exist; expected DIR/train/<class>/" in refused(
        tmp_path / "absent"
    )
    (tmp_path / "empty").mkdir()
    assert "holds no class folders; expected" in refused(tmp_path / "empty")

    only_train = tmp_path / "only_train"
    render_digits(only_train / "train", (0,), per_class=2, size=8)
    assert "has train/ but no val/" in refused(only_train)

    differ = tmp_path / "differ"
    render_digits(differ / "train", (0, 1), per_class=2, size=8)
    render_digits(differ / "val", (0, 2), per_class=2, size=8)
    assert "(only in train/: one; only in val/: two)" in refused(differ)

    empty_class = tmp_path / "empty_class"
    render_digits(empty_class, (0,), per_class=2, size=8)
    (empty_class / "cats").mkdir()
    (empty_class / "cats" / "readme.txt").write_text("no images")
    assert "class folder(s) cats hold no images" in refused(empty_class)

    loose = tmp_path / "loose"
    render_digits(loose, (0,), per_class=2, size=8)
    Image.new("RGB", (8, 8)).save(loose / "stray.png")
    assert "holds images outside the class folders (stray.png)" in refused(loose)

    unreadable = tmp_path / "unreadable"
    render_digits(unreadable, (0,), per_class=3, size=8)
    (unreadable / "ghosts").mkdir()
    for n in range(3):
        (unreadable / "ghosts" / f"{n}.png").write_bytes(b"nothing")
    assert "no readable training images for class(es) ghosts" in refused(unreadable)


def test_early_stopping_ends_training_when_the_validation_loss_stops_improving(
    tmp_path: Path,
) -> None:
    """Labels that do not follow the images: the network can only memorise the training
    set, so the validation loss soon rises, and training stops ``patience`` epochs after
    its lowest point."""
    written = render_digits(tmp_path / "data", (0, 1, 2, 3), per_class=12, size=8)
    shuffled = tmp_path / "shuffled"
    paths = sorted(path for group in written.values() for path in group)
    order = np.random.default_rng(0).permutation(len(paths))
    for n, index in enumerate(order):
        target = shuffled / ("a", "b")[n % 2] / f"{n:03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(paths[index].read_bytes())
    options = TorchvisionOptions(input_size=(8, 8))
    report = train_on_folder(
        shuffled, tmp_path / "model", options, seed=0, device=torch.device("cpu"),
        max_pixels=10**7, epochs=40, patience=2, progress=False,
    )  # fmt: skip
    assert report.stopped_early and report.epochs < 40, report
    assert report.epochs == report.best_epoch + 2
    metadata = json.loads((tmp_path / "model" / METADATA_FILE).read_text())
    assert metadata["stopped_early"] is True and metadata["best_epoch"] == report.best_epoch
