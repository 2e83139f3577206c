"""What the core expects of a model plugin.

The core never imports a deep-learning framework. It decodes images, asks the model to
turn each one into an array (in decode threads), stacks arrays into micro-batches and asks
the model to predict (in one dedicated thread per model). Results are columnar so that
signals flow into metrics and detectors as whole arrays, one batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class BatchResult:
    """The model's answer for one micro-batch of N images.

    ``signals`` maps a signal name (``confidence``, ``entropy``, ``margin``,
    ``predicted_class``, ``activation_mean``, ``activation_std``, ...) to an array of
    shape (N,). Detectors watch signals by these names.

    ``embedding`` (optional) holds one feature vector per classified row, (N, D): the
    layer the model plugin watches (pooled backbone features, or the model's output). The
    core never sends it to the monitor; it projects it onto the principal directions that
    ``monitord reference`` found, into the signals ``embedding_1`` … ``embedding_k``.

    ``rejected`` names the rows of the batch the model found unusable only while
    classifying (a JPEG that passed ``prepare_encoded`` but no decoder could read), each
    with a reason a person can act on; the arrays then hold the other rows, in order.
    One bad image costs its own answer, not the batch's.
    """

    class_index: np.ndarray
    confidence: np.ndarray
    signals: Mapping[str, np.ndarray] = field(default_factory=dict)
    rejected: Mapping[int, str] = field(default_factory=dict)
    embedding: np.ndarray | None = None

    def __len__(self) -> int:
        """Rows classified (the batch's size less the rejected rows)."""
        return int(self.class_index.shape[0])


@runtime_checkable
class Model(Protocol):
    """A loaded classifier, as registered through ``register_models``.

    Optional attribute, read with ``getattr(model, "fingerprint", None)``: ``fingerprint``
    (str), a digest that changes when the weights, the preprocessing or the layer the
    embedding comes from change, so a saved reference built for another model is noticed.
    """

    #: Short architecture name, used as a metric/alert label (e.g. ``digits_cnn``).
    name: str
    #: Class names, indexed by class index.
    class_names: Sequence[str]
    #: Where inference runs (``cpu``, ``cuda:0``), for logs.
    device: str
    #: Reference values of each signal, measured on held-out data when the model was
    #: trained; detectors use them as their reference distribution. May be empty.
    reference_signals: Mapping[str, Sequence[float]]

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """Turn a decoded image into one input array (C, H, W), float32.

        Called concurrently from several decode threads: must be thread-safe and must
        raise ``ValueError`` with a readable reason for an image it cannot use.
        """
        ...

    def predict(self, batch: np.ndarray) -> BatchResult:
        """Classify a stacked batch (N, C, H, W). Called from one thread only."""
        ...

    def close(self) -> None:
        """Release the model's resources."""
        ...


@runtime_checkable
class EncodedInputModel(Protocol):
    """Optional: a model that takes some images still encoded, e.g. to decode JPEGs on its
    GPU (many at once) instead of with Pillow on the CPU, where decoding would set the pace.

    The pipeline then calls ``prepare_encoded`` in the decode threads for every image;
    for the images it returns None for, it decodes and calls ``preprocess`` as usual.
    Batches hold a mix of both and go to ``predict_inputs`` in arrival order.
    """

    def prepare_encoded(self, data: bytes, max_pixels: int) -> Any | None:
        """An input for ``predict_inputs`` made from the encoded bytes, or None.

        Must refuse what the core would refuse: raise ``ValueError`` with a reason for
        data that is not a usable image or has more than ``max_pixels`` pixels (checked
        from the header), and apply EXIF orientation like the core's decoder.
        """
        ...

    def predict_inputs(self, inputs: list[Any]) -> BatchResult:
        """Classify a batch of ``preprocess`` arrays and ``prepare_encoded`` inputs, in order."""
        ...


def declared_signals(factory: Any, settings: Any) -> frozenset[str] | None:
    """The signals a model factory says its model will produce, before it is loaded.

    A model plugin may give its factory a ``signals(settings: ModelSettings)`` method
    (see ``register_models``): it checks the plugin's own keys of ``[model]`` (raising
    ``monitord.settings.SettingsError`` naming the bad one) and returns the signal names,
    without loading anything. None when the factory does not say.
    """
    describe = getattr(factory, "signals", None)
    if not callable(describe):
        return None
    return frozenset(describe(settings))
