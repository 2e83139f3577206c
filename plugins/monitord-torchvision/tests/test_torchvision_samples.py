"""``monitord samples``: held-out digits written as PNGs for the quick start (issue 15, item 8)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from monitord_torchvision import plugin
from monitord_torchvision.digits import held_out_digits
from monitord_torchvision.drifts import drift_image


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> click.Group:
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("MONITORD_")]:
        monkeypatch.delenv(name)
    group = click.Group("monitord")
    plugin.register_commands(group)
    return group


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "L" and image.size == (8, 8)
        return np.asarray(image)


def written(folder: Path) -> dict[str, np.ndarray]:
    return {path.relative_to(folder).as_posix(): read_png(path) for path in sorted(folder.rglob("*.png"))}


def test_samples_are_held_out_digits_in_their_class_folders(cli: click.Group, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["samples", "out", "--count", "23"])
    assert result.exit_code == 0, result.output
    files = written(tmp_path / "out")
    expected = [f"{label}/{n}.png" for n in range(3) for label in range(10)][:23]
    assert sorted(files) == sorted(expected)
    images, labels = held_out_digits()
    for name, pixels in files.items():
        matches = [int(labels[i]) for i in range(len(images)) if np.array_equal(images[i], pixels)]
        assert matches and set(matches) == {int(name.split("/")[0])}, name  # a held-out digit of that class
    assert not np.array_equal(files["5/0.png"], files["5/1.png"])
    lines = result.output.splitlines()
    assert lines[0] == "wrote 23 held-out digits (8x8 grayscale PNGs, clean) as out/<label>/<n>.png:"
    assert "  5: out/5/0.png out/5/1.png" in lines and "  2: out/2/0.png out/2/1.png out/2/2.png" in lines


def test_the_seed_picks_the_digits_and_a_drift_changes_them(cli: click.Group, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["samples", "a", "--count", "10"]).exit_code == 0
    assert runner.invoke(cli, ["samples", "b", "--count", "10", "--seed", "3"]).exit_code == 0
    result = runner.invoke(cli, ["samples", "c", "--count", "10", "--seed", "3", "--drift", "rotation",
                                 "--amount", "30"])
    assert result.exit_code == 0, result.output
    assert "(8x8 grayscale PNGs, drifted: rotation 30 (degrees, counter-clockwise))" in result.output
    a, b, c = (written(tmp_path / name) for name in "abc")
    assert any(not np.array_equal(a[name], b[name]) for name in a)
    for name in b:  # the same digits as --seed 3, turned by 30 degrees
        assert np.array_equal(c[name], drift_image(b[name], "rotation", 30))
    again = runner.invoke(cli, ["samples", "a", "--count", "10"])  # the same names are replaced
    assert again.exit_code == 0 and written(tmp_path / "a").keys() == a.keys()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["out", "--amount", "3"], "--amount needs --drift"),
        (["out", "--drift", "invert", "--amount", "3"], "must be between 0 and 1, got 3.0"),
        (["out", "--drift", "class-mix"], "'class-mix' is not one of"),
        (["out", "--count", "0"], "--count"),
        (["taken"], "Directory 'taken' is a file"),
    ],
)
def test_bad_input_exits_2_saying_why(cli: click.Group, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "taken").write_text("a file")
    result = CliRunner().invoke(cli, ["samples", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_samples_is_a_monitord_command() -> None:
    group = click.Group("monitord")
    plugin.register_commands(group)
    assert "samples" in group.commands
    assert re.search(r"FOLDER/<label>/<n>\.png", group.commands["samples"].help or "")


def test_training_digits_at_a_larger_size_make_a_dataset_apart_from_the_held_out_ones(
        cli: click.Group, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["samples", "train", "--split", "training", "--count", "30", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("wrote 30 training digits (32x32 grayscale PNGs, clean)")
    held_out_images, _ = held_out_digits()
    for path in sorted((tmp_path / "train").rglob("*.png")):
        with Image.open(path) as image:
            assert image.size == (32, 32) and image.mode == "L"
            pixels = np.asarray(image)
        small = pixels[::4, ::4]  # each digit pixel repeated 4 x 4
        assert np.array_equal(np.kron(small, np.ones((4, 4), dtype=np.uint8)), pixels)
        assert not any(np.array_equal(small, held) for held in held_out_images), path
