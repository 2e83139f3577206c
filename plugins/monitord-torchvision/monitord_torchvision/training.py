"""Training the default ``digits_cnn`` model into an artifact folder.

The training tensors are made by encoding each digit as the PNG the daemon would receive,
decoding it and running it through ``preprocess_image`` — the serving path itself — and
the held-out accuracy is measured by loading the written artifact and calling
``predict``. Whatever the daemon will do to an image, training already did.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from monitord.reference import ReferenceImage, build_reference, write_reference
from monitord.reference.projection import SIGNAL_PREFIX as EMBEDDING_PREFIX
from tqdm.auto import tqdm

from . import __version__
from .architectures import DIGITS_CNN, DigitsCNN
from .artifact import (
    FORMAT_VERSION,
    ArtifactMetadata,
    check_replaceable,
    staged_folder,
    write_metadata,
    write_weights,
)
from .defaults import DEFAULT_EPOCHS, DEFAULT_SEED, MIN_ACCURACY
from .devices import resolve_device
from .digits import (
    DIGIT_CLASS_NAMES,
    HELD_OUT_FRACTION,
    SPLIT_SEED,
    DigitsSplit,
    decode_png,
    digit_png_bytes,
    digits_split,
)
from .errors import TrainingError
from .loading import load_artifact
from .preprocess import PreprocessSpec, preprocess_image

BATCH_SIZE = 32
LEARNING_RATE = 3e-3
DIGITS_INPUT_SIZE = (8, 8)


@dataclass(frozen=True)
class TrainingReport:
    """What a training run reached, and where it wrote the artifact."""

    output: Path
    architecture: str
    held_out_accuracy: float
    held_out_samples: int
    train_samples: int
    epochs: int
    seed: int
    device: str
    seconds: float
    final_loss: float


def digits_preprocess_spec() -> PreprocessSpec:
    """Input spec of the default model: 1 channel, 8×8, normalised by training-pixel stats.

    The statistics come from the fixed training split (rounded, so metadata stays
    readable); they are the same on every run.
    """
    pixels = digits_split().train_images.astype(np.float64) / 255.0
    return PreprocessSpec(
        input_size=DIGITS_INPUT_SIZE,
        channels=1,
        mean=(round(float(pixels.mean()), 4),),
        std=(round(float(pixels.std()), 4),),
    )


def png_inputs(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """(N, C, H, W) float32 inputs from digit arrays, via PNG bytes and ``preprocess``."""
    return np.stack([preprocess_image(decode_png(digit_png_bytes(i)), spec) for i in images])


def train_default_model(
    output: Path,
    *,
    seed: int = DEFAULT_SEED,
    epochs: int = DEFAULT_EPOCHS,
    device: str | torch.device = "auto",
    progress: bool = True,
    min_accuracy: float = MIN_ACCURACY,
) -> TrainingReport:
    """Train ``digits_cnn`` and write the artifact to ``output`` (atomically).

    Deterministic for a given seed on the CPU, whatever the core count (training runs
    on one thread; the global torch RNG and thread count are left as they were).
    Raises ``TrainingError`` — and leaves ``output`` untouched — when the held-out
    accuracy is below ``min_accuracy``; ``FileExistsError`` when ``output`` is something
    other than an artifact or an empty folder.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, not {epochs}")
    output = Path(output)
    check_replaceable(output)  # fail before spending the time to train
    started = time.perf_counter()
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    split = digits_split()
    spec = digits_preprocess_spec()
    inputs = torch.from_numpy(png_inputs(split.train_images, spec)).to(torch_device)
    labels = torch.from_numpy(split.train_labels).to(torch_device)

    with reproducible(seed, torch_device):
        network = DigitsCNN(num_classes=len(DIGIT_CLASS_NAMES), channels=1).to(torch_device)
        final_loss = _fit(network, inputs, labels, seed=seed, epochs=epochs, progress=progress)

    metadata = ArtifactMetadata(
        format_version=FORMAT_VERSION,
        architecture=DIGITS_CNN,
        class_names=list(DIGIT_CLASS_NAMES),
        input_size=spec.input_size,
        channels=1,
        mean=spec.mean,
        std=spec.std,
        activation_layer=None,
        seed=seed,
        trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
        epochs=epochs,
        train_samples=int(labels.shape[0]),
        dataset=(
            f"scikit-learn digits as 8-bit PNGs, stratified split, {HELD_OUT_FRACTION:.0%} "
            f"held out (split seed {SPLIT_SEED})"
        ),
        trained_with=versions_trained_with(),
    )
    with staged_folder(output) as staging:
        write_weights(staging, network.state_dict())
        write_metadata(staging, metadata)
        # Measure through the artifact just written: proves it loads and serves. The held-out
        # digits are the drift reference too (``<artifact>/reference/``).
        model = load_artifact(staging, device=torch_device)
        try:
            reference = build_reference(model, held_out_reference_images(split), progress=False,
                                        source="scikit-learn digits, held-out split")
        finally:
            model.close()
        accuracy = float(reference.summary["accuracy"])
        references = {name: list(map(float, values)) for name, values in reference.signals.items()
                      if not name.startswith(EMBEDDING_PREFIX)}
        report = TrainingReport(
            output=output,
            architecture=DIGITS_CNN,
            held_out_accuracy=accuracy,
            held_out_samples=int(split.held_out_labels.shape[0]),
            train_samples=int(labels.shape[0]),
            epochs=epochs,
            seed=seed,
            device=str(torch_device),
            seconds=time.perf_counter() - started,
            final_loss=final_loss,
        )
        if accuracy < min_accuracy:
            raise TrainingError(
                f"held-out accuracy {accuracy:.2%} is below the required {min_accuracy:.0%} "
                f"after {epochs} epochs (seed {seed}); nothing was written to {output}. "
                "Train for more epochs (--epochs) or try another --seed",
                report,
            )
        write_metadata(
            staging,
            metadata.model_copy(
                update={
                    "held_out_accuracy": accuracy,
                    "held_out_samples": report.held_out_samples,
                    "reference_signals": references,
                }
            ),
        )
        write_reference(staging, reference)
    return report


