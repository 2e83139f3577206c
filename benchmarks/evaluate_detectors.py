"""The scenario table users choose detectors from (issue 18, item 6): ``monitord evaluate``
on the digits model, with the default detectors plus hddm_a on ``error`` (the default before
issue 18) and mmd on the embedding signals.

    python benchmarks/evaluate_detectors.py [--artifact DIR] [--streams 20] [--json FILE]

Trains the digits model into a temporary folder unless --artifact names one, runs the
command as a user would (settings through MONITORD_* variables), and prints a markdown
table for benchmarks/RESULTS.md ("Choosing detectors: scenarios (issue 18)"): per scenario
the true accuracy and, per detector, streams detected, median and p90 delay in images;
then each detector's false alarms on the clean streams.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import REPO, trained_artifact
from monitord.settings import DetectorSpec, default_detectors

#: Evaluated beside the default set: the error detector it replaced, and the embedding detector
#: for models whose reference has an embedding.
EXTRA = [DetectorSpec(type="hddm_a", signal="error"),
         DetectorSpec(type="mmd", signal=[f"embedding_{k}" for k in range(1, 9)], name="mmd_embedding")]


def detectors_setting() -> list[dict]:
    specs = [*default_detectors(), *EXTRA]
    return [spec.model_dump(exclude_none=True) for spec in specs]


def run(artifact: Path, state: Path, streams: int, json_file: Path) -> float:
    environment = {**os.environ, "MONITORD_MODEL__ARTIFACT": str(artifact), "MONITORD_STATE_DIR": str(state),
                   "MONITORD_DETECTORS": json.dumps(detectors_setting())}
    command = [sys.executable, "-m", "monitord", "evaluate", "--no-progress", "--streams", str(streams),
               "--json", str(json_file)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=environment)
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started


def cell(record: dict) -> str:
    if record["detected"] == 0:
        return f"0/{record['streams']}"
    median = "–" if record["delay_median"] is None else f"{record['delay_median']:g}"
    p90 = "–" if record["delay_p90"] is None else f"{record['delay_p90']:g}"
    return f"{record['detected']}/{record['streams']} · {median} · {p90}"


def table(document: dict) -> list[str]:
    records = document["records"]
    detectors = list(dict.fromkeys(record["detector"] for record in records))
    scenarios = list(dict.fromkeys(record["scenario"] for record in records))
    by = {(record["scenario"], record["detector"]): record for record in records}
    lines = ["| scenario | accuracy | estimated | " + " | ".join(detectors) + " |",
             "|---|---:|---:|" + "---|" * len(detectors)]
    for scenario in scenarios:
        first = by[(scenario, detectors[0])]
        estimated = first.get("estimated_accuracy")
        lines.append(f"| {scenario} | {first['accuracy']:.1%} | "
                     + ("–" if estimated is None else f"{estimated:.1%}") + " | "
                     + " | ".join(cell(by[(scenario, d)]) for d in detectors) + " |")
    first = by[(scenarios[0], detectors[0])]
    lines.append(f"| **clean: false alarms** ({first['streams']} × {first['clean_images'] + first['drifted_images']}"
                 f" images) | {first['clean_accuracy']:.1%} | | "
                 + " | ".join(f"{by[(scenarios[0], d)]['false_alarms']} "
                              f"({by[(scenarios[0], d)]['false_alarms_per_1000']:.3f} per 1,000)" for d in detectors)
                 + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, help="the digits model's artifact (default: trained afresh)")
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--json", type=Path, help="keep the command's records here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="evaluate-detectors-") as scratch:
        folder = Path(scratch)
        artifact = args.artifact or trained_artifact(folder / "model")
        json_file = args.json or folder / "records.json"
        load_before = os.getloadavg()[0]
        seconds = run(artifact, folder / "state", args.streams, json_file)
        load_after = os.getloadavg()[0]
        document = json.loads(json_file.read_text())
    print(f"`python benchmarks/evaluate_detectors.py`, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
          f"{platform.machine()}, {os.cpu_count()} cores, load average {load_before:.1f} before, "
          f"{load_after:.1f} after; the command took {seconds:.1f} s ({document['about']['seconds']} s inside, "
          "model loading included)\n")
    for line in table(document):
        print(line)


if __name__ == "__main__":
    main()
