"""The status page's buffers and what each role's ``GET /v1/status`` says it has or lacks."""

from __future__ import annotations

import io

from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from monitord.http_server import Readiness, build_app
from monitord.metrics import Metrics
from monitord.settings import StatusPageSettings
from monitord.status_page import thumbnails as thumbnails_module
from monitord.status_page.history import History, sample_of
from monitord.status_page.page import MONITOR_ONLY_IMAGES, MONITOR_ONLY_TRAFFIC, NO_MONITOR, StatusPage
from monitord.status_page.readings import Traffic
from monitord.status_page.thumbnails import MAX_SIDE, Thumbnails

STATUS = {
    "detectors": [{"name": "pht_confidence", "type": "pht", "signal": "confidence", "statistic": 3.5,
                   "threshold": 40.0, "level": "warning", "p_value": None, "samples": 10}],
    "estimated_accuracy": {"value": 0.97, "reliable": True},
    "accuracy": {"value": float("nan"), "labels": 0},
    "alerts": [{"labels": {"detector": "pht_confidence", "severity": "warning"}}],
}


def test_the_history_keeps_one_span_and_answers_what_came_after() -> None:
    history = History(sample_seconds=10, span_seconds=60)
    for second in range(0, 200, 10):
        history.add(sample_of(second, STATUS, (1.0, 0.01)))
    assert len(history) == 6  # an hour's worth of samples at most, here a minute's
    assert [s["time"] for s in history.since(0)] == [140, 150, 160, 170, 180, 190]
    assert [s["time"] for s in history.since(170)] == [180, 190] and history.since(190) == []
    sample = history.latest()
    assert sample["detectors"] == {"pht_confidence": [3.5, 40.0, 1]}
    assert sample["accuracy"] is None and sample["estimated_accuracy"] == 0.97  # NaN is null in JSON
    assert sample["images_per_second"] == 1.0 and sample["latency_seconds"] == 0.01
    assert "detectors" not in sample_of(0, None, None) and "images_per_second" not in sample_of(0, None, None)


def test_thumbnails_are_small_bounded_per_class_and_rate_limited() -> None:
    now = [0.0]
    buffer = Thumbnails(per_class=2, clock=lambda: now[0])
    big = Image.new("RGB", (640, 480), "white")
    taken = [buffer.sample(big) for _ in range(int(thumbnails_module.BURST) + 5)]
    assert sum(png is not None for png in taken) == thumbnails_module.BURST  # then the bucket is empty
    now[0] += 1.0
    assert buffer.sample(big) is not None  # refilled at RATE a second
    png = taken[0]
    assert max(Image.open(io.BytesIO(png)).size) == MAX_SIDE
    for index in range(5):
        buffer.add("cat", 0.5 + index / 10, f"t{index}", png)
    buffer.add("dog", 0.9, "t5", png)
    shown = buffer.to_json(after=0)
    assert [entry["confidence"] for entry in shown["cat"]] == [0.9, 0.8]  # newest first, two kept
    assert all(entry["src"].startswith("data:image/png;base64,") for entry in shown["cat"] + shown["dog"])
    newest = max(entry["id"] for entry in shown["cat"] + shown["dog"])
    again = buffer.to_json(after=newest)  # the page has them all: ids only, no images again
    assert all("src" not in entry for entry in again["cat"] + again["dog"])
    assert Thumbnails(per_class=0).sample(big) is None


def test_the_oldest_class_goes_once_more_classes_than_kept_were_predicted(monkeypatch) -> None:
    monkeypatch.setattr(thumbnails_module, "MAX_CLASSES", 3)
    buffer = Thumbnails(per_class=1)
    for name in ("a", "b", "c", "a", "d"):
        buffer.add(name, 1.0, "", b"png")
    assert sorted(buffer.to_json()) == ["a", "c", "d"]  # b was predicted longest ago


