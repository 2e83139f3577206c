"""Fixtures: labelled digit images laid out as a user would (``<class>/<n>.png``), the
centroid file made from them, and the core's test helpers (the daemon as a subprocess)
from the repository's tests/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
CORE_TESTS = HERE.parents[2] / "tests"
for folder in (HERE, CORE_TESTS):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from example_digits import TRAINING_IMAGES, digit_image, png_bytes  # noqa: E402


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images, data.target


@pytest.fixture(scope="session")
def labelled_folder(tmp_path_factory: pytest.TempPathFactory, digits) -> Path:
    """The training digits as ``<digit>/<n>.png``."""
    images, targets = digits
    folder = tmp_path_factory.mktemp("digits")
    for index in range(TRAINING_IMAGES):
        class_folder = folder / str(targets[index])
        class_folder.mkdir(exist_ok=True)
        (class_folder / f"{index}.png").write_bytes(png_bytes(digit_image(images[index])))
    return folder


@pytest.fixture(scope="session")
def centroid_file(tmp_path_factory: pytest.TempPathFactory, labelled_folder: Path) -> Path:
    """Made the way the README says, with the build script."""
    output = tmp_path_factory.mktemp("centroids") / "centroids.json"
    done = subprocess.run(
        [sys.executable, "-m", "monitord_example_model.build", str(labelled_folder), str(output)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return output
