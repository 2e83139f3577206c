"""The status page's thumbnails come out of the real pipeline, under each image's predicted
class, both for images the core decodes and for JPEGs the model decodes itself."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from monitord.items import WorkItem
from monitord.metrics import Metrics
from monitord.pipeline import Pipeline
from monitord.settings import PipelineSettings
from monitord.status_page.thumbnails import Thumbnails
from PIL import Image

from monitord_torchvision.digits import digit_png_bytes, held_out_digits
from monitord_torchvision.loading import load_artifact

pytestmark = pytest.mark.filterwarnings("ignore:.*TorchCodec:DeprecationWarning")


async def published(batch) -> None:
    """The stream: every batch is safe at once."""


async def test_every_image_sampled_is_filed_under_its_predicted_class(artifact_dir: Path) -> None:
    model = load_artifact(artifact_dir, device="cpu", decode_on_device=True)
    images, _ = held_out_digits()
    png = digit_png_bytes(images[0])
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("L").resize((64, 64)).save(jpeg, format="JPEG", quality=95)
    assert model.prepare_encoded(jpeg.getvalue(), 40_000_000) is not None  # the model decodes it itself
    thumbnails = Thumbnails(per_class=4)
    pipeline = Pipeline(PipelineSettings(), Metrics(), thumbnails=thumbnails)
    await pipeline.start(model, published)
    try:
        outcomes = await pipeline.run([WorkItem("png", "test", png), WorkItem("jpeg", "test", jpeg.getvalue())])
    finally:
        await pipeline.close()
    shown = thumbnails.to_json()
    for outcome in outcomes:
        confidences = [entry["confidence"] for entry in shown[outcome.class_name]]
        assert outcome.confidence in confidences, (outcome, shown)
    assert sum(len(entries) for entries in shown.values()) == 2
