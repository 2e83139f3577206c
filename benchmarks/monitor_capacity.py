"""How many inferences one monitor judges per second, and which part bounds it.

Feeds batches of 64 recorded digit signals, encoded as the stream carries them
(``PredictionBatch.encode``), through the monitor's whole ``apply``: decoding, the default
detector set, the feedback join, the prediction metrics and the predictions log. Then
each detector alone, in batches of 64, to say which one bounds the monitor. One process,
one core (``taskset`` it to be sure). Reading from Redis is not in it
(``redis_scale_out.py`` measures the transport's steps).

    python benchmarks/monitor_capacity.py --seconds 10 [--results]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _harness import REPO, machine_line, replace_section, utc_now  # noqa: E402

RESULTS = REPO / "benchmarks" / "RESULTS.md"
BATCH = 64


def recorded_batches(count: int) -> list:
    """Signals of the digits model on held-out digits, cycled, as prediction batches."""
    from monitord.items import Prediction
    from monitord.transport.entries import PredictionBatch
    from monitord_torchvision.digits import held_out_digits
    from monitord_torchvision.training import train_default_model
    from monitord_torchvision.loading import load_artifact
    from monitord_torchvision.preprocess import preprocess_image
    from PIL import Image

    with tempfile.TemporaryDirectory() as scratch:
        artifact = Path(scratch) / "model"
        train_default_model(artifact, seed=0, progress=False)
        model = load_artifact(artifact, device="cpu")
        images, _ = held_out_digits()
        inputs = np.stack([preprocess_image(Image.fromarray(pixels), model.spec) for pixels in images])
        result = model.predict(inputs)
        reference = model.reference_signals
    rows = len(result.class_index)
    batches = []
    for number in range(count):
        picks = np.arange(number * BATCH, (number + 1) * BATCH) % rows
        signals = {name: np.asarray(values)[picks] for name, values in result.signals.items()}
        predictions = [Prediction(f"{number}-{row}", "bench", str(int(result.class_index[pick])),
                                  int(result.class_index[pick]), float(result.confidence[pick]),
                                  {name: float(values[row]) for name, values in signals.items()},
                                  "2026-12-04T00:00:00.000+00:00")
                       for row, pick in enumerate(picks)]
        batches.append(PredictionBatch(predictions, signals, "bench"))
    return batches, reference


def build_monitor(reference, state: Path, with_log: bool):
    from monitord.detectors import DetectorStage
    from monitord.feedback import Feedback
    from monitord.metrics import Metrics
    from monitord.monitor.monitor import Monitor
    from monitord.plugins import load_plugins
    from monitord.predictions_log import PredictionsLog
    from monitord.settings import Settings
    from monitord.snapshots import DetectorSnapshots

    settings = Settings()
    metrics = Metrics(roles=("monitor",))
    plugins = load_plugins()
    stage = DetectorStage.build(settings.detectors, lambda kind: plugins.factory("detector", kind), reference, metrics)
    feedback = Feedback(settings.feedback, metrics)
    feedback.attach([str(i) for i in range(10)], stage)
    log = PredictionsLog(state / "predictions.jsonl", 50 << 20, 2) if with_log else None
    return Monitor(metrics, stage, feedback, DetectorSnapshots(stage, "bench"), log), log


def rate(function, encoded: list, seconds: float) -> float:
    done = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        for entry in encoded:
            function(entry)
            done += BATCH
            if time.perf_counter() - began >= seconds:
                break
    return done / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--results", action="store_true")
    arguments = parser.parse_args()
    from monitord.transport.entries import decode_entry

    batches, reference = recorded_batches(200)
    encoded = [batch.encode() for batch in batches]
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for with_log in (False, True):
            monitor, log = build_monitor(reference, Path(scratch), with_log)
            name = "apply (decode + default detectors + join + metrics" + (" + predictions log)" if with_log else ")")
            rows.append((name, rate(lambda data: monitor.apply(decode_entry(data)), encoded, arguments.seconds)))
            if log is not None:
                log.close()
        rows.append(("decode only", rate(decode_entry, encoded, arguments.seconds / 2)))
        monitor, _ = build_monitor(reference, Path(scratch), False)
        for watched in monitor.detectors.detectors:
            spec = watched.spec
            if spec.signals == ["error"]:  # labels: a 5 % error rate
                columns = [(np.random.default_rng(n).random(BATCH) < 0.05).astype(float) for n in range(len(batches))]
            else:
                columns = [np.column_stack([b.signals[s] for s in spec.signals]) if len(spec.signals) > 1
                           else b.signals[spec.signals[0]] for b in batches]
            rows.append((f"detector {spec.label} alone", rate(watched.detector.update, columns, arguments.seconds / 2)))
    table = ["| what | inferences/s |", "|---|---:|"] + [f"| {name} | {value:,.0f} |" for name, value in rows]
    report = "\n".join(table)
    print(report)
    if arguments.results:
        heading = "### Monitor capacity, the last run"
        section = (f"{heading}\n\n{utc_now()}; {machine_line()}; batches of {BATCH}, "
                   f"{arguments.seconds:g} s a row\n\n`python benchmarks/monitor_capacity.py --seconds "
                   f"{arguments.seconds:g} --results`\n\n{report}\n")
        replace_section(RESULTS, heading, section, parent="## Monitor capacity (issue 16)")


if __name__ == "__main__":
    main()
