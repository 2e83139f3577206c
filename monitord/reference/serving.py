"""Which reference the daemon's detectors get, and the embedding signals it adds.

In order: the reference ``monitord reference`` (or ``monitord train``) wrote into the
model artifact; else the reference values the model itself carries (older artifacts kept
them in their metadata); else none, and detectors take the first samples of the stream,
which the daemon says at start, in ``/readyz`` and in ``/v1/detectors``. A reference
built for other classes or another model (its fingerprint) is refused at start: drift
verdicts against it would be meaningless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from monitord.model import BatchResult, Model
from monitord.reference.images import ReferenceError
from monitord.reference.projection import EmbeddingProjection
from monitord.reference.store import read_reference, reference_folder

log = logging.getLogger("monitord.reference")

#: ``source`` values: from ``<artifact>/reference/``, from the model itself, or none.
ARTIFACT, MODEL, STREAM = "artifact", "model", "stream"

_REBUILD = "build it again with `monitord reference DIR` (validation images, one folder per class)"


@dataclass(frozen=True)
class ServedReference:
    """The reference signals detectors get, where they came from, and the projection."""

    signals: dict[str, list[float]]
    source: str
    projection: EmbeddingProjection | None = None
    #: What ``/readyz`` and ``/v1/detectors`` show of it (JSON-able).
    description: dict[str, Any] = field(default_factory=dict)

    def derive(self) -> "EmbeddingSignals | None":
        return EmbeddingSignals(self.projection) if self.projection is not None else None


def reference_for(model: Model, artifact: Path) -> ServedReference:
    """The reference to serve ``model`` with; ``ReferenceError`` when the artifact's does not fit it."""
    saved = read_reference(artifact)
    if saved is not None:
        where = reference_folder(artifact)
        if tuple(saved.class_names) != tuple(model.class_names):
            raise ReferenceError(
                f"the reference in {where} was built for classes {', '.join(saved.class_names[:10])}, but model "
                f"{model.name} has {', '.join(list(model.class_names)[:10])}; {_REBUILD}")
        fingerprint = getattr(model, "fingerprint", None)
        if saved.fingerprint and fingerprint and saved.fingerprint != fingerprint:
            raise ReferenceError(
                f"the reference in {where} was built for another version of model {model.name} (fingerprint "
                f"{saved.fingerprint[:12]}, the model served now is {fingerprint[:12]}: its weights or preprocessing "
                f"changed); {_REBUILD}")
        description = {"source": ARTIFACT, "path": str(where), "samples": saved.samples,
                       "created_at": saved.summary.get("created_at"), "images_from": saved.summary.get("source"),
                       "accuracy": saved.summary.get("accuracy")}
        return ServedReference(saved.signal_lists(), ARTIFACT, saved.projection, description)
    if model.reference_signals:
        signals = {name: [float(v) for v in values] for name, values in model.reference_signals.items()}
        samples = max((len(values) for values in signals.values()), default=0)
        return ServedReference(signals, MODEL, None, {"source": MODEL, "samples": samples})
    return ServedReference({}, STREAM, None, {
        "source": STREAM,
        "note": f"no reference for model {model.name}: each detector takes the first samples of the stream as "
                f"normal; build one with `monitord reference DIR` (it is written to {reference_folder(artifact)})"})


class EmbeddingSignals:
    """Adds the projected embedding (``embedding_1`` …) to each batch's signals, in the model thread."""

    def __init__(self, projection: EmbeddingProjection) -> None:
        self.projection = projection
        self._reported = False

    def __call__(self, result: BatchResult) -> BatchResult:
        if result.embedding is None or len(result) == 0:
            return result
        try:
            projected = self.projection.project(result.embedding)
        except ValueError as error:
            if not self._reported:
                self._reported = True
                log.error("the model's embedding does not fit the reference's projection (%s); the embedding "
                          "signals are left out; %s", error, _REBUILD)
            return result
        return replace(result, signals={**result.signals, **projected})
