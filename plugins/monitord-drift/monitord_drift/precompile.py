"""Compile every detector's numba kernels ahead of the first daemon start.

The kernels are compiled on first use and kept in numba's on-disk cache beside the
package. Compiling them all takes tens of seconds on a small machine, which a first start
would otherwise spend before it can judge its first batch (and a container would spend at
every start, its file system being new each time). Running this once after installing,
or while building an image, leaves the cache filled:

    python -m monitord_drift.precompile

It builds each detector type on small random data, calibrations included (a small
``ert``), and feeds it a batch, which is what compiles the kernels a real run uses.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from .plugin import DETECTOR_TYPES, detector_class

#: A small ERT: compiles the calibration kernels in a fraction of a second.
_ERT = 1_000.0


def _workload(type_name: str, rng: np.random.Generator) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray]:
    """Parameters, reference and a batch that take ``type_name`` through its kernels."""
    if type_name in ("ddm", "eddm", "hddm_a", "hddm_w"):
        return {}, None, (rng.random(2_000) < 0.1).astype(np.float64)
    if type_name == "bernoulli_cusum":
        return {"ert": _ERT}, None, (rng.random(2_000) < 0.1).astype(np.float64)
    if type_name == "class_mix":
        return {"ert": _ERT}, rng.integers(0, 5, 400).astype(np.float64), rng.integers(0, 5, 600).astype(np.float64)
    if type_name in ("nm_ddm", "mmd"):
        params = {"ert": _ERT} if type_name == "mmd" else {}
        return params, rng.normal(size=(400, 2)), rng.normal(size=(600, 2))
    return {"ert": _ERT}, rng.normal(size=500), rng.normal(size=1_000)


def precompile(type_names: list[str] | None = None) -> dict[str, float]:
    """Seconds each type took to build and run once (its kernels compiled or loaded)."""
    rng = np.random.default_rng(0)
    seconds = {}
    for type_name in type_names or list(DETECTOR_TYPES):
        started = time.perf_counter()
        params, reference, batch = _workload(type_name, rng)
        detector = detector_class(type_name)(reference=reference, **params)
        detector.update(batch)
        detector.update(batch[:1])  # the one-sample path, where it differs
        seconds[type_name] = time.perf_counter() - started
    return seconds


def main() -> None:
    started = time.perf_counter()
    for type_name, took in precompile(sys.argv[1:] or None).items():
        print(f"{type_name}: {took:.1f} s")
    print(f"detector kernels ready in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
