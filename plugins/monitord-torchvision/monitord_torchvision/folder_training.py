"""Training or fine-tuning an architecture on a folder of labelled images (``train --data``).

Images go through the core's decoder and the plugin's ``preprocess_image`` with the spec
the artifact records, so the model learns from exactly what the daemon will show it. The
artifact is measured and its drift reference built by loading what was just written, as
for the digits model: whatever is reported was produced by the serving path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monitord.decode import decode_image, read_payload
from monitord.reference import Reference, ReferenceImage, build_reference, write_reference
from monitord.settings import ModelSettings, SettingsError, describe_validation_error
from pydantic import ValidationError
from torch import nn
from tqdm.auto import tqdm

from .architectures import DIGITS_CNN, build_network
from .artifact import (
    FORMAT_VERSION,
    ArtifactMetadata,
    check_replaceable,
    staged_folder,
    write_metadata,
    write_weights,
)
from .defaults import FOLDER_EPOCHS, FOLDER_MIN_ACCURACY, FOLDER_PATIENCE
from .errors import ModelLoadError, TrainingError
from .image_folder import DatasetError, ImageFolderDataset, LabelledImage, discover
from .inference import TorchvisionModel
from .loading import load_artifact
from .options import TorchvisionOptions
from .preprocess import PreprocessSpec, preprocess_image
from .training import reproducible, versions_trained_with
from .weights import read_state_dict

BATCH_SIZE = 32
EVAL_BATCH_SIZE = 64
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-4
#: Preprocessed images are kept in memory when they take at most this; else each epoch
#: decodes them again through a DataLoader.
IN_MEMORY_BUDGET = 2 * 1024**3
#: How many skipped or reinitialised names a summary lists before "and N more".
NAMED_IN_SUMMARY = 5


def _silent(_: str) -> None:
    pass


@dataclass(frozen=True)
class SkippedImage:
    """An image file that could not be decoded or preprocessed, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class WeightsStart:
    """What fine-tuning took from ``model.weights``."""

    source: Path
    kept: tuple[str, ...]
    #: The network's tensors not in the weights, or of another shape there (a new head).
    reinitialised: tuple[str, ...]
    #: Tensors of the weights file the network has no use for.
    unused: tuple[str, ...]

    def describe(self) -> str:
        total = len(self.kept) + len(self.reinitialised)
        text = f"started from {self.source}: kept {len(self.kept)} of {total} tensors"
        if self.reinitialised:
            text += f"; reinitialised {len(self.reinitialised)}: {_some(self.reinitialised)}"
        if self.unused:
            text += f"; {len(self.unused)} of the file's tensors unused: {_some(self.unused)}"
        return text


@dataclass(frozen=True)
class ClassResult:
    """Held-out accuracy on one class."""

    name: str
    samples: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.samples if self.samples else None


@dataclass(frozen=True)
class FolderTrainingReport:
    """What a ``--data`` training run reached, and where it wrote the artifact."""

    output: Path
    architecture: str
    class_names: tuple[str, ...]
    dataset: str
    held_out_accuracy: float
    held_out_samples: int
    per_class: tuple[ClassResult, ...]
    train_samples: int
    #: Epochs run; the weights written are those of ``best_epoch``.
    epochs: int
    max_epochs: int
    best_epoch: int
    stopped_early: bool
    seed: int
    device: str
    seconds: float
    skipped: tuple[SkippedImage, ...]
    started_from: WeightsStart | None
    in_memory: bool


def parse_training_options(settings: ModelSettings | dict[str, Any]) -> TorchvisionOptions:
    """The plugin's ``[model]`` keys as training reads them, or ``SettingsError``.

    Serving needs ``model.weights`` and ``model.classes`` with ``model.architecture``;
    training needs neither (the weights only start it, the folders name the classes), so
    only the per-key rules apply here, and mean/std having one value per channel.
    """
    raw = settings.plugin_options() if isinstance(settings, ModelSettings) else dict(settings)
    try:
        options = TorchvisionOptions.model_validate(raw)
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error, prefix=("model",))) from None
    for key in ("mean", "std"):
        value = getattr(options, key)
        if value is not None and len(value) != options.channels and options.transforms is None:
            raise SettingsError(
                f"model.{key} = {list(value)!r}: needs one value per channel, and "
                f"model.channels = {options.channels}"
            )
    options.preprocess_spec()  # model.transforms against the other keys, before any work
    return options