def test_traffic_rates_come_from_the_inference_metrics() -> None:
    metrics = Metrics(roles=("inference",))
    before = Traffic.read(metrics, now=10.0)
    metrics.images.labels(source="http", outcome="ok").inc(30)
    metrics.images.labels(source="folder", outcome="ok").inc(10)
    metrics.images.labels(source="http", outcome="rejected").inc(2)
    for _ in range(40):
        metrics.end_to_end.observe(0.02)
    after = Traffic.read(metrics, now=20.0)
    assert (after.images, after.refused) == (40, 2)
    rate, latency = after.since(before)
    assert rate == 4.0 and abs(latency - 0.02) < 1e-9
    assert Traffic.read(metrics, now=30.0).since(after) == (0.0, None)  # no image finished: no latency


def page_for(role: str, status: dict | None) -> StatusPage:
    async def monitor_status() -> dict | None:
        return status

    roles = ("inference", "monitor") if role == "all" else (role,)
    return StatusPage(StatusPageSettings(), role, Metrics(roles=roles), Readiness(), monitor_status)


async def test_the_monitor_has_no_images_and_says_so() -> None:
    page = page_for("monitor", STATUS)
    await page.sample()
    body = await page.document()
    assert body["detectors"][0]["statistic"] == 3.5 and body["alerts"] == STATUS["alerts"]
    assert body["accuracy"] == {"value": None, "labels": 0} and body["estimated_accuracy"]["value"] == 0.97
    assert "traffic" not in body and "thumbnails" not in body and page.thumbnails is None
    assert body["notes"] == {"traffic": MONITOR_ONLY_TRAFFIC, "thumbnails": MONITOR_ONLY_IMAGES}
    assert "images_per_second" not in body["history"]["samples"][0]


async def test_inference_shows_its_images_and_what_the_monitor_published() -> None:
    page = page_for("inference", None)  # no monitor has published yet
    await page.sample()
    body = await page.document()
    assert body["notes"] == {"detectors": NO_MONITOR} and "detectors" not in body
    assert body["traffic"]["images"] == 0 and body["thumbnails"] == {}
    published = page_for("inference", STATUS)
    body = await published.document()
    assert body["notes"] == {} and body["detectors"][0]["name"] == "pht_confidence" and body["alerts"]


async def test_the_one_process_daemon_has_everything() -> None:
    page = page_for("all", STATUS)
    await page.sample()
    body = await page.document(since=0)
    assert body["notes"] == {}
    assert {"detectors", "alerts", "accuracy", "estimated_accuracy", "traffic", "thumbnails"} <= set(body)
    assert len(body["history"]["samples"]) == 1
    assert (await page.document(since=body["history"]["samples"][0]["time"]))["history"]["samples"] == []


async def test_over_http_the_page_is_open_its_data_needs_the_token_and_bad_queries_say_why() -> None:
    page = page_for("all", STATUS)
    app = build_app(page.metrics, page.readiness, 1 << 20, token="t" * 16)
    page.add_routes(app)
    async with TestClient(TestServer(app)) as client:
        index = await client.get("/")
        assert index.status == 200 and "script-src 'self'" in index.headers["Content-Security-Policy"]
        assert 'src="status-page/status.js"' in await index.text()
        script = await client.get("/status-page/status.js")
        assert script.status == 200 and script.content_type == "text/javascript"
        missing = await client.get("/status-page/other.js")
        assert missing.status == 404 and "status.js" in (await missing.json())["error"]
        assert (await client.get("/v1/status")).status == 401
        auth = {"Authorization": "Bearer " + "t" * 16}
        answer = await client.get("/v1/status", headers=auth)
        assert answer.status == 200 and (await answer.json())["detectors"][0]["name"] == "pht_confidence"
        bad = (("since=yesterday", "since"), ("since=nan", "since"), ("thumbnails_after=-1", "thumbnails_after"),
               ("thumbnails_after=1.5", "thumbnails_after"))
        for query, word in bad:
            refused = await client.get("/v1/status?" + query, headers=auth)
            reason = (await refused.json())["error"]
            assert refused.status == 400 and reason.startswith(f"query {word} must be a number >= 0"), reason
