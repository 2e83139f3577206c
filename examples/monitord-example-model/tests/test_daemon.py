"""Both examples in the real daemon: ``model.type = "nearest_centroid"`` watched by a ``cusum``
detector, images posted over HTTP, drift seen in ``GET /v1/detectors`` and ``/metrics``."""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path

import pytest
from daemon_process import DaemonProcess, free_port, wait_for
from example_digits import TRAINING_IMAGES, digit_image, png_bytes
from servers import get_json


def post(process: DaemonProcess, data: bytes) -> dict:
    request = urllib.request.Request(process.url + "/v1/predict", data=data, headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def cusum_state(process: DaemonProcess) -> dict:
    (state,) = [d for d in get_json(process.url + "/v1/detectors")["detectors"] if d["name"] == "distance_cusum"]
    return state


@pytest.fixture
def example_daemon(tmp_path: Path, centroid_file: Path):
    settings = f"""
sources = ["http"]
[model]
type = "nearest_centroid"
centroids = "{centroid_file}"
[[detectors]]
type = "cusum"
name = "distance_cusum"
signal = "distance"
"""
    process = DaemonProcess(tmp_path, free_port(), extra_settings=settings)
    process.start()
    yield process
    process.kill()


def test_the_example_model_and_detector_find_drift_in_the_running_daemon(
    example_daemon: DaemonProcess, centroid_file: Path, digits
) -> None:
    images, targets = digits
    held_out = len(json.loads(centroid_file.read_text())["reference"])
    state = cusum_state(example_daemon)
    assert (state["type"], state["signal"], state["samples"], state["level"]) == ("cusum", "distance", 0, "ok")
    assert state["ready"] and state["reference_samples"] == held_out  # the model's reference, not the stream

    clean = 100
    answers = [post(example_daemon, png_bytes(digit_image(pixels))) for pixels in images[TRAINING_IMAGES:][:clean]]
    assert all(set(answer["signals"]) == {"confidence", "margin", "distance", "predicted_class"} for answer in answers)
    right = sum(answer["class"] == str(target) for answer, target in zip(answers, targets[TRAINING_IMAGES:]))
    assert right > 0.75 * clean
    wait_for(lambda: cusum_state(example_daemon)["samples"] == clean, message="the clean images at the detector")
    state = cusum_state(example_daemon)
    assert state["level"] == "ok" and not math.isnan(state["statistic"]) and state["statistic"] < state["threshold"]

    for pixels in images[-60:]:
        post(example_daemon, png_bytes(digit_image(pixels, inverted=True)))
    wait_for(lambda: cusum_state(example_daemon)["samples"] == clean + 60, message="the inverted images")
    state = cusum_state(example_daemon)
    assert state["level"] == "drift" and state["statistic"] > state["threshold"]
    labels = {"detector": "distance_cusum", "type": "cusum", "signal": "distance"}
    assert example_daemon.metric("monitord_drift_events_total", **labels, level="drift") == 1
    assert example_daemon.metric("monitord_drift_level", **labels) == 2
