"""Fixtures of the report's tests: the digits model trained once, and its held-out digits
through it, clean and rotated 45°."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CORE_TESTS = HERE.parents[2] / "tests"
for folder in (HERE, CORE_TESTS / "testplugin", CORE_TESTS):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from digit_logs import DigitRows, digit_rows  # noqa: E402


@pytest.fixture(scope="session")
def digits_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default digits model with its reference, trained once for the session."""
    from monitord_torchvision.training import train_default_model

    output = tmp_path_factory.mktemp("artifact") / "model"
    train_default_model(output, seed=0, progress=False)
    return output


@pytest.fixture(scope="session")
def digits_model(digits_artifact: Path) -> Iterator[object]:
    from monitord_torchvision.loading import load_artifact

    model = load_artifact(digits_artifact, device="cpu")
    yield model
    model.close()


@pytest.fixture(scope="session")
def clean_rows(digits_model, digits_artifact: Path) -> DigitRows:
    return digit_rows(digits_model, digits_artifact)


@pytest.fixture(scope="session")
def rotated_rows(digits_model, digits_artifact: Path) -> DigitRows:
    return digit_rows(digits_model, digits_artifact, rotation=45.0)
