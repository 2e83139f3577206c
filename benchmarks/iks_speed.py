"""Updates per second of monitord's IKS detector, next to river's and to recomputing scipy's.

Run from the repository root:  .venv/bin/python benchmarks/iks_speed.py

What is measured, all in this one process so that the figures compare:

- numba: the cost of the first call (import + compile, or load from numba's cache);
- ours: ``IncrementalKS.update`` on batches of N(0,1) values (a fixed reference of
  ``--reference`` values, a full sliding window of 500, 2,000 and 8,000), and at a window
  of 500 also one value per ``update`` call (the Python overhead of the daemon's path
  when micro-batches hold one image);
- river 0.26: ``river.stats.KolmogorovSmirnov`` slid over a window of 500 the only way it
  allows (both samples move: ``revert`` the oldest pair, ``update`` the newest, ``get``);
- scipy: ``scipy.stats.ks_2samp(reference, window)`` recomputed per value, window 500.

Each figure is the median over interleaved repeats (so that a noisy neighbour on a shared
machine hurts every variant alike), with the best repeat beside it. Then the acceptance
checks: ours at 500 at least 20x river's rate, cost per update at 8,000 at most 1.5x the
cost at 500; then, per alpha, how many clean streams of 100,000 N(0,1) values raise a
false drift (window 500) and the delay after a 0.5 sigma mean shift.
"""

from __future__ import annotations

import argparse
import collections
import math
import platform
import statistics
import time

import numpy as np

WINDOWS = (500, 2000, 8000)


def first_call_seconds() -> float:
    started = time.perf_counter()
    from monitord_drift.iks import IncrementalKS

    IncrementalKS(window=8, reference_size=8, seed=0).update(np.arange(24.0))  # the smallest that can alarm
    return time.perf_counter() - started


def ours_batch(window: int, reference: int, values: np.ndarray, seed: int) -> float:
    from monitord_drift.iks import IncrementalKS

    rng = np.random.default_rng(seed)
    detector = IncrementalKS(window=window, reference_size=reference, seed=seed)
    detector.update(rng.normal(size=reference + window))  # reference, then a full window
    started = time.perf_counter()
    detector.update(values)
    return len(values) / (time.perf_counter() - started)


def ours_single(window: int, reference: int, values: np.ndarray, seed: int) -> float:
    from monitord_drift.iks import IncrementalKS

    rng = np.random.default_rng(seed)
    detector = IncrementalKS(window=window, reference_size=reference, seed=seed)
    detector.update(rng.normal(size=reference + window))
    batches = [values[i : i + 1] for i in range(len(values))]
    started = time.perf_counter()
    for batch in batches:
        detector.update(batch)
    return len(values) / (time.perf_counter() - started)


def river_sliding(window: int, steps: int, seed: int) -> float:
    from river.stats import KolmogorovSmirnov

    rng = np.random.default_rng(seed)
    reference = rng.normal(size=window + steps).tolist()
    stream = rng.normal(size=window + steps).tolist()
    ks = KolmogorovSmirnov()
    for i in range(window):
        ks.update(reference[i], stream[i])
    started = time.perf_counter()
    for i in range(window, window + steps):
        ks.revert(reference[i - window], stream[i - window])
        ks.update(reference[i], stream[i])
        ks.get()
    return steps / (time.perf_counter() - started)


def scipy_recompute(window: int, reference_size: int, steps: int, seed: int) -> float:
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(seed)
    reference = rng.normal(size=reference_size)
    stream = rng.normal(size=window + steps)
    started = time.perf_counter()
    for i in range(steps):
        ks_2samp(reference, stream[i : i + window]).statistic
    return steps / (time.perf_counter() - started)