def _fit(
    network: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    epochs: int,
    progress: bool,
) -> float:
    """Adam with a one-cycle schedule: reaches ~98% on digits in a few CPU seconds."""
    order_generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    steps_per_epoch = -(-inputs.shape[0] // BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    network.train()
    epoch_loss = float("nan")
    bar = tqdm(range(epochs), desc=f"training {DIGITS_CNN}", unit="epoch", disable=not progress)
    for _ in bar:
        order = torch.randperm(inputs.shape[0], generator=order_generator).to(inputs.device)
        total = 0.0
        for batch in order.split(BATCH_SIZE):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(network(inputs[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * batch.shape[0]
        epoch_loss = total / inputs.shape[0]
        bar.set_postfix(loss=f"{epoch_loss:.4f}")
    bar.close()
    network.eval()
    return epoch_loss


def held_out_reference_images(split: DigitsSplit) -> list[ReferenceImage]:
    """The held-out digits as the PNG files the daemon would receive, labelled."""
    return [
        ReferenceImage(digit_png_bytes(image), DIGIT_CLASS_NAMES[int(label)], name=f"held-out digit {index}")
        for index, (image, label) in enumerate(zip(split.held_out_images, split.held_out_labels))
    ]


def versions_trained_with() -> dict[str, str]:
    """The ``trained_with`` entry of ``metadata.json``: what produced the weights."""
    return {
        "monitord_torchvision": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


@contextmanager
def reproducible(seed: int, device: torch.device, *, threads: int | None = 1) -> Iterator[None]:
    """Seeded training that leaves the caller's torch state as it was.

    One CPU thread by default, because results then do not depend on the machine's core
    count (reductions split differently over threads round differently), and because
    torch's spinning worker threads slow training several-fold when the cores are
    shared — with the daemon's decode threads, say. The digits network is too small to
    gain much from a second thread anyway; ``threads=None`` keeps torch's own count, for
    networks that need every core (reproducible then on the same machine).
    """
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    deterministic, benchmark = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    previous_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        if threads is not None:
            torch.set_num_threads(threads)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        try:
            yield
        finally:
            torch.set_num_threads(previous_threads)
            torch.backends.cudnn.deterministic = deterministic
            torch.backends.cudnn.benchmark = benchmark
