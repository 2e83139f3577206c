"""A detector calibrated to an expected run time says so in ``GET /v1/detectors``.

The real daemon (the test plugin's ``brightness`` model, monitord-drift's detectors): PHT on
the model's reference and IKS on a reference from the stream, both with ``ert``, report it
and the thresholds calibrated for it; the calibration is kept in the state folder's
reference cache, so a restart does not simulate again. A detector without ``ert`` reports
none.
"""

from __future__ import annotations

import json
import math
import urllib.request

import pytest

from daemon_process import DaemonProcess, free_port, wait_for
from installed_plugin import install_testplugin
from monitord_testplugin import png

SETTINGS = """
sources = ["http"]
[model]
type = "brightness"
[[detectors]]
type = "pht"
signal = "confidence"
ert = 5000
[[detectors]]
type = "iks"
signal = "brightness"
reference = "stream"
reference_size = 20
window = 10
ert = 5000
[[detectors]]
type = "pht"
signal = "brightness"
reference = "stream"
reference_size = 20
"""


@pytest.fixture
def server(tmp_path):
    process = DaemonProcess(tmp_path, free_port(), extra_settings=SETTINGS, env=install_testplugin(tmp_path / "site"))
    process.start()
    yield process
    process.kill()


def detectors(server: DaemonProcess) -> dict[str, dict]:
    with urllib.request.urlopen(server.url + "/v1/detectors", timeout=5) as response:
        return {d["name"]: d for d in json.load(response)["detectors"]}


def test_ert_is_reported_with_the_thresholds_calibrated_for_it(server: DaemonProcess) -> None:
    for level in [40, 200, 60, 220, 90, 150] * 6:
        request = urllib.request.Request(server.url + "/v1/predict", data=png(level),
                                         headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    wait_for(lambda: detectors(server)["iks_brightness"]["samples"] >= 36, timeout=60, message="36 samples")
    found = detectors(server)
    pht, iks, plain = found["pht_confidence"], found["iks_brightness"], found["pht_brightness"]
    assert pht["ert"] == 5000 and iks["ert"] == 5000 and plain["ert"] is None
    assert math.isfinite(pht["threshold"]) and 0 < pht["warning_threshold"] < pht["threshold"] != 20.0
    assert iks["ready"] and 0 < iks["warning_threshold"] <= iks["threshold"] <= 1.0
    assert plain["threshold"] == 20.0
    cached = sorted(path.name.split("-")[0] for path in (server.state / "reference-cache").glob("*.npy"))
    assert cached == ["iks", "pht"], cached
