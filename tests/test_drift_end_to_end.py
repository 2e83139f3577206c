"""The default detector set on the default model: quiet on clean digits, drift on rotated ones.

1,000 clean held-out digits, then 1,000 rotated by 90 degrees, posted in order over HTTP
in small multipart batches. No detector may reach drift on the clean part; PHT, IKS and
NM-DDM must each reach drift within 300 images of the change.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import numpy as np
import pytest

from daemon_process import DaemonProcess, free_port, post_multipart
from monitord_torchvision.digits import digit_png_bytes, held_out_digits

PER_REQUEST = 20
CLEAN = ROTATED = 1000


def stream(rotate: bool, count: int) -> list[bytes]:
    images, _ = held_out_digits()
    order = np.random.default_rng(1).permutation(np.resize(np.arange(len(images)), count))
    if rotate:
        images = np.rot90(images, 1, axes=(1, 2))
    return [digit_png_bytes(np.ascontiguousarray(images[i])) for i in order]


async def drift_levels(session: aiohttp.ClientSession, url: str) -> dict[str, str]:
    async with session.get(url + "/v1/detectors") as response:
        return {d["type"]: d for d in (await response.json())["detectors"]}


@pytest.fixture
def server(tmp_path: Path, digits_artifact: Path):
    process = DaemonProcess(tmp_path, free_port(), artifact=digits_artifact, extra_settings='sources = ["http"]\n')
    process.start()
    yield process
    process.kill()


async def test_default_detectors_stay_quiet_on_clean_digits_and_catch_rotation(server: DaemonProcess) -> None:
    first_drift: dict[str, int] = {}
    async with aiohttp.ClientSession() as session:
        for phase, pngs in (("clean", stream(False, CLEAN)), ("rotated", stream(True, ROTATED))):
            for start in range(0, len(pngs), PER_REQUEST):
                await post_multipart(session, server.url, pngs[start:start + PER_REQUEST])
                events = {
                    kind: server.metric("monitord_drift_events_total", detector=d["name"], type=kind,
                                        signal=d["signal"], level="drift")
                    for kind, d in (await drift_levels(session, server.url)).items()
                }
                if phase == "clean":
                    assert not any(events.values()), f"drift on clean data after {start + PER_REQUEST} images: {events}"
                else:
                    for kind, count in events.items():
                        if count and kind not in first_drift:
                            first_drift[kind] = start + PER_REQUEST
        detectors = await drift_levels(session, server.url)
    assert detectors["pht"]["samples"] == CLEAN + ROTATED
    assert detectors["bernoulli_cusum"]["samples"] == 0  # no labels were given
    for kind in ("pht", "iks", "nm_ddm"):
        assert kind in first_drift, f"{kind} never reached drift: {detectors[kind]}"
        assert first_drift[kind] <= 300, f"{kind} reached drift only {first_drift[kind]} images after the change"
    print("images after the change until drift:", first_drift)
