"""How long ``monitord report`` takes on a 10,000-line predictions log (the goal: under 10 s).

The log is written by the daemon's own ``PredictionsLog``: rows drawn (seeded, with
replacement) from the digits model's reference, which are the model's signals on the
held-out digits, so each line holds what the daemon writes (every signal, the embedding's
included); every other line carries a label (the predicted class), so the classification
quality section runs too. The command runs as a user runs it, a new process each time
(Python start-up and Evidently's import included), ``--window 10000 --out FILE --json``.

    python benchmarks/report.py [--artifact MODEL] [--rows 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from monitord.items import Prediction
from monitord.predictions_log import PredictionsLog, predictions_log_path
from monitord.reference import read_reference


def write_log(state_dir: Path, artifact: Path, rows: int, seed: int = 0) -> Path:
    reference = read_reference(artifact)
    assert reference is not None, f"{artifact} has no reference; train it with `monitord train`"
    drawn = np.random.default_rng(seed).integers(0, reference.samples, size=rows)
    names = reference.class_names
    signals = {name: np.asarray(values, dtype=np.float64)[drawn] for name, values in reference.signals.items()}
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(milliseconds=10 * rows)
    log = PredictionsLog(predictions_log_path(state_dir), 50 << 20, 5)
    try:
        for first in range(0, rows, 64):
            batch = []
            for row in range(first, min(first + 64, rows)):
                index = int(signals["predicted_class"][row])
                batch.append(Prediction(
                    id=f"image-{row}", source="benchmark", class_name=names[index], class_index=index,
                    confidence=float(signals["confidence"][row]),
                    signals={name: float(values[row]) for name, values in signals.items()},
                    time=(start + dt.timedelta(milliseconds=10 * row)).isoformat(timespec="milliseconds"),
                    label=names[index] if row % 2 == 0 else None))
            log.write(batch)
    finally:
        log.close()
    return predictions_log_path(state_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, help="a trained model with its reference (default: train one)")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="report-bench-") as folder:
        work = Path(folder)
        artifact = options.artifact
        if artifact is None:
            from monitord_torchvision.training import train_default_model

            artifact = train_default_model(work / "model", seed=0, progress=False).output
        log = write_log(work / "state", artifact, options.rows)
        config = work / "monitord.toml"
        config.write_text(f'state_dir = "{work / "state"}"\n[model]\nartifact = "{artifact}"\n')
        seconds = []
        for run in range(options.runs):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "monitord", "report", "--config", str(config),
                                   "--window", str(options.rows), "--out", str(work / "report.html"), "--json"],
                                  capture_output=True, text=True, env=os.environ)
            seconds.append(time.perf_counter() - started)
            if done.returncode != 0:
                sys.exit(f"monitord report failed ({done.returncode}): {done.stderr}")
        document = json.loads(done.stdout)
        print(f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        print(f"log: {log.stat().st_size / 1e6:.1f} MB, {options.rows} lines; window rows {document['window']['rows']}, "
              f"{len(document['signals'])} columns tested, {document['quality']['labelled']} labelled")
        print(f"HTML {Path(document['html']).stat().st_size / 1e6:.1f} MB")
        print("monitord report, end to end (s): " + ", ".join(f"{value:.2f}" for value in seconds)
              + f"; median {statistics.median(seconds):.2f}")


if __name__ == "__main__":
    main()
