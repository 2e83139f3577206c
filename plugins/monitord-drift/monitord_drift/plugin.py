"""The hook implementation monitord discovers through the ``monitord`` entry point.

Detector classes are imported only when the daemon builds one: IKS compiles with numba,
and ``monitord plugins`` or ``monitord --help`` should not pay for that.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np
from monitord.hookspecs import Register, hookimpl
from monitord.settings import DetectorSpec

from .base import DriftDetector, build_detector

#: Detector type name → "module:Class" within this package.
DETECTOR_TYPES: dict[str, str] = {
    "pht": "pht:PageHinkley",
    "iks": "iks:IncrementalKS",
    "nm_ddm": "nm_ddm:NMDDM",
    "ddm": "ddm:DDM",
    "eddm": "eddm:EDDM",
    "hddm_a": "hddm_a:HDDMA",
    "hddm_w": "hddm_w:HDDMW",
    "bernoulli_cusum": "bernoulli_cusum:BernoulliCUSUM",
    "class_mix": "class_mix:ClassMix",
    "mmd": "mmd:OnlineMMD",
}


def detector_class(type_name: str) -> type[DriftDetector]:
    module_name, class_name = DETECTOR_TYPES[type_name].split(":")
    module = importlib.import_module(f"{__package__}.{module_name}")
    return getattr(module, class_name)


def _factory(type_name: str) -> Callable[[DetectorSpec, np.ndarray | None], Any]:
    def factory(spec: DetectorSpec, reference: np.ndarray | None) -> DriftDetector:
        return build_detector(detector_class(type_name), spec, reference)

    factory.__doc__ = f"Build a ``{type_name}`` detector from its settings."
    return factory


@hookimpl
def register_detectors(register: Register) -> None:
    for type_name in DETECTOR_TYPES:
        register(type_name, _factory(type_name))
