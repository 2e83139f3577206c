"""The trained-model folder: ``model.safetensors`` + ``metadata.json``, written atomically.

Everything needed to serve the weights travels with them (architecture, class names,
preprocessing, reference signals), so the settings only have to name the folder and a
model can never be served with a preprocessing it was not trained with. The folder is
built beside its destination and renamed into place, so a crash mid-training never
leaves a half-written artifact where the daemon would load it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from monitord.state_files import sync_directory
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ModelLoadError
from .preprocess import Interpolation, PreprocessSpec

#: The version written when the preprocessing is the plain resize to ``input_size``
#: (bilinear), which every monitord-torchvision reads alike.
FORMAT_VERSION = 1
#: The version written when it uses ``resize_size`` or bicubic: readers of version 1 keep
#: unknown keys without applying them, and would feed the model other inputs than it was
#: trained on; they refuse version 2 and ask for an upgrade instead.
PREPROCESS_FORMAT_VERSION = 2
#: The newest version this reader understands.
NEWEST_FORMAT_VERSION = PREPROCESS_FORMAT_VERSION
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.safetensors"


class ArtifactMetadata(BaseModel):
    """The contents of ``metadata.json``. Unknown keys are kept, for newer writers."""

    model_config = ConfigDict(extra="allow")

    format_version: int = Field(ge=1)
    architecture: str
    class_names: list[str] = Field(min_length=1)
    input_size: tuple[int, int]
    channels: Literal[1, 3]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: Shorter side resized to this before the centre ``input_size`` crop (None: resized
    #: straight to ``input_size``); see ``PreprocessSpec``.
    resize_size: int | None = Field(None, gt=0)
    interpolation: Interpolation = "bilinear"
    activation_layer: str | None = None
    weights_file: str = WEIGHTS_FILE
    held_out_accuracy: float | None = None
    seed: int | None = None
    trained_at: str | None = None
    #: Signal name → values measured on held-out data, for detectors' references.
    reference_signals: dict[str, list[float]] = {}

    @model_validator(mode="after")
    def _version_the_preprocessing_needs(self) -> ArtifactMetadata:
        """``format_version`` raised to what the preprocessing needs, so that no writer
        can mark an artifact readable by monitord versions that would ignore part of it."""
        self.format_version = max(self.format_version, format_version_for(self.preprocess_spec()))
        return self

    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec(
            input_size=self.input_size,
            channels=self.channels,
            mean=self.mean,
            std=self.std,
            resize_size=self.resize_size,
            interpolation=self.interpolation,
        )


def format_version_for(spec: PreprocessSpec) -> int:
    """The lowest ``format_version`` whose readers apply ``spec`` in full."""
    if spec.resize_size is not None or spec.interpolation != "bilinear":
        return PREPROCESS_FORMAT_VERSION
    return FORMAT_VERSION


def is_artifact(folder: Path) -> bool:
    """Whether ``folder`` holds a model artifact (it has a ``metadata.json``)."""
    return (folder / METADATA_FILE).is_file()


def read_metadata(folder: Path) -> ArtifactMetadata:
    """The artifact's metadata, or ``ModelLoadError`` saying what is wrong with it."""
    path = folder / METADATA_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        metadata = ArtifactMetadata.model_validate(raw)
    except FileNotFoundError:
        raise ModelLoadError(
            f"{folder} is not a model artifact (no {METADATA_FILE}); point model.artifact at "
            "a folder written by `monitord train`"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(
            f"{path} cannot be read ({error}); rewrite the artifact with `monitord train`"
        ) from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, p['loc'])) or '(top level)'}: {p['msg']}" for p in error.errors()
        )
        raise ModelLoadError(
            f"{path} is not valid artifact metadata ({problems}); rewrite the artifact with "
            "`monitord train`"
        ) from None
    if metadata.format_version > NEWEST_FORMAT_VERSION:
        raise ModelLoadError(
            f"{path} has format_version {metadata.format_version}, newer than this "
            f"monitord-torchvision reads (up to {NEWEST_FORMAT_VERSION}); upgrade "
            "monitord-torchvision"
        )
    return metadata


def write_metadata(folder: Path, metadata: ArtifactMetadata) -> None:
    _write_durably(
        folder / METADATA_FILE,
        (json.dumps(metadata.model_dump(mode="json"), indent=2) + "\n").encode("utf-8"),
    )


def write_weights(folder: Path, state_dict: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in state_dict.items()}
    _write_durably(folder / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))


def check_replaceable(output: Path) -> None:
    """Refuse to overwrite anything but an artifact or an empty folder."""
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a folder; choose another output path")
    if output.is_dir() and any(output.iterdir()) and not is_artifact(output):
        raise FileExistsError(
            f"{output} exists, is not empty and is not a model artifact (no {METADATA_FILE}); "
            "choose another output folder, or empty it first"
        )


@contextmanager
def staged_folder(output: Path) -> Iterator[Path]:
    """A fresh folder beside ``output`` that replaces ``output`` if the block succeeds.

    The old artifact (if any) stays in place until the new one is complete; the swap is
    two renames on the same file system.
    """
    check_replaceable(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(output)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)
        _swap_in(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _remove_abandoned_staging(output: Path) -> None:
    """Staging folders a stopped or killed training left beside ``output`` (the daemon
    does not wait for a training it was told to stop during start-up)."""
    for leftover in output.parent.glob(f".{output.name}.*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def _swap_in(staging: Path, output: Path) -> None:
    if not output.exists():
        os.rename(staging, output)
    else:
        retired = output.with_name(f".{output.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(output, retired)
        try:
            os.rename(staging, output)
        except OSError:
            os.rename(retired, output)
            raise
        shutil.rmtree(retired, ignore_errors=True)
    sync_directory(output.parent)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
