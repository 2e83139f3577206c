"""The ``mmd`` detector on the real digits model's embedding signals (issue 18).

Embeddings are computed as the daemon computes them (digit_embeddings.py): the detector
must catch each pixel corruption of monitord_torchvision.drifts, and on clean streams its
run length between false drifts must be the ERT it was calibrated to, within sampling
error and at most four times it. The daemon, given the detector on ``embedding_1`` …
``embedding_8``, must reach drift on rotated digits.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from monitord_drift.ert import run_length
from monitord_drift.mmd import OnlineMMD
from monitord_torchvision.digits import digit_png_bytes, held_out_digits
from monitord_torchvision.inference import TorchvisionModel

CORE_TESTS = Path(__file__).parents[3] / "tests"
for folder in (CORE_TESTS, Path(__file__).parent):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from daemon_process import DaemonProcess, free_port, post_multipart, wait_for  # noqa: E402
from digit_embeddings import held_out_embedding, reference_embedding  # noqa: E402

KINDS = ("rotation", "noise", "blur", "contrast", "brightness", "invert")
CLEAN_LEAD = 300
SHORT_ERT = 2000


@pytest.fixture(scope="module")
def reference(artifact_dir: Path) -> np.ndarray:
    names, rows = reference_embedding(artifact_dir)
    assert len(names) == 8
    return rows


@pytest.fixture(scope="module")
def embeddings(digits_model: TorchvisionModel, artifact_dir: Path) -> dict[str | None, np.ndarray]:
    """Held-out digits' projected embeddings, clean (None) and under each corruption."""
    return {kind: held_out_embedding(digits_model, artifact_dir, kind, seed=3) for kind in (None, *KINDS)}


@pytest.fixture(scope="module")
def fitted(reference: np.ndarray) -> OnlineMMD:
    return OnlineMMD(reference=reference)  # the defaults: window 200, ert 100,000


def test_the_held_out_digits_embed_as_the_reference_does(reference: np.ndarray, embeddings: dict) -> None:
    np.testing.assert_allclose(np.sort(embeddings[None], axis=0), np.sort(reference, axis=0), atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_it_catches_each_corruption_of_the_images(kind: str, fitted: OnlineMMD, embeddings: dict) -> None:
    rng = np.random.default_rng(KINDS.index(kind))
    clean, drifted = embeddings[None], embeddings[kind]
    rows = np.vstack([clean[rng.integers(0, len(clean), CLEAN_LEAD)], drifted[rng.integers(0, len(drifted), 1000)]])
    detector = copy.deepcopy(fitted)
    drifts = [event.index for event in detector.update(rows) if event.level == "drift"]
    assert drifts and drifts[0] >= CLEAN_LEAD, f"{kind}: drifts at {drifts}"
    assert drifts[0] - CLEAN_LEAD < 400 and detector.state.level == "drift"


def test_its_clean_run_length_is_the_ert_it_was_calibrated_to(embeddings: dict) -> None:
    """Clean streams resampled from the held-out population, each detector fitted on a
    resampled copy of it (as the real reference is one sample of the population);
    restarted after each false drift."""
    population = embeddings[None]
    rng = np.random.default_rng(7)
    alarms = evaluated = 0
    for _ in range(6):
        fitted = OnlineMMD(ert=SHORT_ERT, reference=population[rng.integers(0, len(population), len(population))])
        left = 25_000
        while left > 0:
            detector = copy.deepcopy(fitted)
            rows = population[rng.integers(0, len(population), left)]
            drifts = [event.index for event in detector.update(rows) if event.level == "drift"]
            end = drifts[0] + 1 if drifts else len(rows)
            alarms += bool(drifts)
            evaluated += max(0, end - fitted.window + 1)
            left -= end
    estimate, low, high = run_length(alarms, evaluated)
    assert alarms >= 10, f"{alarms} false drifts in {evaluated} samples: too few to judge"
    assert high >= SHORT_ERT and estimate <= 4 * SHORT_ERT, (
        f"{alarms} false drifts in {evaluated} samples: run length {estimate:.0f} ({low:.0f}-{high:.0f})"
    )
    print(f"ert {SHORT_ERT}: {alarms} false drifts in {evaluated} samples, run length {estimate:.0f} ({low:.0f}-{high:.0f})")


def rotated_then_clean_pngs(count: int) -> tuple[list[bytes], list[bytes]]:
    images, _ = held_out_digits()
    order = np.random.default_rng(1).permutation(np.resize(np.arange(len(images)), count))
    rotated = np.rot90(images, 1, axes=(1, 2))
    return (
        [digit_png_bytes(np.ascontiguousarray(images[i])) for i in order],
        [digit_png_bytes(np.ascontiguousarray(rotated[i])) for i in order],
    )


def mmd_detector(daemon: DaemonProcess) -> dict:
    with urllib.request.urlopen(daemon.url + "/v1/detectors", timeout=10) as answer:
        return next(d for d in json.loads(answer.read())["detectors"] if d["type"] == "mmd")


def test_the_daemon_reaches_drift_on_rotated_digits_through_the_embedding(tmp_path: Path, artifact_dir: Path) -> None:
    signals = ", ".join(f'"embedding_{index}"' for index in range(1, 9))
    toml = f'sources = ["http"]\ndetectors = [{{ type = "mmd", signal = [{signals}] }}]\n'
    daemon = DaemonProcess(tmp_path, free_port(), artifact=artifact_dir, extra_settings=toml,
                           env={"MONITORD_MODEL__DEVICE": "cpu"})
    clean, rotated = rotated_then_clean_pngs(400)
    daemon.start()
    try:
        state = mmd_detector(daemon)
        assert state["reference"] == "model" and state["reference_samples"] == 360 and state["ert"] == 100_000

        async def post(pngs: list[bytes]) -> None:
            async with aiohttp.ClientSession() as session:
                for start in range(0, len(pngs), 20):
                    await post_multipart(session, daemon.url, pngs[start : start + 20])

        asyncio.run(post(clean))
        wait_for(lambda: mmd_detector(daemon)["samples"] == 400, timeout=120, message="400 clean digits seen")
        assert mmd_detector(daemon)["level"] == "ok"
        asyncio.run(post(rotated))
        wait_for(lambda: mmd_detector(daemon)["level"] == "drift", timeout=120, message="drift on rotated digits")
    finally:
        daemon.kill()
