"""How far apart Page-Hinkley re-detects a drift that persists: the evidence behind
``alerts.resolve_after_samples``.

PHT restarts after every detection. On the default digits model's confidence, under a
persisting 90-degree rotation, it keeps re-detecting; an alert episode must not resolve
between two of those detections. This script trains the default model (or takes
``--artifact``), computes the confidence of every held-out digit, clean and rotated, and
feeds PHT with its default settings ``--streams`` streams of ``--samples`` digits drawn
with replacement from the rotated set, in batches of 20, recording the samples between
consecutive drift events. From the repository root:

    .venv/bin/python benchmarks/redetection_gaps.py            # prints a markdown section
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from monitord.detectors import model_reference
from monitord.settings import DetectorSpec, ModelSettings

BATCH = 20


def confidences(artifact: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confidence of every held-out digit, clean and rotated, and the model's reference."""
    from monitord_torchvision.digits import digit_image, held_out_digits
    from monitord_torchvision.plugin import torchvision_model

    model = torchvision_model(ModelSettings(artifact=artifact), artifact.parent)
    images, _ = held_out_digits()

    def run(batch: np.ndarray) -> np.ndarray:
        inputs = np.stack([model.preprocess(digit_image(np.ascontiguousarray(image))) for image in batch])
        return np.asarray(model.predict(inputs).signals["confidence"], dtype=np.float64)

    spec = DetectorSpec(type="pht", signal="confidence")
    reference = model_reference(spec, model.reference_signals)
    return run(images), run(np.rot90(images, 1, axes=(1, 2))), reference


def drift_positions(values: np.ndarray, reference: np.ndarray) -> list[int]:
    from monitord_drift.plugin import _factory

    detector = _factory("pht")(DetectorSpec(type="pht", signal="confidence"), reference)
    found = []
    for start in range(0, len(values), BATCH):
        found += [start + event.index for event in detector.update(values[start:start + BATCH])
                  if event.level == "drift"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, help="a trained model folder (default: train one)")
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--samples", type=int, default=50_000)
    args = parser.parse_args()
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        artifact = args.artifact
        if artifact is None:
            from monitord_torchvision.training import train_default_model

            artifact = Path(scratch) / "model"
            train_default_model(artifact, seed=0, progress=False)
        clean, rotated, reference = confidences(artifact)
    gaps, clean_alarms = [], []
    for seed in range(args.streams):
        rng = np.random.default_rng(seed)
        gaps += list(np.diff(drift_positions(rotated[rng.integers(0, len(rotated), args.samples)], reference)))
        clean_alarms.append(len(drift_positions(clean[rng.integers(0, len(clean), args.samples)], reference)))
    gaps = np.asarray(gaps)
    p50, p90, p99, p999 = np.percentile(gaps, [50, 90, 99, 99.9])
    print("## Alert episodes: PHT re-detection gaps (issue 15)\n")
    print(f"`benchmarks/redetection_gaps.py`: PHT (default settings) on the default digits model's confidence, "
          f"{args.streams} streams of {args.samples:,} held-out digits drawn with replacement, batches of {BATCH}.\n")
    print(f"**Machine:** {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {time.monotonic() - began:.0f} s.\n")
    print("| stream | drift events | samples between re-detections: median / p90 / p99 / p99.9 / max |")
    print("| --- | --- | --- |")
    print(f"| rotated 90° | {len(gaps) + args.streams:,} | {p50:.0f} / {p90:.0f} / {p99:.0f} / {p999:.0f} / "
          f"{gaps.max()} |")
    total = sum(clean_alarms)
    print(f"| clean | {total:,} | one every {args.streams * args.samples / max(total, 1):,.0f} samples |")


if __name__ == "__main__":
    main()
