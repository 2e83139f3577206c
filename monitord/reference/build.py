"""Running the model over reference images and keeping what detectors compare with.

The images go through the serving path itself (the core's decoder, the model's own
``preprocess`` or ``prepare_encoded``, its ``predict``), so the reference describes the
model exactly as the daemon will run it. Decoding runs in threads a little ahead of the
model, as in the daemon; a bad image is skipped and reported, never fatal.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Callable, Sequence

import numpy as np

from monitord.decode import decode_image, read_payload
from monitord.model import BatchResult, EncodedInputModel, Model
from monitord.reference.calibration import Calibration
from monitord.reference.images import ReferenceError, ReferenceImage
from monitord.reference.projection import EmbeddingProjection
from monitord.reference.store import Reference

#: Principal directions of the embedding kept as signals by default.
DEFAULT_COMPONENTS = 8
#: The daemon's default ``pipeline.max_image_pixels``.
DEFAULT_MAX_PIXELS = 40_000_000
#: Seeds the order in which the reference's rows are stored.
ROW_ORDER_SEED = 0
#: Skipped images named in the summary (all are counted).
NAMED_SKIPS = 20


@dataclass
class _Collected:
    class_index: list[np.ndarray]
    signals: dict[str, list[np.ndarray]]
    embeddings: list[np.ndarray]
    labels: list[int | None]
    skipped: list[tuple[str, str]]


def build_reference(
    model: Model,
    images: Sequence[ReferenceImage],
    *,
    batch_size: int = 64,
    progress: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    components: int = DEFAULT_COMPONENTS,
    decode_threads: int | None = None,
    source: str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Reference:
    """The model's signals, embedding projection, calibration and accuracy on ``images``.

    Labels, when the images have them, must be class names of ``model``. Raises
    ``ReferenceError`` when no image could be used. ``on_batch(n)`` is called after each
    batch with the images it held (for a caller's own progress display).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    class_index = {name: index for index, name in enumerate(model.class_names)}
    unknown = sorted({image.label for image in images if image.label is not None and image.label not in class_index})
    if unknown:
        raise ReferenceError(f"label(s) {', '.join(unknown[:5])} are not classes of model {model.name} "
                             f"({', '.join(list(model.class_names)[:10])}); name class folders exactly as the classes")
    started = time.perf_counter()
    collected = _Collected([], {}, [], [], [])
    bar = _progress_bar(len(images), progress)
    threads = decode_threads or max(1, min(4, (os.cpu_count() or 2)))
    # One task per slice of a batch, not per image: for small images the hand-over between
    # threads costs as much as decoding.
    step = max(1, -(-batch_size // threads))
    with ThreadPoolExecutor(threads, thread_name_prefix="reference-decode") as pool:
        batches: deque[list[Future[list[tuple[ReferenceImage, Any]]]]] = deque()
        starts = iter(range(0, len(images), batch_size))

        def top_up() -> None:
            while len(batches) < 2:  # the next batch decodes while the model runs on this one
                start = next(starts, None)
                if start is None:
                    return
                batches.append([pool.submit(_prepare_all, model, images[first:min(first + step, start + batch_size)],
                                            max_pixels)
                                for first in range(start, min(start + batch_size, len(images)), step)])

        top_up()
        while batches:
            prepared = [row for future in batches.popleft() for row in future.result()]
            top_up()
            batch = []
            for image, outcome in prepared:
                if isinstance(outcome, ValueError):
                    collected.skipped.append((image.display, str(outcome)))
                else:
                    batch.append((image, outcome))
            if batch:
                _classify(model, batch, class_index, collected)
            bar.update(len(prepared))
            if on_batch is not None:
                on_batch(len(prepared))
    bar.close()
    return _reference(model, collected, time.perf_counter() - started, components, source)


def _prepare_all(model: Model, images: Sequence[ReferenceImage], max_pixels: int) -> list[tuple[ReferenceImage, Any]]:
    """Each image's model input, or the ``ValueError`` that says why it cannot be used."""
    prepared: list[tuple[ReferenceImage, Any]] = []
    for image in images:
        try:
            prepared.append((image, _prepare(model, image, max_pixels)))
        except ValueError as error:
            prepared.append((image, error))
    return prepared


def _prepare(model: Model, image: ReferenceImage, max_pixels: int) -> Any:
    data = read_payload(image.source)
    if isinstance(model, EncodedInputModel):
        encoded = model.prepare_encoded(data, max_pixels)
        if encoded is not None:
            return encoded
    return model.preprocess(decode_image(data, max_pixels))


def _classify(model: Model, batch: list[tuple[ReferenceImage, Any]], class_index: dict[str, int],
              collected: _Collected) -> None:
    inputs = [prepared for _, prepared in batch]
    result: BatchResult = (model.predict_inputs(inputs) if isinstance(model, EncodedInputModel)
                           else model.predict(np.stack(inputs)))
    kept = [image for row, (image, _) in enumerate(batch) if row not in result.rejected]
    for row, reason in sorted(result.rejected.items()):
        collected.skipped.append((batch[row][0].display, reason))
    if not kept:
        return
    collected.class_index.append(np.asarray(result.class_index, dtype=np.int64))
    for name, values in result.signals.items():
        collected.signals.setdefault(name, []).append(np.asarray(values, dtype=np.float64))
    if result.embedding is not None:
        collected.embeddings.append(np.asarray(result.embedding, dtype=np.float32))
    collected.labels.extend(class_index[image.label] if image.label is not None else None for image in kept)


def _reference(model: Model, collected: _Collected, seconds: float, components: int,
               source: str | None) -> Reference:
    if not collected.class_index:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in collected.skipped[:3])
        raise ReferenceError(f"none of the {len(collected.skipped)} image(s) could be used ({reasons})")
    predicted = np.concatenate(collected.class_index)
    signals = {name: np.concatenate(parts) for name, parts in collected.signals.items()}
    projection = None
    if collected.embeddings and len(collected.embeddings) == len(collected.class_index):
        embeddings = np.concatenate(collected.embeddings)
        projection = EmbeddingProjection.fit(embeddings, components)
        if projection is not None:
            signals.update(projection.project(embeddings))
    # Rows in a seeded random order: images come sorted by class folder, and a detector
    # that keeps the first n rows of a long reference (monitord-drift's keep
    # ``reference_size``) must get a sample of every class, not the first classes only.
    order = np.random.default_rng(ROW_ORDER_SEED).permutation(len(predicted))
    signals = {name: values[order] for name, values in signals.items()}
    predicted = predicted[order]
    labels = [collected.labels[index] for index in order]
    names = list(model.class_names)
    labelled = all(label is not None for label in labels)
    summary: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "labelled": labelled,
        "skipped": len(collected.skipped),
        "skipped_examples": [{"image": name, "reason": reason} for name, reason in collected.skipped[:NAMED_SKIPS]],
        "row_order": f"random (seed {ROW_ORDER_SEED}): the first n rows are a sample of all",
        "seconds": round(seconds, 3),
        "images_per_second": round(len(predicted) / seconds, 1) if seconds > 0 else None,
        "predicted_per_class": {names[i]: int(n) for i, n in enumerate(np.bincount(predicted, minlength=len(names)))
                                if n},
    }
    calibration = None
    if labelled:
        truth = np.asarray(labels, dtype=np.int64)
        correct = predicted == truth
        counts = np.bincount(truth, minlength=len(names))
        hits = np.bincount(truth, weights=correct, minlength=len(names))
        summary["accuracy"] = float(correct.mean())
        summary["per_class"] = {names[i]: {"images": int(counts[i]), "accuracy": float(hits[i] / counts[i])}
                                for i in range(len(names)) if counts[i]}
        if "confidence" in signals:
            calibration = Calibration.measure(signals["confidence"], correct)
    else:
        summary["accuracy"] = None
    return Reference(model=model.name, class_names=tuple(names), fingerprint=getattr(model, "fingerprint", None),
                     signals=signals, projection=projection, calibration=calibration, summary=summary)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, shown: bool) -> Any:
    if not shown:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="reference", unit="image")
