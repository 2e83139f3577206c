"""``monitord_estimated_accuracy`` in the running daemon: /metrics and GET /v1/detectors after
images are posted, and marked unreliable once the input detectors see inverted digits."""

from __future__ import annotations

import math

import aiohttp
from daemon_process import post_multipart, wait_for
from servers import get_json

from monitord_torchvision.digits import digit_png_bytes, held_out_digits
from monitord_torchvision.drifts import drift_image

WINDOW = 100
PER_REQUEST = 20


def pngs(count: int, invert: bool = False) -> list[bytes]:
    images, _ = held_out_digits()
    return [digit_png_bytes(drift_image(images[i % len(images)], "invert") if invert else images[i % len(images)])
            for i in range(count)]


async def test_the_estimate_appears_in_metrics_and_the_api_and_goes_unreliable_on_inverted_digits(daemon) -> None:
    server = daemon(f"[estimated_accuracy]\nwindow = {WINDOW}\n")
    status = get_json(server.url + "/v1/detectors")["estimated_accuracy"]
    assert status["value"] is None and status["note"] == f"waiting for {WINDOW} predictions"
    assert math.isnan(server.metric("monitord_estimated_accuracy"))
    reference_accuracy = server.metric("monitord_reference_accuracy")
    assert 0.9 < reference_accuracy <= 1.0

    async with aiohttp.ClientSession() as session:
        clean = pngs(WINDOW)
        for start in range(0, WINDOW, PER_REQUEST):
            await post_multipart(session, server.url, clean[start:start + PER_REQUEST])
        wait_for(lambda: not math.isnan(server.metric("monitord_estimated_accuracy")), timeout=60,
                 message="monitord_estimated_accuracy to become a number")
        estimate = server.metric("monitord_estimated_accuracy")
        # Clean held-out digits are the reference's own images: the estimate is its accuracy.
        assert abs(estimate - reference_accuracy) < 0.03
        assert server.metric("monitord_estimated_accuracy_reliable") == 1
        status = get_json(server.url + "/v1/detectors")["estimated_accuracy"]
        assert status["value"] == estimate and status["reliable"] is True
        assert status["window"] == WINDOW and status["predictions"] == WINDOW
        assert status["reference_accuracy"] == reference_accuracy

        # Inverted digits: the model is confidently wrong, the input detectors see it.
        inverted = pngs(600, invert=True)
        sent = 0
        while server.metric("monitord_estimated_accuracy_reliable") == 1:
            assert sent < len(inverted), "no input detector reached drift on 600 inverted digits"
            await post_multipart(session, server.url, inverted[sent:sent + PER_REQUEST])
            sent += PER_REQUEST
        wait_for(lambda: get_json(server.url + "/v1/detectors")["estimated_accuracy"]["reliable"] is False,
                 timeout=30, message="/v1/detectors to publish the unreliable estimate")
        status = get_json(server.url + "/v1/detectors")["estimated_accuracy"]
        assert "confidently wrong" in status["note"]
        # It names the input detector that drifted (one with a drift event counted).
        drifted = {dict(labels)["detector"] for (name, labels), value in server.metrics().items()
                   if name == "monitord_drift_events_total" and dict(labels)["level"] == "drift" and value > 0}
        assert drifted and any(detector in status["note"] for detector in drifted), (drifted, status["note"])
    assert server.terminate() == 0