def preprocess_spec_for(options: TorchvisionOptions) -> PreprocessSpec:
    """The preprocessing training applies and the artifact records, from the settings.

    The one place that builds it, so that a richer spec (resize and crop sizes, a named
    transform) changes training and the artifact together.
    """
    return options.preprocess_spec()


def train_on_folder(
    data: Path,
    output: Path,
    options: TorchvisionOptions,
    *,
    seed: int,
    device: torch.device,
    max_pixels: int,
    epochs: int = FOLDER_EPOCHS,
    patience: int = FOLDER_PATIENCE,
    progress: bool = True,
    min_accuracy: float = FOLDER_MIN_ACCURACY,
    memory_budget: int = IN_MEMORY_BUDGET,
    note: Callable[[str], None] = _silent,
) -> FolderTrainingReport:
    """Train ``options.architecture`` (default ``digits_cnn``) on the images under ``data``
    and write the artifact, with its drift reference, to ``output`` (atomically).

    ``note`` receives a line for each thing worth telling while it runs (the dataset,
    skipped images, what fine-tuning kept). Raises ``DatasetError`` for a folder that
    cannot be trained on, ``ModelLoadError`` for a bad architecture or weights file,
    ``TrainingError`` (nothing written) when the held-out accuracy is below
    ``min_accuracy``, ``FileExistsError`` when ``output`` is not an artifact or empty.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, not {epochs}")
    output = Path(output)
    check_replaceable(output)  # fail before spending the time to train
    started = time.perf_counter()
    architecture = options.architecture or DIGITS_CNN
    dataset = discover(data, seed=seed)
    spec = preprocess_spec_for(options)
    note(
        f"{dataset.describe()}: {len(dataset.train)} training and {len(dataset.val)} "
        "validation image files"
    )
    if dataset.ignored:
        note(f"ignored {len(dataset.ignored)} files that are not images: {_some(dataset.ignored)}")
    bytes_needed = (len(dataset.train) + len(dataset.val)) * int(np.prod(spec.shape)) * 4
    in_memory = bytes_needed <= memory_budget
    if not in_memory:
        note(
            f"preprocessed images would take {bytes_needed / 2**30:.1f} GiB: decoding them "
            "again each epoch instead of keeping them in memory"
        )
    train_set = ImageSet.read(dataset.train, spec, max_pixels, in_memory, progress, "training")
    val_set = ImageSet.read(dataset.val, spec, max_pixels, in_memory, progress, "validation")
    skipped = (*train_set.skipped, *val_set.skipped)
    if skipped:
        note(f"skipped {len(skipped)} unreadable images: " + _some(
            [f"{s.path} ({s.reason})" for s in skipped]
        ))
    _check_usable(dataset, train_set, val_set, note)

    with reproducible(seed, device, threads=None):
        network = build_network(architecture, len(dataset.class_names), spec.channels)
        started_from = None
        if options.weights is not None:
            started_from = start_from_weights(network, options.weights, architecture)
            note(started_from.describe())
        network.to(device)
        fit = _fit(
            network, train_set, val_set,
            device=device, seed=seed, max_epochs=epochs, patience=patience, progress=progress,
        )  # fmt: skip

    metadata = ArtifactMetadata(
        format_version=FORMAT_VERSION,
        architecture=architecture,
        class_names=list(dataset.class_names),
        input_size=spec.input_size,
        channels=spec.channels,
        mean=spec.mean,
        std=spec.std,
        resize_size=spec.resize_size,
        interpolation=spec.interpolation,
        activation_layer=options.activation_layer,
        seed=seed,
        trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
        epochs=fit.epochs,
        best_epoch=fit.best_epoch,
        stopped_early=fit.stopped_early,
        train_samples=len(train_set),
        dataset=dataset.describe(),
        skipped_images=len(skipped),
        started_from=str(started_from.source) if started_from else None,
        trained_with=versions_trained_with(),
    )
    with staged_folder(output) as staging:
        write_weights(staging, network.state_dict())
        write_metadata(staging, metadata)
        # Measure through the artifact just written, in one pass over the validation
        # files that also builds the drift reference: proves it loads and serves.
        model = load_artifact(staging, device=device)
        try:
            reference = _build_reference(model, dataset.class_names, val_set.items, progress,
                                         max_pixels, f"validation images of {data.resolve()}")
        finally:
            model.close()
        per_class = _per_class(dataset.class_names, reference.summary["per_class"])
        accuracy = float(reference.summary["accuracy"])
        report = FolderTrainingReport(
            output=output,
            architecture=architecture,
            class_names=dataset.class_names,
            dataset=dataset.describe(),
            held_out_accuracy=accuracy,
            held_out_samples=reference.samples,
            per_class=per_class,
            train_samples=len(train_set),
            epochs=fit.epochs,
            max_epochs=epochs,
            best_epoch=fit.best_epoch,
            stopped_early=fit.stopped_early,
            seed=seed,
            device=str(device),
            seconds=time.perf_counter() - started,
            skipped=skipped,
            started_from=started_from,
            in_memory=in_memory,
        )
        if accuracy < min_accuracy:
            raise TrainingError(
                f"held-out accuracy {accuracy:.2%} is below the required "
                f"{min_accuracy:.0%} after {fit.epochs} epochs (seed {seed}); nothing was "
                f"written to {output}. Train for more epochs (--epochs), fine-tune from "
                "weights (model.weights), or lower --min-accuracy",
                report,
            )
        write_reference(staging, reference)
        write_metadata(
            staging,
            metadata.model_copy(
                update={
                    "held_out_accuracy": accuracy,
                    "held_out_samples": reference.samples,
                    "held_out_per_class": {
                        result.name: {"accuracy": result.accuracy, "samples": result.samples}
                        for result in per_class
                    },
                }
            ),
        )
    return report


def _build_reference(
    model: TorchvisionModel,
    class_names: Sequence[str],
    items: Sequence[LabelledImage],
    progress: bool,
    max_pixels: int,
    source: str,
) -> Reference:
    """The drift reference from the validation images, through the core's reference API
    (the serving path itself); its accuracy is the held-out report's."""
    images = [ReferenceImage(source=item.path, label=class_names[item.class_index]) for item in items]
    return build_reference(model, images, progress=progress, max_pixels=max_pixels, source=source)


