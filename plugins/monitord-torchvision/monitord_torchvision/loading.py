"""The ``torchvision`` model factory: settings → a ready ``TorchvisionModel``.

Three ways to name a model: an artifact folder written by ``monitord train`` (the
default, ``<state_dir>/model``), ``model.architecture`` + ``model.weights`` +
``model.classes`` for any torchvision classifier trained elsewhere, or
``model.program`` + ``model.classes`` for a TorchScript or torch.export file
(``programs``). A fresh install has
neither, so by default the small digits model is trained into the artifact folder on
first start, which lets the daemon run end to end without downloading anything.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from monitord.settings import ModelSettings

from .acceleration import Acceleration
from .architectures import build_network
from .artifact import METADATA_FILE, is_artifact, read_metadata
from .devices import resolve_device
from .errors import ModelLoadError, TrainingError
from .fingerprint import file_digest
from .inference import DeviceDecodingModel, TorchvisionModel
from .options import TorchvisionOptions, parse_options
from .weights import load_weights, read_state_dict

logger = logging.getLogger("monitord.torchvision")

_ACTIVATION_SIGNALS = ("activation_mean", "activation_std")


def load_model(settings: ModelSettings, state_dir: Path) -> TorchvisionModel:
    """The factory registered as model type ``torchvision`` (slow: may train)."""
    options = parse_options(settings)
    device = resolve_device(settings.device)
    threads = options.torch_threads
    if threads is None and device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        threads = default_cpu_threads()
    if threads is not None:
        # Process-wide: the daemon runs one model, and its CPU inference is what this sizes.
        torch.set_num_threads(threads)
    model = _load(settings, state_dir, options, device)
    logger.info(
        "serving %s on %s (%s%s%s)",
        model.name,
        model.device,
        model.acceleration.describe(),
        ", JPEGs decoded on the device" if isinstance(model, DeviceDecodingModel) else "",
        f", {torch.get_num_threads()} torch threads" if device.type == "cpu" else "",
    )
    return model


def default_cpu_threads() -> int:
    """Threads for CPU inference when ``model.torch_threads`` is not set: half the usable cores.

    torch's own default takes every core, but the daemon's event loop and decode threads
    need cores too: on a 2-core machine two intra-op threads fought them, and a batch of
    8 digits took 37-52 ms instead of under 1 ms (one thread), the daemon ~40 % slower
    end to end (benchmarks/RESULTS.md, "Throughput and latency").
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, usable // 2)


def acceleration_for(options: TorchvisionOptions, device: torch.device) -> Acceleration:
    """``model.channels_last`` and ``model.autocast`` resolved for ``device``."""
    return Acceleration.for_device(
        device, channels_last=options.channels_last, autocast=options.autocast
    )


def _load(
    settings: ModelSettings, state_dir: Path, options: TorchvisionOptions, device: torch.device
) -> TorchvisionModel:
    if options.architecture is not None:
        return load_from_options(options, device=device)
    if options.program is not None:
        from .programs import load_from_program

        return load_from_program(options, device=device)
    artifact = settings.artifact if settings.artifact is not None else Path(state_dir) / "model"
    if is_artifact(artifact):
        return _load_artifact_with(artifact, device, options)
    if artifact.exists() and not (artifact.is_dir() and not any(artifact.iterdir())):
        raise ModelLoadError(
            f"model.artifact = '{artifact}': exists but is not a model artifact (no "
            f"{METADATA_FILE}); point model.artifact at a folder written by `monitord train`, "
            "or at a path that does not exist yet to have the default model trained there"
        )
    if not options.train_if_missing:
        raise ModelLoadError(
            f"no trained model at '{artifact}' (model.artifact) and model.architecture is not "
            f"set; run `monitord train --output {artifact}` (or `monitord train --config "
            "FILE`) first, set model.train_if_missing = true to train the default digits "
            "model on start-up, or set model.architecture, model.weights and model.classes"
        )
    with _training_lock(artifact):
        if is_artifact(artifact):  # another process sharing the artifact trained it meanwhile
            return _load_artifact_with(artifact, device, options)
        return _train_then_load(artifact, device, options)


