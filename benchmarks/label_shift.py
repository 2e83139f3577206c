"""Label shift on the real digits model (issue 18, item 2): class_mix's delays and false alarms.

The default digits model is trained (a few CPU seconds, seed 0) and classifies the 360
held-out digits as the daemon would (PNG → PIL → preprocess); its reference is the
``predicted_class`` signal the training saved. Streams are held-out images drawn with
replacement, fed to the detector as the model's predicted classes; a scenario changes
which true digits are drawn:

- half the classes: digits 0–4 only;
- one class at 30 %: one digit (seed-chosen) drawn 30 % of the time, the others evenly;
- three classes doubled: three digits (seed-chosen) drawn twice as often as the others.

Each of 20 seeds: 1,000 clean images, then 5,000 shifted; the delay counts images from
the change to the first drift at or after it (a drift before it is a false alarm).
False alarms are drift episodes on clean streams, both against the model's own
reference (streams are drawn from the very images it was computed on: optimistic) and
against a fresh reference of 360 drawn from the held-out predictions per stream (the
reference's own sampling error included, as a deployment sees it).

    python benchmarks/label_shift.py [--clean-streams 20] [--shift-factor 1.5 3]

Prints a markdown table (benchmarks/RESULTS.md, "Label shift (issue 18)").
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from monitord_drift.class_mix import ClassMix
from monitord_drift.ert import run_length

SEEDS = 20
BEFORE, AFTER = 1000, 5000
CLEAN_LENGTH = 100_000
BATCH = 64
DIGITS = 10


def digits_predictions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reference predicted classes, held-out labels, held-out predicted classes)."""
    from monitord_torchvision.digits import decode_png, digit_png_bytes, held_out_digits
    from monitord_torchvision.loading import load_artifact
    from monitord_torchvision.training import train_default_model

    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "model"
        train_default_model(output, seed=0, progress=False)
        model = load_artifact(output, device="cpu")
        try:
            images, labels = held_out_digits()
            inputs = np.stack([model.preprocess(decode_png(digit_png_bytes(image))) for image in images])
            predicted = np.asarray(model.predict(inputs).class_index, dtype=np.float64)
            reference = np.asarray(model.reference_signals["predicted_class"], dtype=np.float64)
        finally:
            model.close()
    return reference, labels, predicted


def label_weights(scenario: str, rng: np.random.Generator) -> np.ndarray:
    weights = np.ones(DIGITS)
    if scenario == "half the classes":
        weights[DIGITS // 2 :] = 0.0
    elif scenario == "one class at 30 %":
        chosen = rng.integers(DIGITS)
        weights[:] = 0.7 / (DIGITS - 1)
        weights[chosen] = 0.3
    elif scenario == "three classes doubled":
        weights[rng.choice(DIGITS, size=3, replace=False)] = 2.0
    return weights / weights.sum()


def draw(labels: np.ndarray, predicted: np.ndarray, weights: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Predicted classes of held-out images whose true digits follow ``weights``."""
    by_digit = [np.flatnonzero(labels == digit) for digit in range(DIGITS)]
    digits = rng.choice(DIGITS, size=size, p=weights)
    rows = np.empty(size, dtype=np.int64)
    for digit in range(DIGITS):
        where = digits == digit
        rows[where] = rng.choice(by_digit[digit], size=int(where.sum()))
    return predicted[rows]


def drifts(detector: ClassMix, stream: np.ndarray) -> list[int]:
    return [event.index for event in detector.update(stream) if event.level == "drift"]


def delays(params: dict, reference, labels, predicted, scenario: str) -> tuple[list[float], int]:
    found, early = [], 0
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        weights = label_weights(scenario, rng)
        stream = np.concatenate([
            draw(labels, predicted, label_weights("clean", rng), BEFORE, rng),
            draw(labels, predicted, weights, AFTER, rng),
        ])  # fmt: skip
        indices = drifts(ClassMix(reference=reference, **params), stream)
        early += sum(index < BEFORE for index in indices)
        after = [index - BEFORE + 1 for index in indices if index >= BEFORE]
        found.append(after[0] if after else math.inf)
    return found, early


def false_alarms(params: dict, reference, labels, predicted, streams: int, fresh: bool) -> tuple[int, int]:
    alarms = 0
    for seed in range(streams):
        rng = np.random.default_rng(10_000 + seed)
        own = rng.choice(predicted, size=len(predicted)) if fresh else reference
        stream = draw(labels, predicted, label_weights("clean", rng), CLEAN_LENGTH, rng)
        alarms += len(drifts(ClassMix(reference=own, **params), stream))
    return alarms, streams * CLEAN_LENGTH


def speed(params: dict, reference, labels, predicted) -> tuple[float, float]:
    """(seconds to calibrate, updates per second in batches of 64)."""
    rng = np.random.default_rng(1)
    stream = draw(labels, predicted, label_weights("clean", rng), CLEAN_LENGTH, rng)
    ClassMix(reference=reference[:100], **params).update(stream[:BATCH])  # compile outside the timing
    started = time.perf_counter()
    detector = ClassMix(reference=reference, **params)
    calibration = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, len(stream), BATCH):
        detector.update(stream[start : start + BATCH])
    return calibration, len(stream) / (time.perf_counter() - started)


def p90(values: list[float]) -> float:
    return float(np.quantile(values, 0.9, method="higher"))


def show(value: float) -> str:
    return "missed" if math.isinf(value) else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean-streams", type=int, default=20, help="clean streams of 100,000 images per reference kind")
    parser.add_argument("--shift-factor", type=float, nargs="+", default=[3.0], help="class_mix shift_factor values")
    args = parser.parse_args()
    reference, labels, predicted = digits_predictions()
    accuracy = float(np.mean(predicted == labels))
    print(f"{dt.date.today()}, {platform.processor() or platform.machine()}, {len(reference)} reference predictions, "
          f"held-out accuracy {accuracy:.3f}")  # fmt: skip
    print("\n| shift_factor | scenario | caught within 5,000 | median delay | p90 delay | drifts before the change |")
    print("|---|---|---|---|---|---|")
    for factor in args.shift_factor:
        params = {"shift_factor": factor}
        for scenario in ("half the classes", "one class at 30 %", "three classes doubled"):
            found, early = delays(params, reference, labels, predicted, scenario)
            caught = sum(not math.isinf(value) for value in found)
            print(f"| {factor:g} | {scenario} | {caught}/{SEEDS} | {show(float(np.median(found)))} | "
                  f"{show(p90(found))} | {early} |")  # fmt: skip
    print("\n| shift_factor | reference | false drifts | clean images | images per false drift (95 % interval) |")
    print("|---|---|---|---|---|")
    for factor in args.shift_factor:
        for fresh in (False, True):
            alarms, samples = false_alarms({"shift_factor": factor}, reference, labels, predicted, args.clean_streams, fresh)
            estimate, low, high = run_length(alarms, samples)
            kind = "fresh 360 per stream" if fresh else "the model's"
            print(f"| {factor:g} | {kind} | {alarms} | {samples:,} | {estimate:,.0f} ({low:,.0f}–{high:,.0f}) |")
    print("\n| shift_factor | calibration (s) | updates/s, batches of 64 |")
    print("|---|---|---|")
    for factor in args.shift_factor:
        calibration, rate = speed({"shift_factor": factor}, reference, labels, predicted)
        print(f"| {factor:g} | {calibration:.2f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