def start_from_weights(network: nn.Module, path: Path, architecture: str) -> WeightsStart:
    """Load every tensor of ``path`` whose name and shape fit ``network``; leave the rest.

    A classifier head trained for another class count keeps its fresh random weights, so
    a network trained elsewhere (ImageNet, another task) can be fine-tuned here.
    """
    state = read_state_dict(path)
    own = network.state_dict()
    kept = tuple(name for name, tensor in own.items()
                 if name in state and state[name].shape == tensor.shape)  # fmt: skip
    if not kept:
        raise ModelLoadError(
            f"model.weights = '{path}': none of its {len(state)} tensors fits {architecture!r} "
            f"(it holds {_some(list(state))}); check that model.architecture names the "
            "network these weights were trained for"
        )
    network.load_state_dict({name: state[name] for name in kept}, strict=False)
    return WeightsStart(
        source=path,
        kept=kept,
        reinitialised=tuple(name for name in own if name not in set(kept)),
        unused=tuple(name for name in state if name not in own),
    )


class ImageSet:
    """Labelled images, readable ones only, as model inputs: in memory, or decoded on demand."""

    def __init__(
        self,
        items: Sequence[LabelledImage],
        spec: PreprocessSpec,
        max_pixels: int,
        inputs: np.ndarray | None,
        skipped: Sequence[SkippedImage],
    ) -> None:
        self.items = tuple(items)
        self.spec = spec
        self.max_pixels = max_pixels
        self.inputs = inputs
        self.skipped = tuple(skipped)
        self.labels = np.array([item.class_index for item in self.items], dtype=np.int64)

    @classmethod
    def read(
        cls,
        items: Sequence[LabelledImage],
        spec: PreprocessSpec,
        max_pixels: int,
        in_memory: bool,
        progress: bool,
        what: str,
    ) -> ImageSet:
        """Decode every image once (in threads): skip the unreadable ones, and keep the
        inputs when ``in_memory``."""
        kept: list[LabelledImage] = []
        skipped: list[SkippedImage] = []
        # Filled in place: stacking a list at the end would need twice the memory.
        inputs = np.empty((len(items), *spec.shape), dtype=np.float32) if in_memory else None
        threads = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(threads) as pool:
            loaded = pool.map(lambda item: load_input(item.path, spec, max_pixels), items)
            bar = tqdm(loaded, total=len(items), desc=f"reading {what} images", unit="image",
                       disable=not progress)  # fmt: skip
            for item, (array, reason) in zip(items, bar):
                if array is None:
                    skipped.append(SkippedImage(item.path, reason))
                    continue
                if inputs is not None:
                    inputs[len(kept)] = array
                kept.append(item)
        if inputs is not None:
            inputs = inputs[: len(kept)]
        return cls(kept, spec, max_pixels, inputs, skipped)

    def __len__(self) -> int:
        return len(self.items)

    def batches(
        self, index_batches: Sequence[Sequence[int]], generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(inputs, labels)`` CPU tensors for each list of indices, in order."""
        labels = torch.from_numpy(self.labels)
        if self.inputs is not None:
            inputs = torch.from_numpy(self.inputs)
            for indices in index_batches:
                chosen = torch.as_tensor(indices, dtype=torch.long)
                yield inputs[chosen], labels[chosen]
            return
        loader = torch.utils.data.DataLoader(
            _DecodedImages(self),
            batch_sampler=[list(indices) for indices in index_batches],
            num_workers=min(4, max(0, (os.cpu_count() or 1) - 1)),
            generator=generator,  # else the loader draws its seed from the global RNG
        )
        yield from loader

    def in_order(self, batch_size: int) -> list[list[int]]:
        return [list(range(start, min(start + batch_size, len(self))))
                for start in range(0, len(self), batch_size)]  # fmt: skip


class _DecodedImages(torch.utils.data.Dataset):
    """An ``ImageSet`` too large for memory, decoded again on each access."""

    def __init__(self, images: ImageSet) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.images.items[index]
        array, reason = load_input(item.path, self.images.spec, self.images.max_pixels)
        if array is None:
            raise DatasetError(
                f"{item.path} was readable before training but is not now ({reason})"
            )
        return torch.from_numpy(array), int(item.class_index)


def load_input(path: Path, spec: PreprocessSpec, max_pixels: int) -> tuple[np.ndarray | None, str]:
    """``(input, "")`` through the daemon's decode and preprocess, or ``(None, reason)``."""
    try:
        return preprocess_image(decode_image(read_payload(path), max_pixels), spec), ""
    except ValueError as error:  # DecodeError included: the input's fault, not ours
        return None, str(error)


@dataclass(frozen=True)
class _FitOutcome:
    epochs: int
    best_epoch: int
    stopped_early: bool


def _fit(
    network: nn.Module,
    train_set: ImageSet,
    val_set: ImageSet,
    *,
    device: torch.device,
    seed: int,
    max_epochs: int,
    patience: int,
    progress: bool,
) -> _FitOutcome:
    """AdamW with a cosine schedule; stops when the validation loss has not improved for
    ``patience`` epochs and leaves ``network`` with the weights of its best epoch."""
    order_generator = torch.Generator().manual_seed(seed)
    loader_generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY
    )
    full, rest = divmod(len(train_set), BATCH_SIZE)
    steps_per_epoch = full + (rest > 1)  # as _shuffled_batches cuts them
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max_epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    best_loss, best_epoch, best_state = float("inf"), 0, None
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        index_batches = _shuffled_batches(len(train_set), order_generator)
        bar = tqdm(total=len(index_batches), desc=f"epoch {epoch}/{max_epochs}", unit="batch",
                   disable=not progress)  # fmt: skip
        network.train()
        total, seen = 0.0, 0
        for inputs, labels in train_set.batches(index_batches, loader_generator):
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(network(inputs), labels)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * labels.shape[0]
            seen += labels.shape[0]
            bar.update()
            bar.set_postfix(loss=f"{total / seen:.4f}")
        val_loss, val_accuracy = _validate(network, val_set, device, loader_generator, loss_fn)
        bar.set_postfix(loss=f"{total / max(seen, 1):.4f}", val_loss=f"{val_loss:.4f}",
                        val_acc=f"{val_accuracy:.2%}")  # fmt: skip
        bar.close()
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            best_state = {name: t.detach().clone() for name, t in network.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    assert best_state is not None
    network.load_state_dict(best_state)
    network.eval()
    return _FitOutcome(epochs=epoch, best_epoch=best_epoch, stopped_early=epoch < max_epochs)


def _shuffled_batches(count: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch's batches of indices; a last batch of one image is dropped (batch
    normalisation cannot train on a single image)."""
    order = torch.randperm(count, generator=generator)
    return [batch.tolist() for batch in order.split(BATCH_SIZE) if batch.shape[0] > 1]


@torch.no_grad()
def _validate(
    network: nn.Module,
    val_set: ImageSet,
    device: torch.device,
    generator: torch.Generator,
    loss_fn: nn.Module,
) -> tuple[float, float]:
    """Mean loss and accuracy on the validation images."""
    network.eval()
    total_loss, correct = 0.0, 0
    for inputs, labels in val_set.batches(val_set.in_order(EVAL_BATCH_SIZE), generator):
        inputs, labels = inputs.to(device), labels.to(device)
        logits = network(inputs)
        total_loss += float(loss_fn(logits, labels)) * labels.shape[0]
        correct += int((logits.argmax(dim=1) == labels).sum())
    return total_loss / len(val_set), correct / len(val_set)


def _per_class(class_names: Sequence[str], measured: dict[str, dict[str, Any]]) -> tuple[ClassResult, ...]:
    """Each class's held-out images and hits, from the reference's ``per_class``."""
    results = []
    for name in class_names:
        row = measured.get(name, {"images": 0, "accuracy": 0.0})
        results.append(ClassResult(name, samples=row["images"], correct=round(row["accuracy"] * row["images"])))
    return tuple(results)


def _check_usable(
    dataset: ImageFolderDataset,
    train_set: ImageSet,
    val_set: ImageSet,
    note: Callable[[str], None],
) -> None:
    """Refuse what cannot train or be measured once unreadable images are left out."""
    names = dataset.class_names
    untrained = [names[i] for i in range(len(names)) if not np.any(train_set.labels == i)]
    if untrained:
        raise DatasetError(
            f"{dataset.root}: no readable training images for class(es) "
            f"{', '.join(untrained)}; every class needs at least one (see the skipped "
            "images above)"
        )
    if len(train_set) < 2:
        raise DatasetError(f"{dataset.root}: training needs at least 2 readable images")
    if len(val_set) == 0:
        raise DatasetError(
            f"{dataset.root}: no readable validation images; the held-out accuracy, early "
            "stopping and the drift reference need some (put images in val/<class>/, or "
            "give each class at least two images to have one held out)"
        )
    unmeasured = [names[i] for i in range(len(names)) if not np.any(val_set.labels == i)]
    if unmeasured:
        note(
            f"no validation images for class(es) {', '.join(unmeasured)}: their accuracy "
            "cannot be measured and the reference lacks them"
        )


def _some(names: Sequence[object]) -> str:
    shown = ", ".join(str(name) for name in names[:NAMED_IN_SUMMARY])
    more = len(names) - NAMED_IN_SUMMARY
    return f"{shown} and {more} more" if more > 0 else shown