@contextmanager
def _training_lock(artifact: Path) -> Iterator[None]:
    """One training at a time per artifact: several processes started at once on a fresh
    host (``pipeline.workers``) train it once, the others wait and load it."""
    artifact.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(artifact.parent / f".{artifact.name}-training.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _train_then_load(
    artifact: Path, device: torch.device, options: TorchvisionOptions
) -> TorchvisionModel:
    from .training import train_default_model

    logger.info(
        "no model artifact at %s: training the default digits model there on %s "
        "(model.train_if_missing = true; takes seconds)",
        artifact,
        device,
    )
    try:
        report = train_default_model(artifact, device=device, progress=False)
    except TrainingError as error:
        raise ModelLoadError(
            f"training the default model into '{artifact}' failed: {error}; run `monitord "
            "train` by hand to see the progress, or provide a trained artifact"
        ) from None
    logger.info(
        "trained %s in %.1f s: held-out accuracy %.2f%%; artifact written to %s",
        report.architecture,
        report.seconds,
        100 * report.held_out_accuracy,
        artifact,
    )
    return _load_artifact_with(artifact, device, options)


def _load_artifact_with(artifact: Path, device: torch.device, options: TorchvisionOptions) -> TorchvisionModel:
    """``load_artifact`` with the plugin keys that apply to a trained artifact."""
    return load_artifact(
        artifact,
        device=device,
        activation_layer=options.activation_layer,
        acceleration=acceleration_for(options, device),
        decode_on_device=options.decode_on_device,
    )


def load_artifact(
    folder: Path,
    *,
    device: str | torch.device = "auto",
    activation_layer: str | None = None,
    acceleration: Acceleration | None = None,
    decode_on_device: bool = False,
) -> TorchvisionModel:
    """Serve an artifact folder. ``activation_layer`` overrides the one it was saved with.

    ``acceleration`` (default: the plain float32 path) and ``decode_on_device`` are
    ``model.channels_last``/``model.autocast`` and ``model.decode_on_device``.

    The reference values of the activation signals only describe the layer they were
    measured on, so an override drops them rather than hand detectors a wrong reference.
    """
    folder = Path(folder)
    metadata = read_metadata(folder)
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    where = f"{folder / METADATA_FILE}"
    num_classes = len(metadata.class_names)
    network = build_network(
        metadata.architecture, num_classes, metadata.channels, key=f"architecture in {where}"
    )
    weights_path = folder / metadata.weights_file
    state = read_state_dict(weights_path, key=f"weights of artifact {folder}")
    load_weights(
        network,
        state,
        source=str(weights_path),
        architecture=metadata.architecture,
        num_classes=num_classes,
        classes_key=f"class_names in {where}",
    )
    references = dict(metadata.reference_signals)
    layer = metadata.activation_layer
    if activation_layer is not None and activation_layer != metadata.activation_layer:
        layer = activation_layer
        if any(name in references for name in _ACTIVATION_SIGNALS):
            logger.info(
                "model.activation_layer = %r differs from the layer the artifact's reference "
                "signals were measured on (%s); dropping the reference for %s",
                activation_layer,
                metadata.activation_layer or "the default",
                ", ".join(_ACTIVATION_SIGNALS),
            )
        for name in _ACTIVATION_SIGNALS:
            references.pop(name, None)
    model_class = DeviceDecodingModel if decode_on_device else TorchvisionModel
    return model_class(
        network,
        name=metadata.architecture,
        class_names=metadata.class_names,
        spec=metadata.preprocess_spec(),
        device=torch_device,
        activation_layer=layer,
        reference_signals=references,
        acceleration=acceleration,
        weights_digest=file_digest(weights_path),
    )


def load_from_options(
    options: TorchvisionOptions, *, device: str | torch.device = "auto"
) -> TorchvisionModel:
    """Serve a torchvision classifier described by settings keys (no reference signals).

    Every plugin key applies, ``model.channels_last``, ``model.autocast`` and
    ``model.decode_on_device`` included; the preprocessing is
    ``TorchvisionOptions.preprocess_spec`` (``model.transforms`` or the explicit keys).
    """
    if options.architecture is None or options.weights is None:
        raise ModelLoadError("model.architecture and model.weights are both needed")
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    class_names, classes_key = options.listed_classes()
    network = build_network(options.architecture, len(class_names), options.channels)
    state = read_state_dict(options.weights)
    load_weights(
        network,
        state,
        source=f"model.weights = '{options.weights}'",
        architecture=options.architecture,
        num_classes=len(class_names),
        classes_key=classes_key,
    )
    spec = options.preprocess_spec()
    model_class = DeviceDecodingModel if options.decode_on_device else TorchvisionModel
    return model_class(
        network,
        name=options.architecture,
        class_names=class_names,
        spec=spec,
        device=torch_device,
        activation_layer=options.activation_layer,
        reference_signals={},
        acceleration=acceleration_for(options, torch_device),
        weights_digest=file_digest(options.weights),
    )
