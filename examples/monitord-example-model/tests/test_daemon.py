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


def settings(centroid_file: Path, cusum_keys: str = "") -> str:
    return f"""
sources = ["http"]
[model]
type = "nearest_centroid"
centroids = "{centroid_file}"
[[detectors]]
type = "cusum"
name = "distance_cusum"
signal = "distance"
{cusum_keys}
"""


@pytest.fixture
def example_daemon(tmp_path: Path, centroid_file: Path):
    process = DaemonProcess(tmp_path, free_port(), extra_settings=settings(centroid_file))
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


def test_a_snapshot_the_detector_refuses_is_set_aside_and_the_detector_starts_fresh(
    tmp_path: Path, centroid_file: Path, digits
) -> None:
    images, _ = digits
    first = DaemonProcess(tmp_path, free_port(), extra_settings=settings(centroid_file))
    try:
        first.start()
        for pixels in images[TRAINING_IMAGES:][:30]:
            post(first, png_bytes(digit_image(pixels)))
        wait_for(lambda: cusum_state(first)["samples"] == 30, message="the images at the detector")
        assert first.terminate() == 0  # a snapshot at shutdown
    finally:
        first.kill()
    snapshot = json.loads((first.state / "detectors.json").read_text())
    assert snapshot["detectors"]["distance_cusum"]["state"]["samples"] == 30

    # Same name, type and signal, other parameters: the core offers the snapshot, cusum refuses it.
    second = DaemonProcess(tmp_path, free_port(), extra_settings=settings(centroid_file, "threshold = 14.0"))
    try:
        second.start()
        wait_for(lambda: list(second.state.glob("detectors.json.incompatible-*")), message="the snapshot set aside")
        state = cusum_state(second)
        assert (state["samples"], state["threshold"], state["ready"]) == (0, 14.0, True)
        assert "does not fit distance_cusum (ValueError: snapshot was taken with parameters" in second.log()
        (aside,) = second.state.glob("detectors.json.incompatible-*")
        assert json.loads(aside.read_text()) == snapshot
    finally:
        second.kill()
