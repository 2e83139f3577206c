"""Bring your own model and data, end to end, as the README's "Your own model" walks it.

A folder of labelled images (the digits, rendered 32x32 in RGB: not the 8x8 gray images
of the default model) in ``train/`` and ``val/``, ``monitord train --data`` training a
ResNet-18 from random weights on the CPU, the daemon serving the artifact it wrote with
``model.artifact`` alone: the detectors' reference is the validation images, those images
sent again (in another order) raise no warning, and the same images rotated reach drift.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image

from daemon_process import DaemonProcess, free_port, post_multipart
from monitord_torchvision.digits import digits_split

SIZE = 32
TRAIN_PER_CLASS, VAL_PER_CLASS = 64, 16
PER_REQUEST = 20


def rendered(pixels: np.ndarray) -> bytes:
    """One 8x8 digit as a SIZE x SIZE RGB PNG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BILINEAR).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def write_dataset(folder: Path) -> list[np.ndarray]:
    """``folder/train/<digit>/`` and ``folder/val/<digit>/``; the validation digits' pixels."""
    split = digits_split()
    validation = []
    for digit in range(10):
        chosen = np.flatnonzero(split.train_labels == digit)[:TRAIN_PER_CLASS + VAL_PER_CLASS]
        for n, index in enumerate(chosen):
            part = "train" if n < TRAIN_PER_CLASS else "val"
            (folder / part / str(digit)).mkdir(parents=True, exist_ok=True)
            (folder / part / str(digit) / f"{n:03d}.png").write_bytes(rendered(split.train_images[index]))
            if part == "val":
                validation.append(split.train_images[index])
    return validation


def stream(images: list[np.ndarray], rotate: bool) -> list[bytes]:
    """``images`` in a seeded order, upright or turned 90 degrees."""
    order = np.random.default_rng(1).permutation(len(images))
    return [rendered(np.ascontiguousarray(np.rot90(images[i]) if rotate else images[i])) for i in order]


async def detectors(session: aiohttp.ClientSession, url: str) -> dict[str, dict]:
    async with session.get(url + "/v1/detectors") as response:
        return {d["type"]: d for d in (await response.json())["detectors"]}


def events(server: DaemonProcess, found: dict[str, dict], level: str) -> dict[str, float]:
    return {kind: server.metric("monitord_drift_events_total", detector=d["name"], type=kind, signal=d["signal"],
                                level=level) for kind, d in found.items()}


async def test_a_resnet18_trained_on_a_folder_is_watched_against_its_validation_images(tmp_path: Path) -> None:
    data, artifact = tmp_path / "digits", tmp_path / "model"
    validation_images = write_dataset(data)
    env = {key: value for key, value in os.environ.items() if not key.startswith("MONITORD_")}
    env.update(MONITORD_MODEL__ARCHITECTURE="resnet18", MONITORD_MODEL__INPUT_SIZE=f"[{SIZE}, {SIZE}]",
               MONITORD_MODEL__DEVICE="cpu")
    trained = subprocess.run([sys.executable, "-m", "monitord", "train", "--data", str(data), "--output",
                              str(artifact), "--epochs", "4", "--seed", "0", "--no-progress"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    metadata = json.loads((artifact / "metadata.json").read_text())
    validation = metadata["held_out_samples"]
    assert validation == 10 * VAL_PER_CLASS == len(validation_images)
    reference = json.loads((artifact / "reference" / "reference.json").read_text())
    assert reference["samples"] == validation and reference["accuracy"] == metadata["held_out_accuracy"]

    # Served with model.artifact alone: the architecture, classes and preprocessing are the artifact's.
    server = DaemonProcess(tmp_path, free_port(), artifact=artifact, extra_settings='sources = ["http"]\n')
    server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/readyz") as response:
                ready = await response.json()
            assert ready["reference"]["source"] == "artifact" and ready["reference"]["samples"] == validation
            found = await detectors(session, server.url)
            for kind in ("pht", "iks", "nm_ddm"):
                assert found[kind]["reference"] == "model" and found[kind]["reference_samples"] == validation

            clean = stream(validation_images, rotate=False)
            for start in range(0, len(clean), PER_REQUEST):
                await post_multipart(session, server.url, clean[start:start + PER_REQUEST])
            found = await detectors(session, server.url)
            assert found["pht"]["samples"] == len(clean)
            raised = {level: events(server, found, level) for level in ("warning", "drift")}
            assert not any(raised["warning"].values()) and not any(raised["drift"].values()), raised
            assert all(d["level"] == "ok" for d in found.values()), found

            rotated = stream(validation_images, rotate=True)
            for start in range(0, len(rotated), PER_REQUEST):
                await post_multipart(session, server.url, rotated[start:start + PER_REQUEST])
            found = await detectors(session, server.url)
            drifted = {kind for kind, count in events(server, found, "drift").items() if count}
            assert drifted, f"no detector reached drift on {len(rotated)} rotated images: {found}"
            print("reached drift on rotated images:", sorted(drifted))
    finally:
        server.kill()
