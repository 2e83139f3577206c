"""Error detectors on a rise of the error rate from 5 % to 10 % (issue 18, item 5).

For each detector on the ``error`` signal (monitord-drift's, with their defaults and with
tuned parameters, and river's as baselines): in how many of 20 seeded streams it finds
the rise within 1,000 samples (2,000 clean samples, then 5,000 at the higher rate), the
median delay (counted from the change to the first drift at or after it; a miss counts as
endless), and its false alarms per 1,000 samples on clean 100,000-sample streams.

    python benchmarks/error_detectors.py [--clean-streams 5] [--only bernoulli_cusum]

Prints a markdown table (benchmarks/RESULTS.md, "Error detectors (issue 18)").
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
from typing import Callable

import numpy as np
from monitord_drift.plugin import detector_class

BEFORE, AFTER = 0.05, 0.10
CLEAN_SAMPLES, CHANGED_SAMPLES = 2000, 5000
WITHIN = 1000
STREAMS = 20
CLEAN_LENGTH = 100_000

#: (label, type, parameters): monitord-drift's detectors.
OURS: list[tuple[str, str, dict]] = [
    ("hddm_a", "hddm_a", {}),
    ("hddm_a", "hddm_a", {"drift_confidence": 0.02, "warning_confidence": 0.1}),
    ("hddm_a", "hddm_a", {"drift_confidence": 0.1, "warning_confidence": 0.2}),
    ("hddm_w", "hddm_w", {}),
    ("hddm_w", "hddm_w", {"drift_confidence": 0.02, "warning_confidence": 0.1}),
    ("hddm_w", "hddm_w", {"drift_confidence": 0.02, "warning_confidence": 0.1, "lambda_": 0.01}),
    ("ddm", "ddm", {}),
    ("ddm", "ddm", {"drift_threshold": 3.0, "min_samples": 1000}),
    ("eddm", "eddm", {}),
    ("eddm", "eddm", {"alpha": 0.8, "beta": 0.75}),
    ("bernoulli_cusum", "bernoulli_cusum", {}),
    ("bernoulli_cusum", "bernoulli_cusum", {"threshold": 5.0}),
    ("bernoulli_cusum", "bernoulli_cusum", {"threshold": 7.0}),
    ("bernoulli_cusum", "bernoulli_cusum", {"min_samples": 1000}),
    ("bernoulli_cusum", "bernoulli_cusum", {"odds_ratio": 2.0, "threshold": 7.0}),
    ("bernoulli_cusum", "bernoulli_cusum", {"ert": 10_000}),
    ("bernoulli_cusum", "bernoulli_cusum", {"ert": 20_000}),
    ("bernoulli_cusum", "bernoulli_cusum", {"ert": 100_000}),
]


def errors(seed: int, segments: list[tuple[float, int]]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.random(length) < rate for rate, length in segments]).astype(np.float64)


def ours(type_name: str, params: dict) -> Callable[[np.ndarray], list[int]]:
    cls = detector_class(type_name)

    def drifts(stream: np.ndarray) -> list[int]:
        return [event.index for event in cls(**params).update(stream) if event.level == "drift"]

    return drifts


def river(name: str, params: dict) -> Callable[[np.ndarray], list[int]]:
    from river.drift import binary

    def drifts(stream: np.ndarray) -> list[int]:
        detector = getattr(binary, name)(**params)
        found = []
        for index, value in enumerate(stream.astype(int).tolist()):
            detector.update(value)
            if detector.drift_detected:
                found.append(index)
        return found

    return drifts


def measure(drifts: Callable[[np.ndarray], list[int]], clean_streams: int, streams: range, change: int) -> dict:
    delays = []
    for seed in streams:
        found = drifts(errors(seed, [(BEFORE, change), (AFTER, CHANGED_SAMPLES)]))
        after = [index - change for index in found if index >= change]
        delays.append(after[0] if after else math.inf)
    alarms = sum(len(drifts(errors(10_000 + seed, [(BEFORE, CLEAN_LENGTH)]))) for seed in range(clean_streams))
    return {
        "detected": sum(delay <= WITHIN for delay in delays),
        "median_delay": float(np.median(delays)),
        "alarms": alarms,
        "per_1000": 1000 * alarms / (clean_streams * CLEAN_LENGTH),
    }


def main() -> None:
    global BEFORE, AFTER
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean-streams", type=int, default=5, help="clean 100,000-sample streams per detector")
    parser.add_argument("--only", help="measure only detectors whose label starts with this")
    parser.add_argument("--streams", type=int, default=STREAMS, help="streams with a change")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first stream with a change")
    parser.add_argument("--change", type=int, default=CLEAN_SAMPLES, help="clean samples before the change")
    parser.add_argument("--no-river", action="store_true", help="leave out river's baselines")
    parser.add_argument("--before", type=float, default=BEFORE, help="error rate before the change (and clean)")
    parser.add_argument("--after", type=float, default=AFTER, help="error rate after the change")
    args = parser.parse_args()
    BEFORE, AFTER = args.before, args.after
    rows = [(f"{label}", params, ours(type_name, params)) for label, type_name, params in OURS]
    if not args.no_river:
        rows += [(f"river {name}", params, river(name, params)) for name, params in [
            ("DDM", {}), ("EDDM", {}), ("HDDMA", {}), ("HDDMW", {}),
            ("HDDMA", {"drift_confidence": 0.02, "warning_confidence": 0.1}),
        ]]
    if args.only:
        rows = [row for row in rows if row[0].startswith(args.only)]
    print(f"{platform.node()} {platform.processor() or platform.machine()}, "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; {args.clean_streams} clean streams of "
          f"{CLEAN_LENGTH:,} samples at {BEFORE:.0%}, {args.streams} streams {BEFORE:.0%} → {AFTER:.0%} after "
          f"{args.change:,} (seeds from {args.first_seed})\n")
    print(f"| detector | parameters | detected within 1,000 (of {args.streams}) | median delay | false alarms per 1,000 (count) |")
    print("|---|---|---|---|---|")
    for label, params, drifts in rows:
        found = measure(drifts, args.clean_streams, range(args.first_seed, args.first_seed + args.streams), args.change)
        shown = ", ".join(f"{key}={value}" for key, value in params.items()) or "defaults"
        print(f"| {label} | {shown} | {found['detected']} | {found['median_delay']:g} | "
              f"{found['per_1000']:.3f} ({found['alarms']}) |", flush=True)


if __name__ == "__main__":
    main()
