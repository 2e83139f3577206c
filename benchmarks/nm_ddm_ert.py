"""NM-DDM with ``ert`` against its per-window ``alpha_drift`` on the digits model's activation
statistics (``activation_mean``, ``activation_std``), as the default set watches them.

Measures, on the trained digits artifact (``--artifact``, trained there unless present):

* cost: wall and CPU seconds to build the detector on the artifact's reference (the
  calibration, nothing cached), for ``ert`` and for ``alpha_drift``;
* false alarms: drift episodes on clean streams, each detector fitted on a resampled copy
  of the reference and fed ``--samples`` rows resampled from it (``--references`` times):
  the run length and its 95 % Poisson interval (``monitord_drift.ert.run_length``);
* delay: samples from the start of a corruption to the first drift, over ``--streams``
  streams of 300 clean held-out rows then corrupted ones, against the artifact's reference.

    PYTHONPATH=... python benchmarks/nm_ddm_ert.py --artifact /tmp/baselines-artifact

Figures go to stdout as Markdown for RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np

SIGNALS = ("activation_mean", "activation_std")
CLEAN_LEAD = 300
BATCH = 64
KINDS = (("noise", None), ("blur", 0.5), ("contrast", 0.6), ("rotation", 30.0))


def settings(args: argparse.Namespace) -> dict[str, dict]:
    return {f"ert = {args.ert:,.0f}": {"window": 100, "ert": args.ert},
            "alpha_drift = 1e-4 (default set)": {"window": 100, "alpha_drift": 1e-4}}


def reference_rows(artifact: Path) -> np.ndarray:
    from monitord.reference.store import read_reference

    saved = read_reference(artifact)
    if saved is None:
        raise SystemExit(f"{artifact} has no reference; run `monitord reference`")
    signals = saved.signal_lists()
    return np.column_stack([np.asarray(signals[name], dtype=np.float64) for name in SIGNALS])


def held_out_rows(model, kind: str | None, amount: float | None) -> np.ndarray:
    from monitord_torchvision.digits import decode_png, digit_png_bytes, held_out_digits
    from monitord_torchvision.drifts import drift_image

    rng = np.random.default_rng(3)
    images, _ = held_out_digits()
    if kind is not None:
        images = [drift_image(image, kind, amount, rng=rng) for image in images]
    inputs = np.stack([model.preprocess(decode_png(digit_png_bytes(image))) for image in images])
    result = model.predict(inputs)
    return np.column_stack([np.asarray(result.signals[name], dtype=np.float64) for name in SIGNALS])


def drifts(detector, rows: np.ndarray) -> list[int]:
    found = []
    for start in range(0, len(rows), BATCH):
        found += [event.index + start for event in detector.update(rows[start : start + BATCH]) if event.level == "drift"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=Path("/tmp/baselines-artifact"))
    parser.add_argument("--ert", type=float, default=100_000.0)
    parser.add_argument("--references", type=int, default=20)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=2_000)
    parser.add_argument("--skip-delays", action="store_true")
    args = parser.parse_args()

    from monitord_drift.ert import resample, run_length
    from monitord_drift.nm_ddm import NMDDM

    reference = reference_rows(args.artifact)
    print(f"# NM-DDM ert on {', '.join(SIGNALS)} ({len(reference)} reference rows), "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.1f}\n")
    NMDDM(window=100, ert=1_000, reference=reference[:200])  # numba's set-up, not counted below
    fitted = {}
    print("| setting | build, wall s | build, CPU s | warning threshold | drift threshold |")
    print("|---|---:|---:|---:|---:|")
    for name, params in settings(args).items():
        wall, cpu = time.perf_counter(), time.process_time()
        fitted[name] = NMDDM(**params, reference=reference)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        warning, drift = fitted[name]._thresholds
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {warning:.4f} | {drift:.4f} |")

    print(f"\n| setting | false drifts | clean samples | run length (95 %) | seconds |")
    print("|---|---:|---:|---|---:|")
    for name, params in settings(args).items():
        alarms, began = 0, time.perf_counter()
        for copy_index in range(args.references):
            rng = np.random.default_rng([7, copy_index])
            detector = NMDDM(**params, seed=copy_index, reference=resample(reference, len(reference), rng))
            alarms += len(drifts(detector, resample(reference, args.samples, rng)))
        samples = args.references * args.samples
        estimate, low, high = run_length(alarms, samples)
        print(f"| {name} | {alarms} | {samples:,} | {estimate:,.0f} ({low:,.0f}–{high:,.0f}) | "
              f"{time.perf_counter() - began:.0f} |")
        sys.stdout.flush()
    if args.skip_delays:
        return

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "monitord-torchvision"))
    from monitord_torchvision.loading import load_artifact

    model = load_artifact(args.artifact, device="cpu")
    clean = held_out_rows(model, None, None)
    print(f"\nDelay to the first drift, samples (median / p90 over {args.streams} streams; missed within "
          f"{args.horizon:,}; drifts in the clean lead-in of {CLEAN_LEAD}):\n")
    print("| corruption | " + " | ".join(settings(args)) + " |")
    print("|---|" + "---:|" * len(fitted))
    for kind, amount in KINDS:
        drifted = held_out_rows(model, kind, amount)
        cells = []
        for name, detector in fitted.items():
            rng = np.random.default_rng(1)
            delays, early = [], 0
            for _ in range(args.streams):
                rows = np.vstack([clean[rng.integers(0, len(clean), CLEAN_LEAD)],
                                  drifted[rng.integers(0, len(drifted), args.horizon)]])
                found = drifts(copy.deepcopy(detector), rows)
                early += sum(index < CLEAN_LEAD for index in found)
                after = [index - CLEAN_LEAD for index in found if index >= CLEAN_LEAD]
                delays.append(after[0] if after else np.inf)
            finite = np.asarray(delays)
            missed = int(np.isinf(finite).sum())
            cells.append(f"{np.median(finite):.0f} / {np.percentile(finite, 90):.0f}, missed {missed}, early {early}")
        label = f"{kind} ({'default' if amount is None else amount})"
        print(f"| {label} | " + " | ".join(cells) + " |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
