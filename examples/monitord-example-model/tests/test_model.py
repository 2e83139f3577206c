"""The example model through its entry point: classification, signals, embedding, reference,
fingerprint, and the errors a user gets for bad settings, files and images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from example_digits import TRAINING_IMAGES, digit_image
from monitord.model import Model, declared_signals
from monitord.plugins import load_plugins
from monitord.settings import ModelSettings, SettingsError
from monitord_example_model.centroids import CentroidFileError
from PIL import Image


def model_factory():
    return load_plugins({}).factory("model", "nearest_centroid")


def load(centroid_file: Path, **keys):
    settings = ModelSettings(type="nearest_centroid", centroids=str(centroid_file), **keys)
    return model_factory()(settings, Path("unused-state-dir"))


def test_the_build_script_reports_what_it_wrote(centroid_file: Path) -> None:
    data = json.loads(centroid_file.read_text())
    assert data["classes"] == [str(digit) for digit in range(10)]
    assert data["size"] == [8, 8]
    assert len(data["reference"]) > 250  # every fourth of 1200 images is held out


def test_it_classifies_unseen_digits_and_reports_its_signals_and_embedding(centroid_file: Path, digits) -> None:
    images, targets = digits
    model = load(centroid_file)
    assert isinstance(model, Model)
    unseen = [digit_image(pixels) for pixels in images[TRAINING_IMAGES:]]
    batch = np.stack([model.preprocess(image) for image in unseen])
    assert batch.shape == (len(unseen), 1, 8, 8) and batch.dtype == np.float32

    result = model.predict(batch)
    accuracy = float(np.mean(result.class_index == targets[TRAINING_IMAGES:]))
    assert accuracy > 0.8
    declared = declared_signals(model_factory(), ModelSettings(type="nearest_centroid", centroids=str(centroid_file)))
    assert set(result.signals) == declared == {"confidence", "margin", "distance", "predicted_class"}
    assert all(values.shape == (len(unseen),) for values in result.signals.values())
    np.testing.assert_array_equal(result.confidence, result.signals["confidence"])
    assert np.all((result.confidence > 0) & (result.confidence <= 1))
    assert result.embedding is not None and result.embedding.dtype == np.float32
    np.testing.assert_array_equal(result.embedding, batch.reshape(len(unseen), 64))


def test_its_reference_signals_come_from_the_held_out_images_and_shift_for_inverted_ones(
    centroid_file: Path, digits
) -> None:
    images, _ = digits
    model = load(centroid_file)
    held_out = len(json.loads(centroid_file.read_text())["reference"])
    assert set(model.reference_signals) == {"confidence", "margin", "distance", "predicted_class"}
    assert all(len(values) == held_out for values in model.reference_signals.values())

    inverted = np.stack([model.preprocess(digit_image(pixels, inverted=True)) for pixels in images[-200:]])
    reference_distance = np.asarray(model.reference_signals["distance"])
    assert model.predict(inverted).signals["distance"].min() > reference_distance.max()


def test_the_fingerprint_names_the_file_and_the_temperature(centroid_file: Path, tmp_path: Path) -> None:
    first = load(centroid_file).fingerprint
    assert load(centroid_file).fingerprint == first
    assert load(centroid_file, temperature=0.05).fingerprint != first
    data = json.loads(centroid_file.read_text())
    data["centroids"][0][0] += 0.01
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(data))
    assert load(changed).fingerprint != first


def test_an_image_smaller_than_the_grid_is_refused_with_its_size(centroid_file: Path) -> None:
    model = load(centroid_file)
    with pytest.raises(ValueError, match="the image is 4x6 pixels, smaller than the 8x8 grid"):
        model.preprocess(Image.new("L", (4, 6)))


@pytest.mark.parametrize(
    "keys, message",
    [
        ({}, "model.centroids is missing"),
        ({"centroids": "nowhere.json"}, "model.centroids = 'nowhere.json': no such file"),
        ({"centroids": "FILE", "temprature": 0.1}, "model.temprature: unknown setting"),
        ({"centroids": "FILE", "temperature": 0}, "model.temperature = 0: Input should be greater than 0"),
    ],
)
def test_bad_keys_are_refused_by_name_before_anything_loads(centroid_file: Path, keys, message) -> None:
    keys = {key: str(centroid_file) if value == "FILE" else value for key, value in keys.items()}
    with pytest.raises(SettingsError, match=message):
        model_factory().signals(ModelSettings(type="nearest_centroid", **keys))


def test_a_file_that_is_not_a_centroid_file_is_refused_naming_it(centroid_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(CentroidFileError, match=f"centroid file {other}: is not a centroid file"):
        load(other)
    data = json.loads(centroid_file.read_text())
    data["centroids"] = data["centroids"][:3]
    short = tmp_path / "short.json"
    short.write_text(json.dumps(data))
    with pytest.raises(CentroidFileError, match=r"centroids of shape \(3, 64\) for 10 classes"):
        load(short)


def test_the_build_script_says_what_is_wrong_with_its_folder(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    done = subprocess.run(
        [sys.executable, "-m", "monitord_example_model.build", str(tmp_path), str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert "notes.txt: not an image Pillow can read" in done.stderr
    assert not (tmp_path / "out.json").exists()


def test_monitord_plugins_lists_both_example_distributions() -> None:
    done = subprocess.run([sys.executable, "-m", "monitord", "plugins", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {(row["name"], row["kind"]): row for row in json.loads(done.stdout)}
    assert rows[("nearest_centroid", "model")]["distribution"] == "monitord-example-model"
    assert rows[("cusum", "detector")]["distribution"] == "monitord-example-detector"
