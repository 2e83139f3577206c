"""``GET /v1/status`` with the roles split over Redis: each process shows what it has and
says what it lacks. The monitor has the detectors, accuracy and alerts but sees no image;
the inference process has throughput and recent images, and the detectors as the active
monitor published them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from browser import console_errors, missing_browser, start_browser
from cluster import Cluster, Load
from daemon_process import wait_for
from digit_files import held_out_pngs
from redis_server import RedisServer
from servers import get_json

from monitord.status_page.page import MONITOR_ONLY_IMAGES, MONITOR_ONLY_TRAFFIC

IMAGES = 40
SETTINGS = """
sources = ["http"]
[[detectors]]
type = "pht"
signal = "confidence"
[status_page]
sample_seconds = 0.5
"""


def test_each_role_shows_what_it_has_and_notes_what_it_lacks(
        tmp_path: Path, redis_server: RedisServer, digits_artifact: Path) -> None:
    cluster = Cluster(tmp_path, redis_server, SETTINGS, digits_artifact)
    try:
        inference, monitor = cluster.inference_and_monitor()
        load = Load([data for _, data in held_out_pngs(IMAGES)])
        asyncio.run(load.run(inference.url, "a", IMAGES))
        assert len(load.ok()) == IMAGES, load.statuses

        def published_samples() -> int:
            status = get_json(inference.url + "/v1/status")
            return status["detectors"][0]["samples"] if "detectors" in status else 0

        wait_for(lambda: published_samples() == IMAGES, 30,
                 message="the inference node to show the published detectors")
        shown = get_json(inference.url + "/v1/status")
        assert shown["role"] == "inference" and shown["notes"] == {}
        assert shown["traffic"]["images"] == IMAGES and shown["thumbnails"]
        assert shown["alerts"] == [] and shown["accuracy"]["labels"] == 0
        assert shown["detectors"] == get_json(inference.url + "/v1/detectors")["detectors"]

        mine = get_json(monitor.url + "/v1/status")
        assert mine["role"] == "monitor"
        assert mine["notes"] == {"traffic": MONITOR_ONLY_TRAFFIC, "thumbnails": MONITOR_ONLY_IMAGES}
        assert "traffic" not in mine and "thumbnails" not in mine
        assert mine["detectors"] == get_json(monitor.url + "/v1/detectors")["detectors"]
        assert mine["detectors"][0]["samples"] == IMAGES and mine["model"]["name"] == "digits_cnn"
        if missing_browser() is None:  # the JSON above is checked either way
            page_says_what_the_monitor_lacks(monitor.url)
        for process in (inference, monitor):
            assert process.terminate() == 0
    finally:
        cluster.close()


def page_says_what_the_monitor_lacks(url: str) -> None:
    """In the browser: a note where the monitor has no data, not an empty panel."""
    driver = start_browser()
    try:
        driver.get(url + "/")
        wait_for(lambda: driver.execute_script("return document.body.dataset.painted === 'true'"),
                   message="the page's first paint with data")
        visible = driver.execute_script("""return ['traffic', 'thumbnails', 'detectors'].map(panel => {
            const note = document.getElementById(panel + '-note');
            const shown = [...document.getElementById(panel + '-panel').children]
                .filter(c => !c.hidden && !c.matches('h2, .note'));
            return [note.hidden ? null : note.textContent, shown.length]; })""")
        assert visible == [[MONITOR_ONLY_TRAFFIC, 0], [MONITOR_ONLY_IMAGES, 0], [None, 1]], visible
        assert driver.execute_script("return document.querySelectorAll('#detectors .card').length") == 1
        assert console_errors(driver) == []
    finally:
        driver.quit()
