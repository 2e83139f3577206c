"""What it costs to build each detector type without a reference, in a fresh process.

The daemon's start-up check builds every configured detector with ``reference=None``
before the model loads, to refuse bad settings early; this measures that, imports
included, and what the first ``update`` then pays for the imports deferred to it.
From the repository root:

    .venv/bin/python benchmarks/detector_build.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import sys, time
t0 = time.perf_counter()
import numpy as np
from monitord.settings import DetectorSpec
from monitord_drift.base import build_detector
from monitord_drift.plugin import DETECTOR_TYPES, detector_class
t1 = time.perf_counter()
kinds = list(DETECTOR_TYPES) if sys.argv[1] == "all" else [sys.argv[1]]
detectors = []
for kind in kinds:
    spec = DetectorSpec(type=kind, signal=["a", "b"] if kind == "nm_ddm" else "x")
    detectors.append(build_detector(detector_class(kind), spec, None))
t2 = time.perf_counter()
if sys.argv[1] != "all":  # a first batch: zeros fit every type (and no reference is completed)
    values = np.zeros((64, 2)) if sys.argv[1] == "nm_ddm" else np.zeros(64)
    detectors[0].update(values)
    detectors[0].state
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, "numba" in sys.modules, "scipy.signal" in sys.modules)
"""


def measure(kind: str) -> tuple[float, float, float, bool, bool]:
    output = subprocess.run([sys.executable, "-c", _CHILD, kind], capture_output=True, text=True, check=True,
                            env=os.environ).stdout.split()
    return float(output[0]), float(output[1]), float(output[2]), output[3] == "True", output[4] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per type; the median is shown")
    rounds = parser.parse_args().rounds
    print("| types | core imports (s) | build, detector imports included (s) | first update (s) "
          "| numba / scipy.signal loaded |")
    print("|---|---|---|---|---|")
    for kind in ["pht", "iks", "nm_ddm", "ddm", "eddm", "hddm_a", "hddm_w", "all"]:
        runs = [measure(kind) for _ in range(rounds)]
        core, build, first = (statistics.median(run[i] for run in runs) for i in range(3))
        loaded = f"{'yes' if runs[-1][3] else 'no'} / {'yes' if runs[-1][4] else 'no'}"
        first_text = "" if kind == "all" else f"{first:.3f}"
        print(f"| {kind} | {core:.3f} | {build:.3f} | {first_text} | {loaded} |")


if __name__ == "__main__":
    main()