def false_alarms(seeds: int, samples: int, window: int, alpha: float) -> list[int]:
    """Drift events per clean N(0,1) stream (reference: its first 500 values)."""
    from monitord_drift.iks import IncrementalKS

    counts = []
    for seed in range(seeds):
        detector = IncrementalKS(window=window, alpha=alpha, reference_size=500, seed=seed)
        events = detector.update(np.random.default_rng(1000 + seed).normal(size=500 + samples))
        counts.append(sum(event.level == "drift" for event in events))
    return counts


def delays(seeds: int, window: int, alpha: float, shift: float) -> list[float]:
    """Samples from a mean shift of ``shift`` sigma to the first drift (inf: missed)."""
    from monitord_drift.iks import IncrementalKS

    found = []
    for seed in range(seeds):
        rng = np.random.default_rng(5000 + seed)
        detector = IncrementalKS(window=window, alpha=alpha, reference_size=500, seed=seed)
        detector.update(rng.normal(size=500 + 2000))
        events = detector.update(rng.normal(shift, 1.0, 3000))
        drift = [event.index for event in events if event.level == "drift"]
        found.append(drift[0] if drift else math.inf)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--values", type=int, default=200_000, help="values per timed batch of ours")
    parser.add_argument("--reference", type=int, default=500, help="reference size of ours")
    parser.add_argument("--seeds", type=int, default=20, help="seeds of the false-alarm check")
    args = parser.parse_args()

    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}")
    print(f"numba first call (import + compile or cache load): {first_call_seconds():.2f} s")

    rates: dict[str, list[float]] = collections.defaultdict(list)
    values = np.random.default_rng(99).normal(size=args.values)
    for repeat in range(args.repeats):
        for window in WINDOWS:
            rates[f"ours batch   w={window}"].append(ours_batch(window, args.reference, values, repeat))
        rates["ours batch   w=8000 ref=8000"].append(ours_batch(8000, 8000, values, repeat))
        rates["ours 1/call  w=500"].append(ours_single(500, args.reference, values[:20_000], repeat))
        rates["river        w=500"].append(river_sliding(500, 3_000, repeat))
        if repeat < 3:
            rates["scipy ks_2samp w=500"].append(scipy_recompute(500, args.reference, 1_000, repeat))

    print(f"\nreference {args.reference} values; updates/s, median (best) of the repeats")
    for name, values_per_second in rates.items():
        print(f"  {name:22s} {statistics.median(values_per_second):>12,.0f}  ({max(values_per_second):,.0f})")

    median = {name: statistics.median(v) for name, v in rates.items()}
    speedup = median["ours batch   w=500"] / median["river        w=500"]
    single = median["ours 1/call  w=500"] / median["river        w=500"]
    growth = median["ours batch   w=500"] / median["ours batch   w=8000"]
    # Per repeat, the same neighbours slowed both windows: the ratio is steadier than the rates.
    paired = [a / b for a, b in zip(rates["ours batch   w=500"], rates["ours batch   w=8000"])]
    print(f"\nours / river at w=500: {speedup:.0f}x batched, {single:.1f}x one value per call (target >= 20x)")
    print(
        f"cost per update, w=8000 / w=500: {growth:.2f} from the medians, "
        f"{statistics.median(paired):.2f} median of paired repeats (target <= 1.5)"
    )

    print(
        f"\nwindow 500, reference 500 (from the stream), {args.seeds} seeds: drift events over 100,000 clean "
        "N(0,1) values, and delay to the first drift after a 0.5 sigma mean shift"
    )
    for alpha in (0.001, 1e-4, 1e-5):
        started = time.perf_counter()
        counts = false_alarms(args.seeds, 100_000, 500, alpha)
        found = delays(args.seeds, 500, alpha, 0.5)
        print(
            f"  alpha {alpha:g}: streams with a false drift {sum(c > 0 for c in counts)}/{args.seeds} "
            f"(events per stream {counts}); delay median {statistics.median(found):.0f}, "
            f"max {max(found):.0f} ({time.perf_counter() - started:.1f} s)"
        )


if __name__ == "__main__":
    main()
