"""The embedding detector (``mmd``) against NM-DDM on the digits model's embedding signals.

Measures, on the real default digits model (trained into ``--artifact`` unless there):

* speed: updates/s of each detector fed batches of 64 rows of 8 signals, one core;
* delay: samples from the start of a corruption (each pixel kind of
  monitord_torchvision.drifts, at its default and a milder amount) to the first drift, over
  ``--streams`` streams of 300 clean samples then corrupted ones (rows resampled from the
  held-out digits, clean or corrupted), against the artifact's reference;
* false alarms: clean run length (samples between false drifts once the window is full),
  with each detector fitted on a resampled copy of the held-out population and the stream
  resampled from it (the premise of the ERT calibration), restarted after each alarm.

    PYTHONPATH=... python benchmarks/embedding_detector.py --artifact /tmp/digits-model

Figures go to stdout as a Markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins" / "monitord-torchvision" / "tests"))

from digit_embeddings import MILD_AMOUNTS, held_out_embedding, reference_embedding  # noqa: E402

KINDS = ("rotation", "noise", "blur", "contrast", "brightness", "invert")
CLEAN_LEAD = 300
BATCH = 64


def detectors(reference: np.ndarray, window: int, nm_ddm_alphas: tuple[float, float]) -> dict[str, object]:
    from monitord_drift.mmd import OnlineMMD
    from monitord_drift.nm_ddm import NMDDM

    warning, drift = nm_ddm_alphas
    return {"mmd": OnlineMMD(reference=reference, window=window),
            "nm_ddm": NMDDM(reference=reference, alpha_warning=warning, alpha_drift=drift)}


def feed(detector, rows: np.ndarray) -> list:
    events = []
    for start in range(0, len(rows), BATCH):
        events += [(event.index + start, event.level) for event in detector.update(rows[start : start + BATCH])]
    return events


def speed(detector, rows: np.ndarray, seconds: float) -> float:
    detector = copy.deepcopy(detector)
    feed(detector, rows[:500])
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        for start in range(0, len(rows), BATCH):
            detector.update(rows[start : start + BATCH])
        done += len(rows)
    return done / (time.perf_counter() - began)


def delays(fitted, clean: np.ndarray, drifted: np.ndarray, streams: int, horizon: int) -> tuple[list[float], int]:
    """Delays to the first drift after the change (inf when missed) and drifts before it."""
    rng = np.random.default_rng(1)
    found, early = [], 0
    for _ in range(streams):
        detector = copy.deepcopy(fitted)
        rows = np.vstack([clean[rng.integers(0, len(clean), CLEAN_LEAD)], drifted[rng.integers(0, len(drifted), horizon)]])
        drifts = [index for index, level in feed(detector, rows) if level == "drift"]
        early += sum(index < CLEAN_LEAD for index in drifts)
        after = [index - CLEAN_LEAD for index in drifts if index >= CLEAN_LEAD]
        found.append(float(after[0]) if after else float("inf"))
    return found, early


def clean_run_length(make, population: np.ndarray, references: int, samples: int, window: int) -> tuple[int, int]:
    """(false drifts, evaluated samples) over ``references`` resampled references."""
    rng = np.random.default_rng(2)
    alarms = evaluated = 0
    for _ in range(references):
        fitted = make(population[rng.integers(0, len(population), len(population))])
        left = samples
        while left > 0:
            detector = copy.deepcopy(fitted)
            rows = population[rng.integers(0, len(population), min(left, 20_000))]
            drifts = [index for index, level in feed(detector, rows) if level == "drift"]
            end = drifts[0] + 1 if drifts else len(rows)
            alarms += bool(drifts)
            evaluated += max(0, end - window + 1)
            left -= end
    return alarms, evaluated


def summary(found: list[float]) -> str:
    values = np.array(found)
    missed = int(np.isinf(values).sum())
    hit = values[np.isfinite(values)]
    if not len(hit):
        return f"missed {missed}/{len(values)}"
    text = f"{np.median(hit):.0f} / {np.percentile(hit, 90):.0f}"
    return text + (f" (missed {missed}/{len(values)})" if missed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=Path("/tmp/monitord-digits-model"))
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=3000)
    parser.add_argument("--speed-seconds", type=float, default=3.0)
    parser.add_argument("--clean-samples", type=int, default=100_000, help="per resampled reference")
    parser.add_argument("--references", type=int, default=5)
    parser.add_argument("--mmd-window", type=int, default=200)
    parser.add_argument("--nm-ddm-alphas", type=float, nargs=2, default=(0.01, 0.001), metavar=("WARNING", "DRIFT"))
    args = parser.parse_args()

    from monitord_drift.mmd import OnlineMMD
    from monitord_drift.nm_ddm import NMDDM
    from monitord_torchvision.loading import load_artifact
    from monitord_torchvision.training import train_default_model

    if not (args.artifact / "metadata.json").exists():
        train_default_model(args.artifact, seed=0, progress=False)
    _, reference = reference_embedding(args.artifact)
    model = load_artifact(args.artifact, device="cpu")
    clean = held_out_embedding(model, args.artifact)
    print(f"# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; reference {reference.shape}")

    began = time.perf_counter()
    OnlineMMD(reference=reference, window=args.mmd_window, seed=1)  # fresh draws: the calibration's cost
    print(f"mmd start-up calibration (ert 100,000): {time.perf_counter() - began:.2f} s")
    fitted = detectors(reference, args.mmd_window, tuple(args.nm_ddm_alphas))
    print(f"mmd thresholds (warning, drift): {fitted['mmd']._thresholds}")
    for name, detector in fitted.items():
        print(f"speed {name}: {speed(detector, clean, args.speed_seconds):,.0f} updates/s (batches of {BATCH})")

    warning, drift = args.nm_ddm_alphas
    print(f"\nmmd window {args.mmd_window}, ert 100,000; nm_ddm window 100, alpha_warning {warning}, alpha_drift {drift}")
    print("\n| corruption | amount | mmd median / p90 delay | nm_ddm median / p90 delay |")
    print("|---|---|---|---|")
    early = {name: 0 for name in fitted}
    for kind in KINDS:
        for amount in (None, MILD_AMOUNTS[kind]):
            drifted = held_out_embedding(model, args.artifact, kind, amount, seed=3)
            cells = []
            for name, detector in fitted.items():
                found, before = delays(detector, clean, drifted, args.streams, args.horizon)
                early[name] += before
                cells.append(summary(found))
            print(f"| {kind} | {'default' if amount is None else amount} | {cells[0]} | {cells[1]} |")
    print(f"\ndrifts in the clean lead-ins ({CLEAN_LEAD} samples × {args.streams * 2 * len(KINDS)} streams): {early}")

    from monitord_drift.ert import run_length

    makers = {
        "mmd (ert 2,000)": (lambda ref: OnlineMMD(reference=ref, window=args.mmd_window, ert=2000), args.mmd_window),
        "mmd (ert 100,000)": (lambda ref: OnlineMMD(reference=ref, window=args.mmd_window), args.mmd_window),
        f"nm_ddm (alpha_drift {drift})": (lambda ref: NMDDM(reference=ref, alpha_warning=warning, alpha_drift=drift), 100),
    }
    for label, (make, window) in makers.items():
        alarms, evaluated = clean_run_length(make, clean, args.references, args.clean_samples, window)
        estimate, low, high = run_length(alarms, evaluated)
        print(f"clean run length {label}: {alarms} false drifts in {evaluated:,} samples: {estimate:,.0f} "
              f"(95 % {low:,.0f} – {high:,.0f})")


if __name__ == "__main__":
    main()
