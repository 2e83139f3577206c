"""Throughput and latency of the daemon end to end, against the ceiling measured in the same run.

The ceiling is what one process does in a tight loop with the same images, decoder,
model and detectors and the best batch size: decode + preprocess each image, stack,
predict, feed the default detectors. The end-to-end figures are the real daemon
(``python -m monitord run``, default model and detector set) driven by a load generator
in a separate process on loopback:

- ``raw``: one image per ``POST /v1/predict`` request;
- ``multipart``: 32 images per request;
- ``folder``: files renamed into the inbox (atomic drops); a file's latency is the time
  from its drop to the write of its prediction JSON in ``processed/``. Its capacity is a
  burst measured after a first burst of 1,000 files that is not.

For each: capacity (closed loop, enough concurrency to keep the daemon busy), latency at
light load (one request or file at a time) and at 80 % of the measured capacity (open
loop: requests start on schedule whether or not earlier ones finished). Every figure is
also given as a ratio to the ceiling, since absolute times on a shared machine drift.

    .venv/bin/python benchmarks/throughput.py                   # everything, ~4 minutes
    .venv/bin/python benchmarks/throughput.py --modes raw --seconds 5
    .venv/bin/python benchmarks/throughput.py --results benchmarks/RESULTS.md  # its last run in full
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Daemon, machine_line, replace_section, trained_artifact, utc_now  # noqa: E402

MULTIPART_SIZE = 32
HEADING = "## Throughput and latency (issue 6)"
#: ``--results`` replaces this part of the section only: the rest is the history of changes.
LAST_RUN_HEADING = "### The last run in full"


# -- the images ----------------------------------------------------------------------------


def digit_pngs() -> list[tuple[int, bytes]]:
    """The 360 held-out digits as PNG files, the images the daemon receives."""
    from monitord_torchvision.digits import digit_png_bytes, digits_to_uint8, held_out_digits

    images, labels = held_out_digits()
    pixels = images if images.dtype == "uint8" else digits_to_uint8(images)
    return [(int(label), digit_png_bytes(image)) for image, label in zip(pixels, labels)]


# -- the ceiling -----------------------------------------------------------------------------


def measure_ceiling(artifact: Path, pngs: list[bytes], seconds: float, batch_sizes: list[int]) -> dict[str, Any]:
    """Images/s of decode + preprocess + model + detectors in one loop, per batch size."""
    import numpy as np

    from monitord.decode import decode_image
    from monitord.detectors import DetectorStage
    from monitord.metrics import Metrics
    from monitord.plugins import load_plugins
    from monitord.settings import ModelSettings, PipelineSettings, default_detectors

    plugins = load_plugins()
    state = Path(tempfile.mkdtemp(prefix="monitord-ceiling-"))
    model = plugins.factory("model", "torchvision")(ModelSettings(artifact=artifact), state)
    cap = PipelineSettings().max_image_pixels
    rates: dict[int, float] = {}
    for batch_size in batch_sizes:
        stage = DetectorStage.build(default_detectors(), lambda kind: plugins.factory("detector", kind),
                                    model.reference_signals, Metrics())
        done, index = 0, 0
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            chunk = [pngs[(index + i) % len(pngs)] for i in range(batch_size)]
            index += batch_size
            arrays = [model.preprocess(decode_image(data, cap)) for data in chunk]
            result = model.predict(np.stack(arrays))
            stage.update(result.signals)
            done += batch_size
        rates[batch_size] = done / (time.perf_counter() - began)
    model.close()
    best = max(rates, key=rates.get)
    return {"per_batch_size": rates, "best_batch_size": best, "images_per_second": rates[best]}


# -- HTTP load -------------------------------------------------------------------------------


def multipart_body(pngs: list[bytes], boundary: str) -> bytes:
    parts = []
    for index, data in enumerate(pngs):
        parts.append(
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{index}.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _http_phase(url: str, mode: str, pngs: list[bytes], kind: str, seconds: float,
                      concurrency: int, rate: float) -> dict[str, Any]:
    """One phase: ``closed`` (``concurrency`` clients back to back), ``light`` (one at a
    time) or ``open`` (``rate`` requests/s on schedule)."""
    import aiohttp

    boundary = uuid.uuid4().hex
    if mode == "multipart":
        bodies = [multipart_body([pngs[(i * MULTIPART_SIZE + j) % len(pngs)] for j in range(MULTIPART_SIZE)],
                                 boundary) for i in range(16)]
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        per_request = MULTIPART_SIZE
    else:
        bodies = pngs
        headers = {"Content-Type": "image/png"}
        per_request = 1
    latencies: list[float] = []
    refused = 0
    errors: list[str] = []
    counter = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal counter, refused
        body = bodies[counter % len(bodies)]
        counter += 1
        started = time.perf_counter()
        try:
            async with session.post(url + "/v1/predict", data=body, headers=headers) as response:
                await response.read()
                if response.status == 200:
                    latencies.append(time.perf_counter() - started)
                elif response.status in (429, 503):
                    refused += 1
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                else:
                    errors.append(f"status {response.status}")
        except aiohttp.ClientError as error:
            errors.append(type(error).__name__)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await one(session)  # warm the connection and the daemon
        latencies.clear()
        began = time.perf_counter()
        deadline = began + seconds
        if kind == "closed" or kind == "light":
            async def client() -> None:
                while time.perf_counter() < deadline:
                    await one(session)

            await asyncio.gather(*(client() for _ in range(concurrency if kind == "closed" else 1)))
        else:
            tasks = []
            interval = 1.0 / rate
            next_at = began
            while next_at < deadline:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(session)))
                next_at += interval
            await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
    return {
        "images_per_second": len(latencies) * per_request / elapsed,
        "requests_per_second": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "requests": len(latencies),
        "refused": refused,
        "errors": errors[:5],
        "error_count": len(errors),
    }


def _http_worker(url: str, mode: str, pngs: list[bytes], kind: str, seconds: float, concurrency: int,
                 rate: float, out: Any) -> None:
    out.put(asyncio.run(_http_phase(url, mode, pngs, kind, seconds, concurrency, rate)))


# -- folder load -----------------------------------------------------------------------------


def _folder_worker(inbox: str, processed: str, pngs: list[tuple[int, bytes]], kind: str, seconds: float,
                   rate: float, count: int, out: Any) -> None:
    """Drop files atomically (write beside the inbox, rename in); latency from the drop to
    the prediction JSON's write, read from its modification time."""
    inbox_path, processed_path = Path(inbox), Path(processed)
    staging = inbox_path.parent / "staging"
    staging.mkdir(exist_ok=True)
    run = uuid.uuid4().hex[:6]
    dropped: dict[str, float] = {}

    # What a producer does, and no more: write the file beside the inbox, rename it in. The
    # generator shares the cores with the daemon, so every system call it saves (a file
    # object's extra ones, a mkdir per file) is time the daemon gets.
    for label in {label for label, _ in pngs}:
        (inbox_path / str(label)).mkdir(exist_ok=True)
    staging_prefix, inbox_prefix = f"{staging}/{run}-", f"{inbox_path}/"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC

    def drop(index: int) -> str:
        label, data = pngs[index % len(pngs)]
        name = f"{label}/{kind}-{run}-{index:06}.png"
        temporary = f"{staging_prefix}{index}.png"
        fd = os.open(temporary, flags, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        dropped[name] = time.time()
        os.rename(temporary, inbox_prefix + name)
        return name

    def json_of(name: str) -> Path:
        return processed_path / (name + ".json")

    began = time.time()
    if kind == "light":
        index = 0
        while time.time() - began < seconds:
            name = drop(index)
            index += 1
            while not json_of(name).exists():
                time.sleep(0.0005)
    elif kind == "burst":
        for index in range(count):
            drop(index)
    else:  # open loop at ``rate`` files/s
        index = 0
        while time.time() - began < seconds:
            target = began + index / rate
            delay = target - time.time()
            if delay > 0:
                time.sleep(delay)
            drop(index)
            index += 1
    # Wait for the last prediction. The daemon mostly finishes files in the order they
    # were dropped, so one existence check per file and per poll is enough: checking every
    # pending file on each poll (thousands of stat calls every 50 ms) took a quarter of a
    # core from the daemon on the 2-core machine. Times come from the JSON files' mtimes,
    # not from this loop.
    deadline = time.time() + 600
    pending = list(dropped)
    while pending and time.time() < deadline:
        while pending and json_of(pending[0]).exists():
            pending.pop(0)
        if pending:
            time.sleep(0.1)
    finished = {name: json_of(name).stat().st_mtime for name in dropped if json_of(name).exists()}
    latencies = [finished[name] - dropped[name] for name in finished]
    first, last = min(dropped.values()), max(finished.values(), default=began)
    out.put({
        "images_per_second": len(finished) / max(last - first, 1e-9),
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "files": len(dropped),
        "lost": len(dropped) - len(finished),
        # How long the load generator took to drop them: close to the whole run's length,
        # and the generator (competing for the same cores) sets the pace.
        "drop_seconds": max(dropped.values(), default=first) - first,
        "run_seconds": last - first,
    })


# -- running phases in a separate process ---------------------------------------------------------


def in_process(target: Any, *args: Any) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get(timeout=900)
    process.join(30)
    return result


def start_profiler(pid: int, seconds: float, output: Path) -> Any:
    """py-spy sampling the daemon (every thread) for ``seconds``; collapsed stacks in ``output``."""
    import subprocess

    beside = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(
        [str(beside) if beside.exists() else "py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
         "--format", "raw", "--threads", "--output", str(output), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )


def hotspots(collapsed: Path, top: int = 12) -> list[tuple[str, float]]:
    """The functions where the daemon spent its samples (self time), as shares of all samples."""
    counts: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frame = stack.split(";")[-1]
        counts[frame] = counts.get(frame, 0) + int(number)
        total += int(number)
    return [(frame, count / total) for frame, count in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]


def run_mode(mode: str, artifact: Path, workdir: Path, pngs: list[tuple[int, bytes]], seconds: float,
             settings: str, profile: Path | None = None, workers: int = 0) -> dict[str, Any]:
    folder = workdir / mode
    folder.mkdir(parents=True, exist_ok=True)
    sources = '["folder"]' if mode == "folder" else '["http"]'
    daemon = Daemon(folder, artifact, f"sources = {sources}\n{settings}",
                    env={"MONITORD_PIPELINE__WORKERS": str(workers)})
    daemon.start()
    try:
        daemon.wait_ready()
        encoded = [data for _, data in pngs]
        profiler = None
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            assert daemon.pid is not None
            profiler = start_profiler(daemon.pid, seconds, profile / f"{mode}.txt")
        if mode == "folder":
            # A first burst, not measured, as the HTTP modes' first seconds are diluted in
            # their closed loop: without it the measured burst (a few seconds) also timed
            # the workers' first batches and the first files in each label folder.
            in_process(_folder_worker, str(daemon.inbox), str(daemon.processed), pngs, "burst", seconds, 0.0, 1000)
            capacity = in_process(_folder_worker, str(daemon.inbox), str(daemon.processed), pngs, "burst",
                                  seconds, 0.0, int(max(2000, 400 * seconds)))
            light = in_process(_folder_worker, str(daemon.inbox), str(daemon.processed), pngs, "light",
                               seconds, 0.0, 0)
            loaded = in_process(_folder_worker, str(daemon.inbox), str(daemon.processed), pngs, "open",
                                seconds, 0.8 * capacity["images_per_second"], 0)
        else:
            # Enough connections for every process that accepts them (each keeps its own).
            concurrency = 4 * (1 + workers) if mode == "multipart" else 32
            capacity = in_process(_http_worker, daemon.url, mode, encoded, "closed", seconds, concurrency, 0.0)
            light = in_process(_http_worker, daemon.url, mode, encoded, "light", seconds, 1, 0.0)
            per_request = MULTIPART_SIZE if mode == "multipart" else 1
            loaded = in_process(_http_worker, daemon.url, mode, encoded, "open", seconds, 0,
                                0.8 * capacity["images_per_second"] / per_request)
        status = daemon.terminate()
        result = {"capacity": capacity, "light": light, "at_80_percent": loaded, "exit_status": status,
                  "log": str(daemon.log_path), "workers": workers}
        if profiler is not None and profiler.wait(60) == 0 and profile is not None:
            result["hotspots"] = hotspots(profile / f"{mode}.txt")
        return result
    finally:
        daemon.close()


# -- report --------------------------------------------------------------------------------


def report(results: dict[str, Any], seconds: float) -> str:
    ceiling = results["ceiling"]
    best = ceiling["images_per_second"]
    lines = [
        LAST_RUN_HEADING,
        "",
        f"`benchmarks/throughput.py --seconds {seconds:g}"
        + (f" --workers {results['workers']}" if results.get("workers") else "")
        + f"`, {utc_now()}. Machine: {machine_line()}. "
        "The load generator runs in its own process on the same cores.",
        "",
        "Ceiling (one process, tight loop: decode + preprocess + model + default detectors), images/s by batch size: "
        + ", ".join(f"{size}: {rate:,.0f}" for size, rate in ceiling["per_batch_size"].items())
        + f"; best {best:,.0f} at batch {ceiling['best_batch_size']}.",
        "",
        "| mode | capacity images/s | of ceiling | light load p50 / p99 | at 80 % p50 / p99 | notes |",
        "|---|---:|---:|---|---|---|",
    ]
    for mode in ("multipart", "raw", "folder"):
        if mode not in results:
            continue
        run = results[mode]
        capacity = run["capacity"]["images_per_second"]
        notes = []
        for phase in ("capacity", "light", "at_80_percent"):
            data = run[phase]
            if data.get("error_count"):
                notes.append(f"{phase}: {data['error_count']} errors {data['errors']}")
            if data.get("refused"):
                notes.append(f"{phase}: {data['refused']} refused")
            if data.get("lost"):
                notes.append(f"{phase}: {data['lost']} not processed")
        light, loaded = run["light"], run["at_80_percent"]
        lines.append(
            f"| {mode}{' (32 images/request)' if mode == 'multipart' else ''} | {capacity:,.0f} | "
            f"{capacity / best:.0%} | {light['p50_ms']:.1f} / {light['p99_ms']:.1f} ms | "
            f"{loaded['p50_ms']:.1f} / {loaded['p99_ms']:.1f} ms | {'; '.join(notes) or '—'} |"
        )
    profiled = [mode for mode in ("multipart", "raw", "folder") if results.get(mode, {}).get("hotspots")]
    if profiled:
        lines += ["", "Hotspots during each capacity phase (py-spy, self time, share of the daemon's samples):", ""]
        for mode in profiled:
            top = ", ".join(f"`{frame}` {share:.0%}" for frame, share in results[mode]["hotspots"][:8])
            lines.append(f"- {mode}: {top}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--modes", default="multipart,raw,folder")
    parser.add_argument("--batch-sizes", default="8,32,64,128,256")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--settings", default="", help="extra TOML for the daemon")
    parser.add_argument("--workers", type=int, default=0,
                        help="pipeline.workers (worker processes beside the main one)")
    parser.add_argument("--results", type=Path, default=None, help="write the section into this RESULTS.md")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None,
                        help="folder for py-spy's collapsed stacks of the daemon during each capacity phase")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="monitord-throughput-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {workdir}", flush=True)
    artifact = trained_artifact(workdir / "model")
    pngs = digit_pngs()
    results: dict[str, Any] = {"workers": args.workers}
    results["ceiling"] = measure_ceiling(artifact, [data for _, data in pngs], args.seconds / 2,
                                         [int(size) for size in args.batch_sizes.split(",")])
    print(f"ceiling: {results['ceiling']['images_per_second']:,.0f} images/s "
          f"at batch {results['ceiling']['best_batch_size']}", flush=True)
    for mode in args.modes.split(","):
        results[mode] = run_mode(mode, artifact, workdir, pngs, args.seconds, args.settings, args.profile,
                                 args.workers)
        print(f"{mode}: {json.dumps(results[mode], default=str)}", flush=True)
    text = report(results, args.seconds)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if args.results:
        replace_section(args.results, LAST_RUN_HEADING, text, parent=HEADING)
    failed = [mode for mode in args.modes.split(",") if results[mode]["exit_status"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
