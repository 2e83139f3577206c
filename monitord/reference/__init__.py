"""The drift reference: how the model behaves on known-good images.

``monitord reference DIR`` (and ``monitord train``) run the model over validation images
and keep, with the model artifact, every signal's values, the principal directions of the
embedding, the confidence calibration and the accuracy. The daemon gives detectors this
reference; without one they take the first samples of the stream, and it says so.
"""

from monitord.reference.build import DEFAULT_COMPONENTS, ModelOutputs, build_reference, run_model
from monitord.reference.calibration import Calibration
from monitord.reference.images import FolderContents, ReferenceError, ReferenceImage, images_in_folder
from monitord.reference.projection import EmbeddingProjection
from monitord.reference.serving import ServedReference, reference_for
from monitord.reference.store import Reference, has_reference, read_reference, read_summary, write_reference

__all__ = [
    "DEFAULT_COMPONENTS",
    "Calibration",
    "EmbeddingProjection",
    "FolderContents",
    "ModelOutputs",
    "Reference",
    "ServedReference",
    "reference_for",
    "ReferenceError",
    "ReferenceImage",
    "build_reference",
    "has_reference",
    "images_in_folder",
    "read_reference",
    "read_summary",
    "run_model",
    "write_reference",
]
