"""The estimated accuracy with the roles split over Redis: the monitor computes it from the
batches' confidences in the stream (it never loads the model) and every node shows it."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from cluster import Cluster, Load
from daemon_process import wait_for
from digit_files import held_out_pngs
from redis_server import RedisServer
from servers import get_json

WINDOW = 100
SETTINGS = f"""
sources = ["http"]
[[detectors]]
type = "pht"
signal = "confidence"
[estimated_accuracy]
window = {WINDOW}
"""


def test_the_monitor_role_estimates_accuracy_from_the_stream_and_the_inference_node_shows_it(
        tmp_path: Path, redis_server: RedisServer, digits_artifact: Path) -> None:
    cluster = Cluster(tmp_path, redis_server, SETTINGS, digits_artifact)
    try:
        inference, monitor = cluster.inference_and_monitor()
        load = Load([data for _, data in held_out_pngs(WINDOW)])
        asyncio.run(load.run(inference.url, "a", WINDOW))
        assert len(load.ok()) == WINDOW, load.statuses
        wait_for(lambda: not math.isnan(monitor.metric("monitord_estimated_accuracy")), 60,
                 message="the monitor's monitord_estimated_accuracy to become a number")
        estimate = monitor.metric("monitord_estimated_accuracy")
        reference_accuracy = monitor.metric("monitord_reference_accuracy")
        assert 0.9 < reference_accuracy <= 1.0 and abs(estimate - reference_accuracy) < 0.03
        assert monitor.metric("monitord_estimated_accuracy_reliable") == 1
        # The inference process exports none of it (the monitor's metrics) ...
        assert ("monitord_estimated_accuracy", ()) not in inference.metrics()
        # ... and shows what the active monitor published.
        wait_for(lambda: (get_json(inference.url + "/v1/detectors").get("estimated_accuracy") or {}).get("value")
                 == estimate, 30, message="the published estimate on the inference node")
        shown = get_json(inference.url + "/v1/detectors")["estimated_accuracy"]
        assert shown["reliable"] is True and shown["window"] == WINDOW and shown["predictions"] == WINDOW
        for process in (inference, monitor):
            assert process.terminate() == 0
    finally:
        cluster.close()
