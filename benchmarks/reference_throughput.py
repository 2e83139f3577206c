"""``monitord reference DIR`` throughput, against the in-process ceiling of the same model.

For the default digits model (the 360 held-out digits written 25 times over as PNGs, 9,000 files)
and a ResNet-18 (random weights for 10 classes, ``model.transforms`` of
``ResNet18_Weights.IMAGENET1K_V1``: resize 256, crop 224; 320x240 JPEGs): the command run
as a user runs it (a subprocess; its own images/s, which leave out loading the model, and
its wall time with the start-up), and the ceiling measured in this process with the same
model object: read, decode and preprocess each image, stack, predict, one thread, the same
batch size.

    .venv/bin/python benchmarks/reference_throughput.py
    .venv/bin/python benchmarks/reference_throughput.py --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import machine_line, replace_section, trained_artifact, utc_now  # noqa: E402

HEADING = "## `monitord reference` throughput (issue 17)"
BATCH_SIZE = 64


def digits_folder(folder: Path, copies: int) -> int:
    from monitord_torchvision.digits import digit_png_bytes, held_out_digits

    images, labels = held_out_digits()
    count = 0
    for copy in range(copies):
        for index, (image, label) in enumerate(zip(images, labels)):
            target = folder / str(int(label)) / f"{copy}-{index}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(digit_png_bytes(image))
            count += 1
    return count


def photo_folder(folder: Path, per_class: int) -> int:
    """Smooth random colour fields as 320x240 JPEGs: photo-sized work for the decoder."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(10):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((320, 240), Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            (folder / str(label) / f"{index}.jpg").write_bytes(buffer.getvalue())
    return 10 * per_class


def resnet_settings(workdir: Path) -> Path:
    import torch
    import torchvision

    weights = workdir / "resnet18.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    config = workdir / "resnet18.toml"
    config.write_text(f'[model]\narchitecture = "resnet18"\nweights = "{weights}"\n'
                      f'classes = {json.dumps([str(d) for d in range(10)])}\n'
                      'transforms = "ResNet18_Weights.IMAGENET1K_V1"\n')
    return config


def ceiling(config: Path | None, env: dict[str, str], folder: Path, seconds: float) -> float:
    """Images/s of read + decode + preprocess + predict in one thread, batches of BATCH_SIZE."""
    from monitord.decode import decode_image, read_payload
    from monitord.plugins import load_plugins
    from monitord.reference import images_in_folder
    from monitord.settings import load_settings

    os.environ.update(env)
    settings = load_settings(config)
    model = load_plugins().factory("model", settings.model.type)(settings.model, settings.state_dir)
    paths = [image.source for image in images_in_folder(folder).images]
    done, started = 0, time.perf_counter()
    try:
        while time.perf_counter() - started < seconds:
            for start in range(0, len(paths), BATCH_SIZE):
                arrays = [model.preprocess(decode_image(read_payload(path), 40_000_000))
                          for path in paths[start:start + BATCH_SIZE]]
                model.predict(np.stack(arrays))
                done += len(arrays)
    finally:
        model.close()
    return done / (time.perf_counter() - started)


def command(config: Path | None, env: dict[str, str], folder: Path) -> tuple[float, float]:
    """(the command's own images/s, its wall time in seconds including start-up)."""
    args = [sys.executable, "-m", "monitord", "reference", str(folder), "--no-progress",
            "--batch-size", str(BATCH_SIZE)]
    if config is not None:
        args += ["--config", str(config)]
    started = time.perf_counter()
    done = subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"monitord reference failed:\n{done.stdout}\n{done.stderr}")
    rate = float(re.search(r"\(([\d.]+) images/s\)", done.stdout).group(1))
    return rate, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="Time for each ceiling.")
    parser.add_argument("--results", type=Path, help="Write the section into this RESULTS.md.")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="monitord-reference-bench-") as scratch:
        work = Path(scratch)
        artifact = trained_artifact(work / "digits")
        cases = [
            ("digits_cnn (8x8 gray PNGs)", None, {"MONITORD_MODEL__ARTIFACT": str(artifact),
                                                 "MONITORD_STATE_DIR": str(work / "state-digits")},
             work / "digits-images", lambda folder: digits_folder(folder, 25)),
            ("resnet18 (320x240 JPEGs, resize 256, crop 224)", resnet_settings(work),
             {"MONITORD_STATE_DIR": str(work / "state-resnet")}, work / "photos",
             lambda folder: photo_folder(folder, 20)),
        ]
        for name, config, env, folder, make in cases:
            images = make(folder)
            rate, wall = command(config, env, folder)
            best = ceiling(config, env, folder, args.seconds)
            rows.append((name, images, rate, wall, best))
            print(f"{name}: {images} images; monitord reference {rate:,.0f} images/s ({wall:.1f} s with start-up); "
                  f"ceiling {best:,.0f} images/s; {rate / best:.2f} of it", flush=True)
    section = "\n".join([
        HEADING, "",
        f"Run {utc_now()} on {machine_line()} with `benchmarks/reference_throughput.py` (batch {BATCH_SIZE}).", "",
        "| model (images) | images | `monitord reference`, images/s | wall time with start-up | ceiling, images/s | of ceiling |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {images} | {rate:,.0f} | {wall:.1f} s | {best:,.0f} | {rate / best:.2f} |"
          for name, images, rate, wall, best in rows),
        "",
        "The ceiling is one thread reading, decoding, preprocessing and predicting in a loop with the same model "
        "object; the command decodes in `pipeline.decode_workers` threads ahead of the model, so it can pass it "
        "where decoding is a large share (small images).",
        "",
        "Where the time goes (profiled 2026-12-04 on the 2-core machine, digits model, 9,000 images): decoding and "
        "preprocessing alone run at 19,500 images/s and the forward passes alone at 14,300, so one thread doing both "
        "in turn reaches 8,200; overlapped, the forward passes slow down (conv2d took 0.9 s of the run against 0.63 s "
        "alone) and the command reaches 5,400-5,900 with one or two decode threads, whatever the GIL switch interval. "
        "The ResNet-18 is bound by its forward pass, which decoding ahead does not slow.",
    ])
    if args.results is not None:
        replace_section(args.results, HEADING, section)
    print(section)


if __name__ == "__main__":
    main()
