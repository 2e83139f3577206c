"""A clean digit sent at another resolution stays clean (issue 15, item 16).

Users enlarge the 8x8 digits to look at them (a 32x32 PNG is a nearest upscale); the
model sees them shrunk back to 8x8. Fed through the serving path (PNG bytes, the core's
decoder, the model's preprocess) into the default detectors with the model's reference,
300 such digits must not move any detector off ok, as 300 of the 8x8 originals do not.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from monitord.decode import decode_image
from monitord.detectors import DetectorStage
from monitord.metrics import Metrics
from monitord.plugins import load_plugins
from monitord.settings import default_detectors
from PIL import Image

from monitord_torchvision.digits import held_out_digits
from monitord_torchvision.inference import TorchvisionModel

MAX_PIXELS = 40_000_000
IMAGES = 300


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def detector_levels(model: TorchvisionModel, files: list[bytes]) -> dict[str, int]:
    """The highest level (0 ok, 1 warning, 2 drift) each default detector reached."""
    plugins = load_plugins()
    stage = DetectorStage.build(
        default_detectors(), lambda kind: plugins.factory("detector", kind), model.reference_signals, Metrics()
    )
    highest = {watched.spec.label: 0 for watched in stage.detectors if watched.spec.signals != ["error"]}
    for start in range(0, len(files), 32):
        batch = np.stack([model.preprocess(decode_image(data, MAX_PIXELS)) for data in files[start : start + 32]])
        stage.update(model.predict(batch).signals)
        for watched in stage.detectors:
            if watched.spec.label in highest:
                level = {"ok": 0, "warning": 1, "drift": 2}[watched.detector.state.level]
                highest[watched.spec.label] = max(highest[watched.spec.label], level)
    return highest


def clean_stream(size: int | None) -> tuple[list[bytes], np.ndarray]:
    """300 held-out digits in a fixed shuffled order, as PNGs of ``size`` x ``size``."""
    images, labels = held_out_digits()
    order = np.random.default_rng(0).permutation(len(images))[:IMAGES]
    files = []
    for index in order:
        image = Image.fromarray(images[index])
        if size is not None:
            image = image.resize((size, size), Image.Resampling.NEAREST)
        files.append(png(image))
    return files, labels[order]


@pytest.mark.parametrize("size", [None, 16, 32])
def test_clean_digits_enlarged_by_whole_factors_raise_no_warning(digits_model: TorchvisionModel, size: int | None) -> None:
    files, labels = clean_stream(size)
    assert detector_levels(digits_model, files) == {
        "pht_confidence": 0,
        "iks_entropy": 0,
        "nm_ddm_activation_mean_activation_std": 0,
        "class_mix_predicted_class": 0,
    }
    inputs = np.stack([digits_model.preprocess(decode_image(data, MAX_PIXELS)) for data in files])
    assert float(np.mean(digits_model.predict(inputs).class_index == labels)) >= 0.97

