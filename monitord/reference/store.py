"""A reference on disk: ``<artifact>/reference/`` beside the model it was measured with.

``reference.json`` holds what a person reads (where the images came from, how many per
class, the accuracy, the calibration, the model it belongs to) and ``signals.npz`` the
arrays (each signal's values per image, the embedding projection), read with
``allow_pickle=False``. The folder is written beside its destination and renamed into
place, so a daemon never reads half a reference.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from monitord.reference.calibration import Calibration
from monitord.reference.images import ReferenceError
from monitord.reference.projection import EmbeddingProjection
from monitord.state_files import sync_directory

FOLDER_NAME = "reference"
SUMMARY_FILE = "reference.json"
ARRAYS_FILE = "signals.npz"
FORMAT_VERSION = 1
_PROJECTION_KEYS = ("projection.mean", "projection.components", "projection.explained_variance_ratio")


@dataclass(frozen=True)
class Reference:
    """A model's behaviour on known-good images, which detectors compare the stream with."""

    #: The model's name and classes when the reference was built.
    model: str
    class_names: tuple[str, ...]
    #: The model's ``fingerprint`` (weights and preprocessing), when it has one.
    fingerprint: str | None
    #: Signal name → one value per reference image (the projected embedding included).
    signals: Mapping[str, np.ndarray]
    projection: EmbeddingProjection | None = None
    calibration: Calibration | None = None
    #: What a person reads: images, per-class counts, accuracy, source, time (JSON-able).
    summary: Mapping[str, Any] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return len(next(iter(self.signals.values()))) if self.signals else 0

    def signal_lists(self) -> dict[str, list[float]]:
        return {name: np.asarray(values, dtype=np.float64).tolist() for name, values in self.signals.items()}


def reference_folder(artifact: Path) -> Path:
    return Path(artifact) / FOLDER_NAME


def has_reference(artifact: Path) -> bool:
    return (reference_folder(artifact) / SUMMARY_FILE).is_file()


def write_reference(artifact: Path, reference: Reference) -> Path:
    """Write ``reference`` into ``<artifact>/reference/``, replacing any earlier one; returns it."""
    target = reference_folder(artifact)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}.", suffix=".tmp", dir=target.parent))
    try:
        arrays = {f"signal.{name}": np.asarray(values, dtype=np.float64) for name, values in reference.signals.items()}
        if reference.projection is not None:
            arrays.update(zip(_PROJECTION_KEYS, (reference.projection.mean, reference.projection.components,
                                                 reference.projection.explained_variance_ratio)))
        with open(staging / ARRAYS_FILE, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        summary = {
            "format_version": FORMAT_VERSION,
            "model": reference.model,
            "class_names": list(reference.class_names),
            "fingerprint": reference.fingerprint,
            "samples": reference.samples,
            "signals": sorted(reference.signals),
            **dict(reference.summary),
            "calibration": reference.calibration.to_json() if reference.calibration is not None else None,
            "embedding": None if reference.projection is None else {
                "dimensions": reference.projection.dimensions,
                "signals": reference.projection.names,
                "explained_variance_ratio": [float(v) for v in reference.projection.explained_variance_ratio],
            },
        }
        with open(staging / SUMMARY_FILE, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(summary, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(staging, 0o755)
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _swap_in(staging: Path, target: Path) -> None:
    if target.exists():
        retired = target.with_name(f".{FOLDER_NAME}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, retired)
        os.rename(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, target)
    sync_directory(target.parent)


def read_summary(artifact: Path) -> dict[str, Any] | None:
    """``reference.json`` of the artifact's reference, or None when it has none."""
    path = reference_folder(artifact) / SUMMARY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReferenceError(f"{path} cannot be read ({error}); build the reference again with "
                             "`monitord reference DIR`") from None
    if not isinstance(data, dict):
        raise ReferenceError(f"{path} is not a reference summary; build it again with `monitord reference DIR`")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ReferenceError(f"{path} has format_version {version!r}; this monitord reads {FORMAT_VERSION} "
                             "(upgrade monitord, or build the reference again with `monitord reference DIR`)")
    return data


def read_reference(artifact: Path) -> Reference | None:
    """The artifact's reference, or None when it has none; ``ReferenceError`` if unreadable."""
    summary = read_summary(artifact)
    if summary is None:
        return None
    path = reference_folder(artifact) / ARRAYS_FILE
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise ReferenceError(f"{path} is missing; build the reference again with `monitord reference DIR`") from None
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ReferenceError(f"{path} cannot be read ({error}); build the reference again with "
                             "`monitord reference DIR`") from None
    try:
        signals = {name[len("signal."):]: arrays[name] for name in arrays if name.startswith("signal.")}
        lengths = {len(values) for values in signals.values()}
        if len(lengths) > 1 or any(values.ndim != 1 for values in signals.values()):
            raise ValueError("signals of different lengths")
        projection = None
        if all(key in arrays for key in _PROJECTION_KEYS):
            projection = EmbeddingProjection(*(arrays[key] for key in _PROJECTION_KEYS))
        calibration = Calibration.from_json(summary["calibration"]) if summary.get("calibration") else None
        known = {"format_version", "model", "class_names", "fingerprint", "samples", "signals", "calibration",
                 "embedding"}
        return Reference(
            model=str(summary["model"]),
            class_names=tuple(map(str, summary["class_names"])),
            fingerprint=summary.get("fingerprint"),
            signals=signals,
            projection=projection,
            calibration=calibration,
            summary={key: value for key, value in summary.items() if key not in known},
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ReferenceError(f"{reference_folder(artifact)} is not a usable reference ({error}); build it again "
                             "with `monitord reference DIR`") from None
