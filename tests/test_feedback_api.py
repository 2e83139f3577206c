"""``POST /v1/feedback`` and ``GET /v1/detectors`` on the real daemon over real HTTP."""

from __future__ import annotations

import time

import aiohttp
import pytest

from daemon_process import DaemonProcess, free_port
from installed_plugin import install_testplugin
from monitord_testplugin import png

SETTINGS = """
sources = ["http"]
[model]
type = "brightness"
[feedback]
ttl_seconds = 2.0
grace_seconds = 1.0
accuracy_window = 4
min_labels = 4
max_records = 10
[[detectors]]
type = "over"
signal = "error"
name = "errors"
limit = 0.5
window = 4
[[detectors]]
type = "over"
signal = "confidence"
limit = 2.0
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The daemon, both roles in one process: a label must find its prediction the moment
    the client has the answer."""
    workdir = tmp_path_factory.mktemp("feedback")
    env = install_testplugin(workdir / "site")
    process = DaemonProcess(workdir, free_port(), extra_settings=SETTINGS, env=env)
    process.start()
    yield process
    assert process.terminate() == 0
    process.kill()


async def predict(session: aiohttp.ClientSession, server: DaemonProcess, prediction_id: str, **params: str) -> dict:
    async with session.post(server.url + "/v1/predict", data=png(250), params={"id": prediction_id, **params},
                            headers={"Content-Type": "image/png"}) as response:
        assert response.status == 200
        return await response.json()


async def feedback(session: aiohttp.ClientSession, server: DaemonProcess, body, **kwargs) -> tuple[int, dict]:
    async with session.post(server.url + "/v1/feedback", json=body, **kwargs) as response:
        return response.status, await response.json()


async def test_labels_join_predictions_and_drive_accuracy_and_the_error_detector(server: DaemonProcess) -> None:
    async with aiohttp.ClientSession() as session:
        for index in range(4):
            assert (await predict(session, server, f"b{index}"))["class"] == "bright"
        status, body = await feedback(session, server, [
            {"id": "b0", "label": "bright"}, {"id": "b1", "label": "dark"}, {"id": "nope", "label": "dark"},
            {"id": "b0", "label": "bright"}, {"id": "b2", "label": "zebra"}, {"label": "dark"},
        ])
        assert status == 200
        assert [r["outcome"] for r in body["results"]] == ["joined", "joined", "held", "duplicate", "invalid", "invalid"]
        assert [r.get("correct") for r in body["results"][:2]] == [True, False]
        assert body["counts"] == {"joined": 2, "held": 1, "duplicate": 1, "invalid": 2}
        assert "missing id" in body["results"][5]["reason"]

        status, single = await feedback(session, server, {"id": "b3", "label": "dark"})
        assert status == 200 and single == {"id": "b3", "outcome": "joined", "correct": False, "predicted": "bright"}
        status, single = await feedback(session, server, {"id": "b3", "label": "dark"})
        assert status == 409 and single["outcome"] == "duplicate"
        status, single = await feedback(session, server, {"id": "zzz", "label": 1})
        assert status == 422 and "not one of the model's classes" in single["reason"]

        # a label given with the image is scored at once; a later one is a duplicate
        await predict(session, server, "labelled", label="dark")
        assert (await feedback(session, server, {"id": "labelled", "label": "dark"}))[0] == 409

        async with session.get(server.url + "/v1/detectors") as response:
            detectors = {d["name"]: d for d in (await response.json())["detectors"]}
    # errors so far: b0 right, b1 wrong, b3 wrong, labelled wrong → mean of last 4 = 0.75
    assert detectors["errors"]["level"] == "drift" and detectors["errors"]["samples"] == 4
    assert detectors["errors"]["statistic"] == pytest.approx(0.75) and detectors["errors"]["signal"] == "error"
    assert detectors["over_confidence"]["samples"] == 5 and detectors["over_confidence"]["level"] == "ok"
    assert server.metric("monitord_accuracy") == pytest.approx(0.25)
    assert server.metric("monitord_accuracy_labels") == 4
    assert server.metric("monitord_feedback_total", outcome="joined") == 3
    assert server.metric("monitord_feedback_total", outcome="duplicate") == 3
    assert server.metric("monitord_feedback_total", outcome="invalid") == 3
    assert server.metric("monitord_drift_level", detector="errors", type="over", signal="error") == 2
    assert server.metric("monitord_drift_events_total", detector="errors", type="over", signal="error", level="drift") == 1


async def test_late_labels_are_told_apart_from_unknown_ids(server: DaemonProcess) -> None:
    async with aiohttp.ClientSession() as session:
        await predict(session, server, "old")
        time.sleep(2.5)  # feedback.ttl_seconds = 2
        status, body = await feedback(session, server, {"id": "old", "label": "bright"})
        assert status == 410 and body["outcome"] == "late" and "ttl_seconds" in body["reason"]
        unknown = server.metric("monitord_feedback_total", outcome="unknown")
        status, body = await feedback(session, server, {"id": "never-seen", "label": "bright"})
        assert status == 202 and body["outcome"] == "held"
        time.sleep(1.5)  # feedback.grace_seconds = 1: no prediction came
        await predict(session, server, "after-the-grace")  # the join looks at its held labels
        assert server.metric("monitord_feedback_total", outcome="unknown") == unknown + 1


async def test_a_label_that_comes_before_its_prediction_is_held_and_joined(server: DaemonProcess) -> None:
    async with aiohttp.ClientSession() as session:
        joined = server.metric("monitord_feedback_total", outcome="joined")
        status, body = await feedback(session, server, {"id": "early-bird", "label": "dark"})
        assert status == 202 and body["outcome"] == "held" and "feedback.grace_seconds" in body["reason"]
        await predict(session, server, "early-bird")  # bright: the held label says dark
        status, body = await feedback(session, server, {"id": "early-bird", "label": "dark"})
        assert status == 409 and body["outcome"] == "duplicate"
    assert server.metric("monitord_feedback_total", outcome="joined") == joined + 1


async def test_malformed_feedback_gets_a_clear_4xx(server: DaemonProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + "/v1/feedback", data=b"{not json",
                                headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400 and "not valid JSON" in (await response.json())["error"]
        async with session.post(server.url + "/v1/feedback", data=b"id=1&label=2",
                                headers={"Content-Type": "application/x-www-form-urlencoded"}) as response:
            assert response.status == 415 and "application/json" in (await response.json())["error"]
        status, body = await feedback(session, server, [{"id": str(i), "label": "dark"} for i in range(11)])
        assert status == 413 and "max_records" in body["error"]
        status, body = await feedback(session, server, "just a string")
        assert status == 422
