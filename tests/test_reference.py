"""The drift reference: finding the images, measuring them, storing it, choosing what to serve."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monitord.model import BatchResult
from monitord.reference import (
    Calibration,
    EmbeddingProjection,
    ReferenceError,
    ReferenceImage,
    build_reference,
    images_in_folder,
    read_reference,
    reference_for,
    write_reference,
)
from monitord.reference.serving import EmbeddingSignals


def png(level: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), color=level).save(buffer, format="PNG")
    return buffer.getvalue()


class ShadeModel:
    """Class ``dark``/``bright`` by mean level; the 16 pixels of a 4x4 thumbnail are its embedding."""

    name = "shade"
    class_names = ("dark", "bright")
    device = "cpu"
    reference_signals: dict = {}
    fingerprint = "shade-v1"

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return (np.asarray(image.convert("L").resize((4, 4)), dtype=np.float32) / 255.0)[None]

    def predict(self, batch: np.ndarray) -> BatchResult:
        flat = batch.reshape(len(batch), -1)
        level = flat.mean(axis=1).astype(np.float64)
        bright = level > 0.5
        confidence = np.where(bright, level, 1 - level)
        return BatchResult(bright.astype(np.int64), confidence, {"confidence": confidence, "level": level},
                           embedding=flat)

    def close(self) -> None:
        pass


def write_folder(root: Path, levels: dict[str, list[int]]) -> None:
    for name, values in levels.items():
        (root / name).mkdir(parents=True)
        for index, level in enumerate(values):
            (root / name / f"{index}.png").write_bytes(png(level))


# -- finding the images ------------------------------------------------------------------


def test_class_folders_are_labels_and_other_files_are_ignored(tmp_path: Path) -> None:
    write_folder(tmp_path, {"dark": [10, 20], "bright": [240]})
    (tmp_path / "dark" / "README.txt").write_text("notes")
    (tmp_path / "dark" / ".hidden.png").write_bytes(png(0))
    found = images_in_folder(tmp_path, ["dark", "bright"])
    assert found.labelled
    assert [(image.source.name, image.label) for image in found.images] == [
        ("0.png", "bright"), ("0.png", "dark"), ("1.png", "dark")]
    assert [path.name for path in found.ignored] == ["README.txt"]


def test_a_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    for index in range(3):
        (tmp_path / f"{index}.PNG").write_bytes(png(index))
    found = images_in_folder(tmp_path)
    assert not found.labelled and len(found.images) == 3
    assert all(image.label is None for image in found.images)


@pytest.mark.parametrize(
    "layout, expected",
    [
        ("missing", "does not exist"),
        ("empty", "holds no image files"),
        ("mixed", "both class folders"),
        ("unknown class", "name no class of the model"),
    ],
)
def test_layouts_that_cannot_be_a_reference_are_refused(tmp_path: Path, layout: str, expected: str) -> None:
    folder = tmp_path / "val"
    if layout != "missing":
        folder.mkdir()
    if layout == "mixed":
        write_folder(folder, {"dark": [0]})
        (folder / "stray.png").write_bytes(png(0))
    if layout == "unknown class":
        write_folder(folder, {"dark": [0], "grey": [128]})
    with pytest.raises(ReferenceError, match=expected):
        images_in_folder(folder, ["dark", "bright"])


# -- the projection and the calibration ---------------------------------------------------


def test_the_projection_keeps_the_directions_of_largest_variance() -> None:
    rng = np.random.default_rng(0)
    # Variance 100 along (1, 1, 0)/sqrt 2, 1 along z, 0.01 along (1, -1, 0)/sqrt 2.
    basis = np.array([[1, 1, 0], [0, 0, 1], [1, -1, 0]], dtype=np.float64)
    basis[[0, 2]] /= np.sqrt(2)
    data = rng.normal(size=(5000, 3)) * np.array([10.0, 1.0, 0.1]) @ basis + 5.0
    projection = EmbeddingProjection.fit(data, components=2)
    assert projection is not None and projection.names == ["embedding_1", "embedding_2"]
    np.testing.assert_allclose(np.abs(projection.components), np.abs(basis[:2]), atol=0.01)
    np.testing.assert_allclose(projection.explained_variance_ratio, [100 / 101.01, 1 / 101.01], rtol=0.1)
    coordinates = projection.project(data)
    assert abs(np.std(coordinates["embedding_1"]) - 10) < 0.5 and abs(np.mean(coordinates["embedding_2"])) < 0.1
    # Fitting again (on the same data, rows in another order) gives the same signs.
    again = EmbeddingProjection.fit(data[::-1], components=2)
    np.testing.assert_allclose(again.components, projection.components, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        projection.project(np.zeros((2, 4)))


def test_calibration_bins_confidence_and_measures_the_gap_to_accuracy() -> None:
    confidence = np.array([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    correct = np.array([1, 1, 1, 0, 1, 0])
    calibration = Calibration.measure(confidence, correct)
    assert calibration.count[9] == 4 and calibration.count[5] == 2 and sum(calibration.count) == 6
    assert calibration.accuracy[9] == pytest.approx(0.75) and calibration.accuracy[5] == pytest.approx(0.5)
    assert calibration.accuracy[0] is None
    assert calibration.ece == pytest.approx((4 * 0.2 + 2 * 0.05) / 6)


# -- building, storing, serving ------------------------------------------------------------


def test_a_reference_measures_accuracy_and_skips_bad_images(tmp_path: Path) -> None:
    images = [ReferenceImage(png(level), "bright" if level > 127 else "dark") for level in range(0, 256, 8)]
    images[3] = ReferenceImage(png(10), "bright")  # a mislabelled one: the accuracy sees it
    images.append(ReferenceImage(b"not an image", "dark", name="broken.png"))
    reference = build_reference(ShadeModel(), images, batch_size=5, components=3)
    assert reference.samples == 32
    assert reference.summary["skipped"] == 1
    assert reference.summary["skipped_examples"][0]["image"] == "broken.png"
    assert reference.summary["accuracy"] == pytest.approx(31 / 32)
    assert reference.summary["per_class"]["bright"]["images"] == 17
    assert reference.summary["per_class"]["bright"]["accuracy"] == pytest.approx(16 / 17)
    assert set(reference.signals) == {"confidence", "level", "embedding_1", "embedding_2", "embedding_3"}
    # Flat images vary along one direction only: the first component holds all the variance.
    assert reference.projection.explained_variance_ratio[0] > 0.99
    assert reference.calibration is not None and sum(reference.calibration.count) == 32
    assert reference.fingerprint == "shade-v1"


def test_labels_that_are_not_classes_are_refused_before_anything_runs() -> None:
    with pytest.raises(ReferenceError, match="grey"):
        build_reference(ShadeModel(), [ReferenceImage(png(0), "grey")])


def test_no_usable_image_is_an_error_that_names_one() -> None:
    with pytest.raises(ReferenceError, match="broken.png"):
        build_reference(ShadeModel(), [ReferenceImage(b"junk", None, name="broken.png")])


def test_a_written_reference_reads_back_whole(tmp_path: Path) -> None:
    images = [ReferenceImage(png(level)) for level in range(0, 256, 16)]
    built = build_reference(ShadeModel(), images, components=2)
    write_reference(tmp_path, built)
    write_reference(tmp_path, built)  # replacing leaves no staging folder behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference"]
    back = read_reference(tmp_path)
    assert back is not None and back.samples == 16 and back.summary["accuracy"] is None
    for name, values in built.signals.items():
        np.testing.assert_array_equal(back.signals[name], values)
    np.testing.assert_array_equal(back.projection.components, built.projection.components)
    summary = json.loads((tmp_path / "reference" / "reference.json").read_text())
    assert summary["samples"] == 16 and summary["embedding"]["signals"] == ["embedding_1", "embedding_2"]


def test_the_daemon_serves_the_artifacts_reference_and_its_projection(tmp_path: Path) -> None:
    model = ShadeModel()
    built = build_reference(model, [ReferenceImage(png(level)) for level in range(0, 256, 16)], components=2)
    write_reference(tmp_path, built)
    served = reference_for(model, tmp_path)
    assert served.source == "artifact" and served.description["samples"] == 16
    assert len(served.signals["embedding_1"]) == 16
    derive = served.derive()
    result = derive(model.predict(model.preprocess(Image.new("L", (8, 8), 200))[None]))
    expected = built.projection.project(model.predict(model.preprocess(Image.new("L", (8, 8), 200))[None]).embedding)
    assert result.signals["embedding_1"] == pytest.approx(expected["embedding_1"])


def test_a_reference_for_other_classes_or_another_model_is_refused(tmp_path: Path) -> None:
    model = ShadeModel()
    write_reference(tmp_path, build_reference(model, [ReferenceImage(png(0)), ReferenceImage(png(255))]))
    other = ShadeModel()
    other.fingerprint = "shade-v2"
    with pytest.raises(ReferenceError, match="another version of model shade"):
        reference_for(other, tmp_path)
    renamed = ShadeModel()
    renamed.class_names = ("night", "day")
    with pytest.raises(ReferenceError, match="built for classes dark, bright"):
        reference_for(renamed, tmp_path)


def test_without_a_reference_the_model_s_own_or_the_stream_is_named(tmp_path: Path) -> None:
    model = ShadeModel()
    assert reference_for(model, tmp_path).source == "stream"
    assert "monitord reference DIR" in reference_for(model, tmp_path).description["note"]
    model.reference_signals = {"confidence": [0.9, 0.8]}
    served = reference_for(model, tmp_path)
    assert served.source == "model" and served.signals == {"confidence": [0.9, 0.8]}


def test_an_embedding_of_another_width_leaves_the_signals_out_and_says_so(caplog) -> None:
    projection = EmbeddingProjection(np.zeros(3, np.float32), np.eye(3, dtype=np.float32)[:2], np.array([0.5, 0.5]))
    derive = EmbeddingSignals(projection)
    result = BatchResult(np.zeros(2, np.int64), np.ones(2), {"confidence": np.ones(2)}, embedding=np.ones((2, 5)))
    assert set(derive(result).signals) == {"confidence"}
    assert "does not fit the reference's projection" in caplog.text


def test_rows_are_stored_in_a_random_order_so_any_first_rows_sample_every_class() -> None:
    # Sorted by class as a folder is read: 50 dark images, then 50 bright ones.
    images = [ReferenceImage(png(20 + n % 7), "dark") for n in range(50)]
    images += [ReferenceImage(png(230 - n % 7), "bright") for n in range(50)]
    reference = build_reference(ShadeModel(), images, batch_size=16)
    first = reference.signals["level"][:20]  # what a detector keeping 20 reference samples takes
    assert (first < 0.5).any() and (first > 0.5).any()
    assert sorted(reference.signals["level"]) == sorted(build_reference(ShadeModel(), images).signals["level"])
    assert reference.summary["accuracy"] == 1.0


def test_the_calibration_pairs_each_image_s_confidence_with_its_own_label() -> None:
    model = ShadeModel()
    images = [ReferenceImage(png(level), "dark") for level in (10, 30, 200, 220)]  # two wrong, confidently
    images += [ReferenceImage(png(level), "bright") for level in (140, 150, 240, 250)]
    reference = build_reference(model, images, batch_size=3)
    arrays = np.stack([model.preprocess(Image.open(io.BytesIO(image.source))) for image in images])
    direct = model.predict(arrays)
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    expected = Calibration.measure(direct.confidence, direct.class_index == truth)
    assert reference.calibration == expected
