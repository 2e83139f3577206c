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
    positions: list[int]
    class_index: list[np.ndarray]
    signals: dict[str, list[np.ndarray]]
    embeddings: list[np.ndarray]
    labels: list[int | None]
    skipped: list[tuple[str, str]]


@dataclass(frozen=True)
class ModelOutputs:
    """What the model made of each image it could use, one row per image, in the order given."""

    #: Each row's position in the images given (skipped images have no row).
    positions: np.ndarray
    #: The predicted class index of each row.
    predicted: np.ndarray
    #: Signal name → one value per row, as the model computed them.
    signals: dict[str, np.ndarray]
    #: The model's embedding of each row (rows, dimensions), when it gives one.
    embedding: np.ndarray | None
    #: Each row's label as a class index, None for an unlabelled image.
    labels: list[int | None]
    #: ``(image, reason)`` for every image that could not be used.
    skipped: list[tuple[str, str]]
    seconds: float


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
    outputs = run_model(model, images, batch_size=batch_size, progress=progress, max_pixels=max_pixels,
                        decode_threads=decode_threads, on_batch=on_batch)
    return _reference(model, outputs, components, source)


def run_model(
    model: Model,
    images: Sequence[ReferenceImage],
    *,
    batch_size: int = 64,
    progress: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode_threads: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ModelOutputs:
    """Run ``model`` over ``images`` through the serving path; rows keep the images' order.

    Labels, when the images have them, must be class names of ``model``. Raises
    ``ReferenceError`` when no image could be used.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    class_index = {name: index for index, name in enumerate(model.class_names)}
    unknown = sorted({image.label for image in images if image.label is not None and image.label not in class_index})
    if unknown:
        raise ReferenceError(f"label(s) {', '.join(unknown[:5])} are not classes of model {model.name} "
                             f"({', '.join(list(model.class_names)[:10])}); name class folders exactly as the classes")
    started = time.perf_counter()
    collected = _Collected([], [], {}, [], [], [])
    bar = _progress_bar(len(images), progress)
    threads = decode_threads or max(1, min(4, (os.cpu_count() or 2)))
    # One task per slice of a batch, not per image: for small images the hand-over between
    # threads costs as much as decoding.
    step = max(1, -(-batch_size // threads))
    with ThreadPoolExecutor(threads, thread_name_prefix="reference-decode") as pool:
        batches: deque[list[Future[list[tuple[int, Any]]]]] = deque()
        starts = iter(range(0, len(images), batch_size))

        def top_up() -> None:
            while len(batches) < 2:  # the next batch decodes while the model runs on this one
                start = next(starts, None)
                if start is None:
                    return
                batches.append([pool.submit(_prepare_all, model, images, first,
                                            min(first + step, start + batch_size, len(images)), max_pixels)
                                for first in range(start, min(start + batch_size, len(images)), step)])

        top_up()
        while batches:
            prepared = [row for future in batches.popleft() for row in future.result()]
            top_up()
            batch = []
            for position, outcome in prepared:
                if isinstance(outcome, ValueError):
                    collected.skipped.append((images[position].display, str(outcome)))
                else:
                    batch.append((position, images[position], outcome))
            if batch:
                _classify(model, batch, class_index, collected)
            bar.update(len(prepared))
            if on_batch is not None:
                on_batch(len(prepared))
    bar.close()
    return _outputs(collected, time.perf_counter() - started)


def _prepare_all(model: Model, images: Sequence[ReferenceImage], first: int, end: int,
                 max_pixels: int) -> list[tuple[int, Any]]:
    """Each image's position and model input, or the ``ValueError`` that says why it cannot be used."""
    prepared: list[tuple[int, Any]] = []
    for position in range(first, end):
        try:
            prepared.append((position, _prepare(model, images[position], max_pixels)))
        except ValueError as error:
            prepared.append((position, error))
    return prepared


def _prepare(model: Model, image: ReferenceImage, max_pixels: int) -> Any:
    data = read_payload(image.source)
    if isinstance(model, EncodedInputModel):
        encoded = model.prepare_encoded(data, max_pixels)
        if encoded is not None:
            return encoded
    return model.preprocess(decode_image(data, max_pixels))


def _classify(model: Model, batch: list[tuple[int, ReferenceImage, Any]], class_index: dict[str, int],
              collected: _Collected) -> None:
    inputs = [prepared for _, _, prepared in batch]
    result: BatchResult = (model.predict_inputs(inputs) if isinstance(model, EncodedInputModel)
                           else model.predict(np.stack(inputs)))
    kept = [(position, image) for row, (position, image, _) in enumerate(batch) if row not in result.rejected]
    for row, reason in sorted(result.rejected.items()):
        collected.skipped.append((batch[row][1].display, reason))
    if not kept:
        return
    collected.class_index.append(np.asarray(result.class_index, dtype=np.int64))
    for name, values in result.signals.items():
        collected.signals.setdefault(name, []).append(np.asarray(values, dtype=np.float64))
    if result.embedding is not None:
        collected.embeddings.append(np.asarray(result.embedding, dtype=np.float32))
    collected.positions.extend(position for position, _ in kept)
    collected.labels.extend(class_index[image.label] if image.label is not None else None for _, image in kept)


def _outputs(collected: _Collected, seconds: float) -> ModelOutputs:
    if not collected.class_index:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in collected.skipped[:3])
        raise ReferenceError(f"none of the {len(collected.skipped)} image(s) could be used ({reasons})")
    embedding = None
    if collected.embeddings and len(collected.embeddings) == len(collected.class_index):
        embedding = np.concatenate(collected.embeddings)
    return ModelOutputs(np.asarray(collected.positions, dtype=np.int64), np.concatenate(collected.class_index),
                        {name: np.concatenate(parts) for name, parts in collected.signals.items()}, embedding,
                        list(collected.labels), list(collected.skipped), seconds)


def _reference(model: Model, outputs: ModelOutputs, components: int, source: str | None) -> Reference:
    predicted = outputs.predicted
    signals = dict(outputs.signals)
    seconds = outputs.seconds
    projection = None
    if outputs.embedding is not None:
        projection = EmbeddingProjection.fit(outputs.embedding, components)
        if projection is not None:
            signals.update(projection.project(outputs.embedding))
    # Rows in a seeded random order: images come sorted by class folder, and a detector
    # that keeps the first n rows of a long reference (monitord-drift's keep
    # ``reference_size``) must get a sample of every class, not the first classes only.
    order = np.random.default_rng(ROW_ORDER_SEED).permutation(len(predicted))
    signals = {name: values[order] for name, values in signals.items()}
    predicted = predicted[order]
    labels = [outputs.labels[index] for index in order]
    names = list(model.class_names)
    labelled = all(label is not None for label in labels)
    summary: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "labelled": labelled,
        "skipped": len(outputs.skipped),
        "skipped_examples": [{"image": name, "reason": reason} for name, reason in outputs.skipped[:NAMED_SKIPS]],
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
