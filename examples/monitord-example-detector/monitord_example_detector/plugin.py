"""The hook implementation monitord discovers through this distribution's entry point.

Hooks only register factories. The daemon calls the factory once at start-up with
``reference=None`` to check the parameters (before the model loads), then once per
detector with the model's saved reference, or None when the detector must take its
reference from the stream.
"""

from __future__ import annotations

import numpy as np
from monitord.hookspecs import Register, hookimpl
from monitord.settings import DetectorSpec

from .cusum import Cusum
from .parameters import CusumParameters


def build_cusum(spec: DetectorSpec, reference: np.ndarray | None) -> Cusum:
    """A ``cusum`` detector from its ``[[detectors]]`` entry; ``ValueError`` names what is wrong."""
    where = f"detector {spec.label!r} (type {spec.type})"
    if len(spec.signals) != 1:
        raise ValueError(f"{where} watches one signal, got {len(spec.signals)} ({', '.join(spec.signals)})")
    try:
        parameters = CusumParameters.parse(spec.params())
        return Cusum(**parameters.model_dump(), reference=reference)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


@hookimpl
def register_detectors(register: Register) -> None:
    register(Cusum.type_name, build_cusum)
