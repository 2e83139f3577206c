"""A detector that cannot decide yet says so in ``GET /v1/detectors`` and in ``/metrics``.

The real daemon (the test plugin's ``brightness`` model, monitord-drift's detectors) after
a handful of images: IKS is still collecting its reference from the stream and PHT still
waits for its first ``min_samples``. Each says ``ready: false`` and how many samples it
still needs, and reports no statistic (``null``; NaN in the gauge), so that neither a
reader nor the demo's plot compares a statistic of 4 values with the threshold of a full
test.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request

import pytest

from daemon_process import DaemonProcess, free_port
from installed_plugin import install_testplugin
from monitord_testplugin import png

SETTINGS = """
sources = ["http"]
[model]
type = "brightness"
[[detectors]]
type = "iks"
signal = "brightness"
reference = "stream"
reference_size = 20
window = 10
alpha = 0.05
[[detectors]]
type = "iks"
signal = "confidence"
window = 10
alpha = 0.05
[[detectors]]
type = "pht"
signal = "confidence"
min_samples = 30
[[detectors]]
type = "hddm_a"
signal = "error"
"""


@pytest.fixture
def server(tmp_path):
    process = DaemonProcess(tmp_path, free_port(), extra_settings=SETTINGS, env=install_testplugin(tmp_path / "site"))
    process.start()
    yield process
    process.kill()


def post_images(server: DaemonProcess, levels: list[int]) -> None:
    for level in levels:
        request = urllib.request.Request(server.url + "/v1/predict", data=png(level),
                                         headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200


def detectors_after(server: DaemonProcess, samples: int) -> dict[str, dict]:
    """``GET /v1/detectors`` once the IKS detector has seen ``samples`` values."""
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(server.url + "/v1/detectors", timeout=5) as response:
            found = {d["name"]: d for d in json.load(response)["detectors"]}
        if found["iks_brightness"]["samples"] >= samples or time.monotonic() > deadline:
            assert found["iks_brightness"]["samples"] == samples, found
            return found
        time.sleep(0.05)


def test_not_ready_detectors_say_so_and_report_no_statistic(server: DaemonProcess) -> None:
    post_images(server, [40, 200, 60, 220])
    found = detectors_after(server, 4)
    iks, pht, hddm = found["iks_brightness"], found["pht_confidence"], found["hddm_a_error"]
    # IKS from the stream: 16 more for its reference, then a window of 10.
    assert (iks["ready"], iks["samples_needed"], iks["reference_samples"]) == (False, 26, 0)
    assert iks["statistic"] is None and iks["p_value"] is None and iks["level"] == "ok"
    assert iks["threshold"] > 0
    # IKS on the model's reference (the case): 4 of its window of 10 so far.
    model_iks = found["iks_confidence"]
    assert (model_iks["ready"], model_iks["samples_needed"], model_iks["reference_samples"]) == (False, 6, 4)
    assert model_iks["statistic"] is None and model_iks["p_value"] is None
    # PHT has the model's reference (4 values); its test runs from the 30th sample.
    assert (pht["ready"], pht["samples_needed"], pht["reference_samples"]) == (False, 26, 4)
    assert pht["statistic"] is None
    # HDDM_A has had no label at all.
    assert (hddm["ready"], hddm["samples_needed"], hddm["samples"]) == (False, 30, 0)
    statistic = server.metric("monitord_drift_statistic", detector="iks_confidence", type="iks", signal="confidence")
    assert math.isnan(statistic)

    # The demo draws each detector from /metrics as statistic / threshold: nothing while
    # it is not ready.
    from monitord_torchvision.demo_daemon import parse_metrics

    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
        reading = parse_metrics(response.read().decode(), time.time(), source="http").detectors["iks_confidence"]
    assert math.isnan(reading.statistic / reading.threshold)

    post_images(server, [40, 200] * 13)
    found = detectors_after(server, 30)
    for name in ("iks_brightness", "iks_confidence", "pht_confidence"):
        assert (found[name]["ready"], found[name]["samples_needed"]) == (True, 0), found[name]
        assert found[name]["statistic"] is not None
    assert 0.0 <= found["iks_brightness"]["p_value"] <= 1.0
