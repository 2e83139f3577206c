"""GPU path (issue 6): what the torchvision plugin can do on a GPU, and what the daemon does.

One prepared run, meant for a single call of at most five minutes on a lent H100 (16 CPU
cores, no network), that also runs, scaled down, on a machine without CUDA:

0. builds a torchvision ``resnet18`` with random weights (1000 classes), saved as
   safetensors in a temporary folder (nothing is downloaded), and encodes a few thousand
   distinct 224x224 JPEGs (gradients, stripes, shapes and noise; quality 90) in memory,
   on every core;
1. the ceiling, in this process, with the plugin's own classes: the network alone at the
   batch size (bf16 autocast, channels_last), the batched device JPEG decode + resize /
   normalise alone, and both together with the signals (``predict_inputs``); for
   context, the per-image CPU costs of ``prepare_encoded`` (the decode threads' share
   with ``decode_on_device``) and of Pillow decode + ``preprocess`` (the CPU path);
2. end to end: ``python -m monitord run`` with the HTTP source only, that model on the
   GPU (the CPU without one), ``autocast = "bf16"``, ``channels_last``,
   ``decode_on_device``, ``pipeline.max_batch_size`` = the batch size, several decode
   workers, large queues and request limits, the predictions log off and the default
   detectors, driven by several load-generator processes (aiohttp) that post multipart
   batches of 32 JPEGs for a fixed time and honour 429/503 Retry-After. It reports
   images/s, request latency p50/p99, the ratio to the ceiling, and checks that drift
   detection saw every inference exactly once (each detector's ``samples`` in
   ``GET /v1/detectors`` and ``monitord_images_total{outcome="ok"}`` against the images
   the clients got predictions for). The daemon runs with ``pipeline.workers`` worker
   processes (``--workers``; on a GPU the cores less three: 13 of 16 did best on an
   H100), each with its own copy of the model on the device, feeding the main process's
   detectors; when time is left, the same run again without workers (everything in one
   process) for comparison, and with ``--compare-pillow`` once more with
   ``decode_on_device = false`` (Pillow in the decode threads).

Every phase has a deadline inside ``--time-limit`` (default 240 s), and the report is
written however far the run got. From the repository root::

    python benchmarks/gpu_h100.py --out /tmp/gpu-report           # the full run
    python benchmarks/gpu_h100.py --quick --out /tmp/gpu-report   # smoke run, about 2 minutes on a CPU

``--out DIR`` receives ``gpu_h100.json`` (every figure) and ``gpu_h100.md`` (a Markdown
section for benchmarks/RESULTS.md), and the daemon's log.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = 224
PARTS_PER_REQUEST = 32
BOUNDARY = "monitord-gpu-benchmark-boundary"


# -- the plan ---------------------------------------------------------------------------------


@dataclass
class Plan:
    """How big each phase is; derived from the device, the cores and ``--quick``."""

    device: str  # "cuda" or "cpu"
    images: int
    batch: int
    phase_seconds: float  # each timed loop of the ceiling
    warmup_seconds: float  # end to end, before the measured window
    measure_seconds: float  # end to end, the measured window
    clients: int  # load-generator processes
    concurrency: int  # requests in flight per process
    decode_workers: int
    compare_pillow: bool
    time_limit: float
    #: ``pipeline.workers`` of the main end-to-end run (ingest processes beside the main one).
    workers: int = 0
    #: Also run the daemon without ingest workers, to compare.
    compare_in_process: bool = True


def make_plan(args: argparse.Namespace, cuda: bool, cores: int) -> Plan:
    """Full size on a GPU; on a CPU the same phases, small enough to finish in time."""
    if cuda:
        plan = Plan("cuda", images=4096, batch=256, phase_seconds=8, warmup_seconds=10, measure_seconds=40,
                    clients=max(2, min(8, cores // 2)), concurrency=8,
                    decode_workers=max(2, min(8, cores // 2)), compare_pillow=False, time_limit=args.time_limit,
                    workers=max(1, cores - 3))
        if args.quick:
            plan.images, plan.phase_seconds, plan.warmup_seconds, plan.measure_seconds = 1024, 3, 5, 15
    else:
        plan = Plan("cpu", images=512, batch=32, phase_seconds=6, warmup_seconds=6, measure_seconds=30,
                    clients=1, concurrency=4, decode_workers=max(1, min(4, cores)), compare_pillow=False,
                    time_limit=args.time_limit, workers=1)
        if args.quick:
            plan.images, plan.phase_seconds, plan.warmup_seconds, plan.measure_seconds = 256, 3, 4, 12
    for key in ("images", "batch", "clients", "concurrency", "decode_workers", "workers"):
        value = getattr(args, key)
        if value is not None:
            setattr(plan, key, value)
    if args.seconds is not None:
        plan.measure_seconds = args.seconds
    if args.no_compare:
        plan.compare_pillow = plan.compare_in_process = False
    if args.compare_pillow:
        plan.compare_pillow = True
    return plan


class Budget:
    """The run's deadline, and how much of what is left a phase may take."""

    def __init__(self, seconds: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def share(self, wanted: float, keep: float) -> float:
        """``wanted`` seconds, or less so that ``keep`` remain for what follows."""
        return max(0.0, min(wanted, self.left() - keep))


# -- images -------------------------------------------------------------------------------------


def make_jpeg(seed: int) -> bytes:
    """One distinct 224x224 colour JPEG (quality 90): stripes, gradients, blocks, noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    planes = []
    for channel in range(3):
        fx, fy = rng.uniform(0.5, 12, 2)
        phase = rng.uniform(0, 2 * math.pi, 2)
        plane = 127 + 70 * np.sin(2 * math.pi * fx * x + phase[0]) * np.cos(2 * math.pi * fy * y + phase[1])
        plane += rng.uniform(-60, 60) * (x if channel % 2 else y)
        planes.append(plane)
    pixels = np.stack(planes, axis=2)
    for _ in range(int(rng.integers(2, 8))):
        x0, y0 = rng.integers(0, SIZE, 2)
        width, height = rng.integers(8, SIZE // 2, 2)
        pixels[y0 : y0 + height, x0 : x0 + width] = rng.uniform(0, 255, 3)
    pixels += rng.normal(0, rng.uniform(2, 14), pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_images(count: int, processes: int, seconds: float) -> list[bytes]:
    """``count`` JPEGs made on ``processes`` cores (fork: before CUDA is touched)."""
    context = multiprocessing.get_context("fork")
    pool = context.Pool(processes, initializer=signal.signal, initargs=(signal.SIGTERM, signal.SIG_DFL))
    try:
        result = pool.map_async(make_jpeg, range(count), chunksize=max(1, count // (processes * 8)))
        images = result.get(timeout=max(5.0, seconds))
        pool.close()
        return images
    finally:
        pool.terminate()
        pool.join()


def write_blob(images: list[bytes], folder: Path) -> tuple[Path, Path]:
    """The images in one file plus their offsets, for the load generators to read."""
    blob, index = folder / "images.bin", folder / "images.json"
    offsets, at = [], 0
    with blob.open("wb") as file:
        for data in images:
            file.write(data)
            offsets.append([at, len(data)])
            at += len(data)
    index.write_text(json.dumps(offsets))
    return blob, index


# -- the model --------------------------------------------------------------------------------------


def save_weights(folder: Path) -> tuple[Path, Path]:
    """resnet18, random weights (seed 0), 1000 classes: safetensors + a classes file."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    network = torchvision.models.resnet18(weights=None, num_classes=1000)
    weights = folder / "resnet18.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in network.state_dict().items()}, str(weights))
    classes = folder / "classes.txt"
    classes.write_text("".join(f"class_{index:04d}\n" for index in range(1000)))
    return weights, classes


def model_options(weights: Path, classes: Path, device: str, decode_on_device: bool) -> dict[str, Any]:
    """The ``[model]`` keys both phases use; channels_last left to its default on the CPU."""
    options: dict[str, Any] = {
        "architecture": "resnet18",
        "weights": str(weights),
        "classes_file": str(classes),
        "input_size": [SIZE, SIZE],
        "device": device,
        "autocast": "bf16",
        "decode_on_device": decode_on_device,
    }
    if device == "cuda":
        options["channels_last"] = True
    return options


def timed_loop(step: Callable[[int], int], seconds: float, sync: Callable[[], None], warmup: int = 2) -> dict[str, float]:
    """Call ``step(i)`` (which returns images done) until ``seconds`` pass; images/s."""
    for index in range(warmup):
        step(index)
    sync()
    done, calls = 0, 0
    began = time.perf_counter()
    while True:
        done += step(calls)
        calls += 1
        sync()
        elapsed = time.perf_counter() - began
        if elapsed >= seconds:
            break
    return {"images": done, "calls": calls, "seconds": round(elapsed, 3), "images_per_s": round(done / elapsed, 1)}


def measure_ceiling(plan: Plan, images: list[bytes], weights: Path, classes: Path, budget: Budget,
                    keep: float) -> dict[str, Any]:
    """The plugin without the daemon: network, device decode, both, and the CPU costs."""
    import numpy as np
    import torch
    from monitord.decode import decode_image
    from monitord_torchvision.device_decode import read_encoded_jpeg
    from monitord_torchvision.loading import load_from_options
    from monitord_torchvision.options import parse_options
    from monitord_torchvision.preprocess import preprocess_image

    device = torch.device(plan.device)
    options = model_options(weights, classes, plan.device, decode_on_device=True)
    options.pop("device")
    model = load_from_options(parse_options(options), device=device)
    results: dict[str, Any] = {"acceleration": model.acceleration.describe()}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    max_pixels = 40_000_000
    encoded = [model.prepare_encoded(data, max_pixels) for data in images]
    refused = sum(item is None for item in encoded)
    results["prepare_encoded_refused"] = refused
    encoded = [item for item in encoded if item is not None]
    batches = [encoded[i : i + plan.batch] for i in range(0, len(encoded) - plan.batch + 1, plan.batch)]
    if not batches:
        batches = [encoded]
    seconds = lambda: budget.share(plan.phase_seconds, keep)  # noqa: E731

    try:
        # The network alone: a random batch already on the device, as the plugin runs it.
        inputs = torch.randn((plan.batch, 3, SIZE, SIZE), device=device)
        inputs = inputs.contiguous(memory_format=model.acceleration.memory_format)
        network = model.network

        def forward(_: int) -> int:
            with torch.inference_mode(), model.acceleration.autocast_context(device):
                network(inputs)
            return plan.batch

        results["network_only"] = timed_loop(forward, seconds(), sync)
        print(f"  network alone: {results['network_only']['images_per_s']:,.0f} images/s", flush=True)

        decoder = model.device_preprocessor
        results["device_decode_only"] = timed_loop(
            lambda i: decoder.inputs(batches[i % len(batches)])[0].shape[0], seconds(), sync)
        print(f"  device JPEG decode + resize/normalise: {results['device_decode_only']['images_per_s']:,.0f} images/s",
              flush=True)

        results["decode_and_predict"] = timed_loop(
            lambda i: len(model.predict_inputs(batches[i % len(batches)])), seconds(), sync)
        print(f"  decode + forward + signals (predict_inputs): "
              f"{results['decode_and_predict']['images_per_s']:,.0f} images/s  <- the ceiling", flush=True)

        # Inputs already preprocessed on the host (the path without decode_on_device).
        host = np.stack([preprocess_image(decode_image(item.data, max_pixels), model.spec)
                         for item in batches[0][: plan.batch]])
        results["predict_from_host_arrays"] = timed_loop(lambda i: len(model.predict(host)), seconds(), sync)
        print(f"  forward + signals from host float32 arrays: "
              f"{results['predict_from_host_arrays']['images_per_s']:,.0f} images/s", flush=True)
        # Does the device path see what Pillow sees? (Inputs, and the classes of this
        # random network, whose near-ties make the share of same classes a strict test.)
        sample = batches[0][: plan.batch]
        on_device = decoder.inputs(sample)[0].float().cpu().numpy()
        results["input_max_abs_diff_vs_pillow"] = round(float(np.abs(on_device - host[: len(sample)]).max()), 4)
        results["input_mean_abs_diff_vs_pillow"] = round(float(np.abs(on_device - host[: len(sample)]).mean()), 5)
        same = model.predict_inputs(sample).class_index == model.predict(host[: len(sample)]).class_index
        results["same_class_as_pillow_path"] = round(float(same.mean()), 4)
        gray = io.BytesIO()
        from PIL import Image

        Image.open(io.BytesIO(images[0])).convert("L").save(gray, "JPEG", quality=90)
        gray_encoded = model.prepare_encoded(gray.getvalue(), max_pixels)
        gray_device = decoder.inputs([gray_encoded])[0].float().cpu().numpy()[0]
        gray_pillow = preprocess_image(decode_image(gray.getvalue(), max_pixels), model.spec)
        results["gray_jpeg_max_abs_diff_vs_pillow"] = round(float(np.abs(gray_device - gray_pillow).max()), 4)
        results["device_fallbacks"] = decoder.fallbacks
        print(f"  device vs Pillow inputs: max |diff| {results['input_max_abs_diff_vs_pillow']} "
              f"(mean {results['input_mean_abs_diff_vs_pillow']}), same class {results['same_class_as_pillow_path']:.1%}, "
              f"gray JPEG max |diff| {results['gray_jpeg_max_abs_diff_vs_pillow']}, "
              f"CPU fallbacks {decoder.fallbacks}", flush=True)
    finally:
        model.close()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # Per image, one CPU thread: what the decode threads spend in each mode.
    spec = model.spec

    def check_header(i: int) -> int:
        read_encoded_jpeg(images[i % len(images)], max_pixels)
        return 1

    def pillow(i: int) -> int:
        preprocess_image(decode_image(images[i % len(images)], max_pixels), spec)
        return 1

    results["prepare_encoded_one_thread"] = timed_loop(check_header, min(2.0, seconds()), lambda: None, 0)
    results["pillow_decode_preprocess_one_thread"] = timed_loop(pillow, min(3.0, seconds()), lambda: None, 0)
    print(f"  per CPU thread: prepare_encoded {results['prepare_encoded_one_thread']['images_per_s']:,.0f} images/s, "
          f"Pillow decode + preprocess {results['pillow_decode_preprocess_one_thread']['images_per_s']:,.0f} images/s",
          flush=True)
    return results


# -- the load generators ---------------------------------------------------------------------------


def multipart_body(images: list[bytes], first: int) -> bytes:
    """A multipart/form-data body with one ``image`` part per JPEG."""
    chunks = []
    for offset, data in enumerate(images):
        chunks.append(
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"img-{first + offset:05d}.jpg\""
            f"\r\nContent-Type: image/jpeg\r\n\r\n".encode()
        )
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(chunks)


def client_process(url: str, blob: str, index_file: str, number: int, processes: int, concurrency: int,
                   start_at: float, stop_at: float, result_file: str) -> None:
    """One load-generator process: ``concurrency`` requests in flight until ``stop_at``."""
    offsets = json.loads(Path(index_file).read_text())
    data = Path(blob).read_bytes()
    images = [data[at : at + size] for at, size in offsets]
    groups = max(1, len(images) // PARTS_PER_REQUEST)
    mine = [(number + k * processes) % groups for k in range(max(1, math.ceil(groups / processes)))]
    bodies = [multipart_body(images[g * PARTS_PER_REQUEST : (g + 1) * PARTS_PER_REQUEST], g * PARTS_PER_REQUEST)
              for g in mine]
    records = asyncio.run(client_loop(url, bodies, concurrency, start_at, stop_at))
    Path(result_file).write_text(json.dumps(records))


async def client_loop(url: str, bodies: list[bytes], concurrency: int, start_at: float,
                      stop_at: float) -> list[list[float]]:
    """Records [started, seconds, status, predicted, errors, retry_after] per request."""
    import aiohttp

    records: list[list[float]] = []
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    timeout = aiohttp.ClientTimeout(total=120)
    await asyncio.sleep(max(0.0, start_at - time.time()))

    async def worker(number: int, session: aiohttp.ClientSession) -> None:
        turn = number
        while time.time() < stop_at:
            body = bodies[turn % len(bodies)]
            turn += concurrency
            began = time.time()
            try:
                async with session.post(url + "/v1/predict", data=body, headers=headers) as response:
                    payload = await response.read()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError):
                records.append([began, time.time() - began, -1, 0, 0, 0])
                await asyncio.sleep(0.1)
                continue
            seconds = time.time() - began
            if status == 200:
                answer = json.loads(payload)
                predicted = sum(1 for p in answer["predictions"] if "class" in p)
                records.append([began, seconds, 200, predicted, len(answer["predictions"]) - predicted, 0])
            else:
                wait = float(retry_after) if retry_after else 0.0
                records.append([began, seconds, status, 0, 0, wait])
                if status in (429, 503):
                    await asyncio.sleep(min(wait or 1.0, max(0.0, stop_at - time.time())))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(n, session) for n in range(concurrency)))
    return records


# -- the daemon --------------------------------------------------------------------------------------


def daemon_settings(plan: Plan, workdir: Path, port: int, options: dict[str, Any], workers: int) -> str:
    model = "\n".join(f"{key} = {json.dumps(value)}" for key, value in options.items())
    # With ingest workers each process has its own decode threads and batches.
    decode_workers = plan.decode_workers if not workers else max(2, plan.decode_workers // workers)
    return f"""sources = ["http"]
state_dir = "{workdir / 'state'}"
log_level = "INFO"

[http]
port = {port}
max_concurrent_requests = {max(256, 4 * plan.clients * plan.concurrency)}
max_parts = 256

[pipeline]
workers = {workers}
max_batch_size = {plan.batch}
max_batch_delay = 0.005
decode_workers = {decode_workers}
queue_size = {max(4096, 8 * plan.batch)}
max_queued_bytes = {1024 * 1024 * 1024}

[predictions_log]
enabled = false

[model]
{model}
"""


def _stat_fields(path: Path) -> list[str]:
    text = path.read_text()
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (the daemon's ingest workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(entry / "stat")[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def cpu_seconds(pid: int) -> tuple[float, dict[str, float]]:
    """CPU seconds of the process and its children, and each one's busiest threads by name:
    ``main`` is the main process's event loop, ``worker <pid>`` an ingest worker's process.

    Python does not name its threads for the OS, so the model thread and the decode
    threads show as ids; the busiest few say where the time goes.
    """
    tick = os.sysconf("SC_CLK_TCK")

    def read(path: Path) -> float:
        fields = _stat_fields(path)
        return (int(fields[11]) + int(fields[12])) / tick

    total = read(Path(f"/proc/{pid}/stat"))
    threads: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            threads["main" if task.name == str(pid) else f"thread {task.name}"] = read(task / "stat")
        except (OSError, ValueError):
            continue
    for child in children(pid):
        try:
            seconds = read(Path(f"/proc/{child}/stat"))
        except (OSError, ValueError):
            continue
        total += seconds
        threads[f"worker {child}"] = seconds
    return total, threads


class GpuSampler:
    """GPU utilisation (%) every half second, where torch can read it (NVML)."""

    def __init__(self, device: str) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._enabled = device == "cuda"

    def _run(self) -> None:
        import torch

        while not self._stop.wait(0.5):
            try:
                self.samples.append(float(torch.cuda.utilization()))
            except Exception:  # noqa: BLE001 - no NVML: no samples
                return

    def __enter__(self) -> GpuSampler:
        if self._enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)


def run_end_to_end(plan: Plan, workdir: Path, blob: Path, index: Path, options: dict[str, Any],
                   budget: Budget, keep: float, out: Path | None, label: str, workers: int = 0) -> dict[str, Any]:
    """Start the daemon, drive it, check the counts, stop it."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = h.free_port()
    config = workdir / "monitord.toml"
    config.write_text(daemon_settings(plan, workdir, port, options, workers))
    log_path = workdir / "daemon.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MONITORD_")}
    env["PYTHONUNBUFFERED"] = "1"
    url = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {"label": label, "settings": config.read_text()}
    log = log_path.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "monitord", "run", "--config", str(config)],
                               cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    clients: list[multiprocessing.process.BaseProcess] = []
    try:
        began = time.monotonic()
        wait_ready(url, process, log_path, deadline=time.monotonic() + budget.share(120, keep + 20))
        result["ready_after_s"] = round(time.monotonic() - began, 1)
        window = budget.share(plan.warmup_seconds + plan.measure_seconds, keep + 15)
        warmup = min(plan.warmup_seconds, window / 3)
        measure = window - warmup
        if measure < 3:
            raise TimeoutError(f"no time left to drive the daemon ({budget.left():.0f} s left)")
        start_at = time.time() + 1.0
        measure_from, stop_at = start_at + warmup, start_at + warmup + measure
        context = multiprocessing.get_context("spawn")
        for number in range(plan.clients):
            record_file = workdir / f"client-{number}.json"
            clients.append(context.Process(
                target=client_process,
                args=(url, str(blob), str(index), number, plan.clients, plan.concurrency, start_at, stop_at,
                      str(record_file)),
            ))
        for client in clients:
            client.start()
        time.sleep(max(0.0, measure_from - time.time()))
        cpu_before = cpu_seconds(process.pid)
        with GpuSampler(plan.device) as gpu:
            time.sleep(max(0.0, stop_at - time.time()))
            cpu_after = cpu_seconds(process.pid)
        for client in clients:
            client.join(timeout=max(5.0, budget.share(150, keep + 5)))
            if client.is_alive():
                client.terminate()
                raise TimeoutError("a load generator did not finish its last requests in time")
        records = []
        for number in range(plan.clients):
            path = workdir / f"client-{number}.json"
            if not path.exists():
                raise RuntimeError(f"load generator {number} wrote no results (exit code {clients[number].exitcode})")
            records += json.loads(path.read_text())
        result.update(summarise(records, measure_from, stop_at))
        busy = cpu_after[0] - cpu_before[0]
        span = stop_at - measure_from
        result["daemon_cpu_cores"] = round(busy / span, 2)
        used = {name: (seconds - cpu_before[1].get(name, 0.0)) / span for name, seconds in cpu_after[1].items()}
        result["daemon_threads_cpu_cores"] = {
            name: round(used[name], 2) for name in sorted(used, key=lambda n: -used[n])[:5]
        }
        if gpu.samples:
            result["gpu_utilisation_mean_pct"] = round(sum(gpu.samples) / len(gpu.samples), 1)
        result.update(check_counts(url, result["predicted_total"]))
        status = terminate(process)
        result["exit_status"] = status
    finally:
        for client in clients:
            if client.is_alive():
                client.terminate()
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()
        text = log_path.read_text(errors="replace")
        result["log_summary"] = h.log_summary(text)
        if out is not None:
            (out / f"daemon-{label}.log").write_text(text[-2_000_000:])
    return result


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the daemon exited with {process.returncode} before it was ready:\n{tail}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the daemon was not ready in time; log: {log_path}")


def terminate(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        return -9


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def summarise(records: list[list[float]], measure_from: float, stop_at: float) -> dict[str, Any]:
    """Throughput over the measured window, latency of its 200s, and totals over the run."""
    statuses: dict[str, int] = {}
    for record in records:
        statuses[str(int(record[2]))] = statuses.get(str(int(record[2])), 0) + 1
    measured = [r for r in records if measure_from <= r[0] and r[0] + r[1] <= stop_at + 0.001]
    ok = [r for r in measured if r[2] == 200]
    # Images whose request finished inside the window, over the window.
    finished_in_window = sum(r[3] for r in records if r[2] == 200 and measure_from <= r[0] + r[1] <= stop_at)
    span = stop_at - measure_from
    latencies = [r[1] for r in ok]
    return {
        "requests_total": len(records),
        "statuses": statuses,
        "predicted_total": int(sum(r[3] for r in records)),
        "part_errors_total": int(sum(r[4] for r in records)),
        "retry_after_answers": int(sum(1 for r in records if r[2] in (429, 503))),
        "retry_after_missing": int(sum(1 for r in records if r[2] in (429, 503) and not r[5])),
        "measured_seconds": round(span, 2),
        "images_per_s": round(finished_in_window / span, 1),
        "requests_per_s": round(sum(1 for r in records if r[2] == 200 and measure_from <= r[0] + r[1] <= stop_at) / span, 1),
        "latency_p50_ms": round(1000 * percentile(latencies, 0.50), 1),
        "latency_p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "latency_max_ms": round(1000 * max(latencies), 1) if latencies else None,
    }


def check_counts(url: str, predicted: int, wait_seconds: float = 30.0) -> dict[str, Any]:
    """Did each detector see every inference once, and did the metrics count them once?

    The monitor applies what inference published a little later (and publishes its state
    every second), so its counts are read until they reach ``predicted`` or stop growing."""
    deadline = time.monotonic() + wait_seconds
    while True:
        with urllib.request.urlopen(url + "/metrics", timeout=15) as response:
            samples = h.parse_metrics(response.read().decode())
        with urllib.request.urlopen(url + "/v1/detectors", timeout=15) as response:
            detectors = json.loads(response.read())["detectors"]
        counts = [d["samples"] for d in detectors if d["signal"] != "error"]
        if (counts and all(count >= predicted for count in counts)) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    ok = h.metric_sum(samples, "monitord_images_total", outcome="ok")
    batches = h.metric_sum(samples, "monitord_batch_size_count")
    batch_sum = h.metric_sum(samples, "monitord_batch_size_sum")
    inference_sum = h.metric_sum(samples, "monitord_inference_duration_seconds_sum")
    watched = {d["name"]: d["samples"] for d in detectors if d["signal"] != "error"}
    return {
        "images_total_ok": int(ok),
        "detector_samples": watched,
        "every_inference_seen_once": bool(watched) and int(ok) == predicted
        and all(count == predicted for count in watched.values()),
        "batches": int(batches),
        "mean_batch_size": round(batch_sum / batches, 1) if batches else None,
        "mean_inference_ms": round(1000 * inference_sum / batches, 2) if batches else None,
        "drift_events": int(h.metric_sum(samples, "monitord_drift_events_total")),
    }


# -- the report -----------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    """A section for benchmarks/RESULTS.md."""
    plan = report["plan"]
    lines = [f"### {report['device_name']} ({report['date']})", "",
             f"**Machine:** {report['machine']}, torchvision {report.get('torchvision')}. "
             f"Run: `{report['command']}`, {report['elapsed_s']:.0f} s "
             f"of a {plan['time_limit']:.0f} s limit.", ""]
    if report.get("images"):
        im = report["images"]
        lines.append(f"{im['count']:,} distinct {SIZE}x{SIZE} JPEGs (quality 90, mean {im['mean_bytes']:,} bytes), "
                     f"made in {im['seconds']:.1f} s; batch {plan['batch']}; resnet18, random weights, 1000 classes.")
        lines.append("")
    ceiling = report.get("ceiling") or {}
    if ceiling:
        lines += ["| ceiling (this process, no daemon) | images/s |", "|---|---:|"]
        for key, name in (("network_only", f"network alone, batch {plan['batch']} ({ceiling.get('acceleration')})"),
                          ("device_decode_only", "batched device JPEG decode + resize/normalise"),
                          ("decode_and_predict", "decode + forward + signals (`predict_inputs`): **the ceiling**"),
                          ("predict_from_host_arrays", "forward + signals from host float32 arrays (`predict`)"),
                          ("prepare_encoded_one_thread", "`prepare_encoded` (header + marker check), one CPU thread"),
                          ("pillow_decode_preprocess_one_thread", "Pillow decode + `preprocess`, one CPU thread")):
            if key in ceiling:
                lines.append(f"| {name} | {ceiling[key]['images_per_s']:,.0f} |")
        lines.append("")
        if "same_class_as_pillow_path" in ceiling:
            lines += [f"Device path against the Pillow path on {plan['batch']} images: inputs differ by at most "
                      f"{ceiling['input_max_abs_diff_vs_pillow']} (mean {ceiling['input_mean_abs_diff_vs_pillow']}, "
                      f"normalised units), {ceiling['same_class_as_pillow_path']:.1%} same class (a random network: "
                      f"near ties); a gray JPEG differs by at most {ceiling['gray_jpeg_max_abs_diff_vs_pillow']}; "
                      f"images the device decoder refused (CPU fallbacks): {ceiling['device_fallbacks']}.", ""]
    for run in report.get("end_to_end", []):
        if "images_per_s" not in run:
            lines += [f"End to end ({run['label']}): not completed: {run.get('error', 'unknown')}", ""]
            continue
        ratio = run.get("ratio_to_ceiling")
        lines += [f"| end to end: {run['label']} | |", "|---|---:|",
                  f"| images/s (requests finished in the {run['measured_seconds']:.0f} s window) | "
                  f"**{run['images_per_s']:,.0f}** |",
                  f"| ratio to the ceiling | {ratio:.2f} |" if ratio is not None else "| ratio to the ceiling | – |",
                  f"| requests/s ({PARTS_PER_REQUEST} JPEGs each) | {run['requests_per_s']:,.1f} |",
                  f"| latency p50 / p99 / max | {run['latency_p50_ms']:,.0f} / {run['latency_p99_ms']:,.0f} / "
                  f"{run['latency_max_ms']:,.0f} ms |",
                  f"| statuses (whole run) | {', '.join(f'{k}: {v:,}' for k, v in sorted(run['statuses'].items()))} |",
                  f"| mean batch / mean inference | {run['mean_batch_size']} / {run['mean_inference_ms']} ms |",
                  f"| daemon CPU (cores) | {run['daemon_cpu_cores']} "
                  f"(busiest threads: {', '.join(f'{k} {v}' for k, v in run['daemon_threads_cpu_cores'].items())}; "
                  "main runs the event loop) |"]
        if "gpu_utilisation_mean_pct" in run:
            lines.append(f"| GPU utilisation (mean of samples) | {run['gpu_utilisation_mean_pct']} % |")
        seen = "yes" if run["every_inference_seen_once"] else "**no**"
        lines += [f"| images predicted (whole run) / `monitord_images_total{{outcome=\"ok\"}}` | "
                  f"{run['predicted_total']:,} / {run['images_total_ok']:,} |",
                  f"| detector samples | {', '.join(f'{k} {v:,}' for k, v in run['detector_samples'].items())} |",
                  f"| every inference seen once by drift detection | {seen} |",
                  f"| daemon ready after / exit status / log | {run['ready_after_s']} s / {run['exit_status']} / "
                  f"{run['log_summary'][0]} |", ""]
    if report.get("errors"):
        lines += ["Errors:", "", *[f"- {error}" for error in report["errors"]], ""]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for gpu_h100.json, gpu_h100.md and the daemon logs")
    parser.add_argument("--quick", action="store_true", help="fewer images, shorter phases (a smoke run)")
    parser.add_argument("--time-limit", type=float, default=240.0,
                        help="seconds for the whole run (default 240: a 5-minute device call with set-up)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--images", type=int, help="distinct JPEGs to make")
    parser.add_argument("--batch", type=int, help="batch size of the ceiling and pipeline.max_batch_size")
    parser.add_argument("--seconds", type=float, help="measured seconds of each end-to-end run")
    parser.add_argument("--clients", type=int, help="load-generator processes")
    parser.add_argument("--concurrency", type=int, help="requests in flight per load generator")
    parser.add_argument("--decode-workers", type=int, dest="decode_workers", help="pipeline.decode_workers")
    parser.add_argument("--workers", type=int, help="pipeline.workers of the main end-to-end run")
    parser.add_argument("--no-compare", action="store_true", help="only the main end-to-end run")
    parser.add_argument("--compare-pillow", action="store_true", help="also run with decode_on_device off")
    args = parser.parse_args(argv)
    problem = preflight()
    if problem is not None:
        print(f"gpu_h100.py: {problem}", file=sys.stderr)
        return 2
    h.interrupt_on_sigterm()
    budget = Budget(args.time_limit)
    # A last resort past the limit: whatever runs is interrupted and the report written.
    signal.signal(signal.SIGALRM, lambda signum, frame: (_ for _ in ()).throw(TimeoutError("time limit")))
    signal.alarm(int(args.time_limit) + 20)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_h100.py: --device cuda, but torch {torch.__version__} sees no GPU", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    plan = make_plan(args, cuda, cores)
    report: dict[str, Any] = {
        "date": h.utc_now(),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "device_name": torch.cuda.get_device_name(0) if cuda else f"CPU only ({h.cpu_model()}, {cores} cores, no GPU)",
        "torch": torch.__version__,
        "torchvision": __import__("torchvision").__version__,
        "plan": asdict(plan),
        "errors": [],
        "end_to_end": [],
    }
    out = args.out
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    print(f"GPU path benchmark on {report['device_name']}: {plan.images} images, batch {plan.batch}, "
          f"limit {plan.time_limit:.0f} s", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="monitord-gpu-") as temporary:
            folder = Path(temporary)
            run_phases(plan, folder, budget, report, out)
    except (KeyboardInterrupt, TimeoutError) as error:
        report["errors"].append(f"stopped early: {type(error).__name__}: {error}")
    finally:
        signal.alarm(0)
        report["elapsed_s"] = round(budget.elapsed(), 1)
        report["machine"] = h.machine_line()
        write_report(report, out)
    return 0 if not report["errors"] else 1


def run_phases(plan: Plan, folder: Path, budget: Budget, report: dict[str, Any], out: Path | None) -> None:
    # Images first, forked, before CUDA is touched in this process.
    began = time.monotonic()
    images = make_images(plan.images, max(1, min(16, os.cpu_count() or 1)), seconds=plan.time_limit / 4)
    sizes = [len(data) for data in images]
    report["images"] = {"count": len(images), "mean_bytes": int(sum(sizes) / len(sizes)),
                        "distinct": len(set(images)), "seconds": round(time.monotonic() - began, 1)}
    print(f"made {len(images):,} JPEGs in {report['images']['seconds']} s "
          f"(mean {report['images']['mean_bytes']:,} bytes)", flush=True)
    blob, index = write_blob(images, folder)
    weights, classes = save_weights(folder)

    # Keep for the end-to-end runs: daemon start + warm-up + a measured window + stop.
    keep_for_e2e = 40 + plan.warmup_seconds + min(plan.measure_seconds, 20)
    print("ceiling:", flush=True)
    try:
        report["ceiling"] = measure_ceiling(plan, images, weights, classes, budget, keep_for_e2e)
    except Exception as error:  # noqa: BLE001 - report it, go on to the daemon
        report["errors"].append(f"ceiling: {type(error).__name__}: {error}")
        traceback.print_exc()
    ceiling = (report.get("ceiling") or {}).get("decode_and_predict", {}).get("images_per_s")

    runs = [(f"decode_on_device_{plan.workers}_workers" if plan.workers else "decode_on_device", True, plan.workers)]
    if plan.workers and plan.compare_in_process:
        runs.append(("decode_on_device_in_process", True, 0))
    if plan.compare_pillow:
        runs.append(("pillow_in_decode_threads", False, plan.workers))
    for number, (label, on_device, workers) in enumerate(runs):
        keep = (30 + plan.warmup_seconds + 10) if number + 1 < len(runs) else 5
        if number > 0 and budget.left() < 60 + plan.warmup_seconds:
            report["errors"].append(f"end to end ({label}): skipped, {budget.left():.0f} s left")
            break
        print(f"end to end ({label}):", flush=True)
        options = model_options(weights, classes, plan.device, on_device)
        try:
            run = run_end_to_end(plan, folder / label, blob, index, options, budget, keep, out, label, workers)
        except Exception as error:  # noqa: BLE001 - report it and stop
            report["end_to_end"].append({"label": label, "error": f"{type(error).__name__}: {error}"})
            report["errors"].append(f"end to end ({label}): {type(error).__name__}: {error}")
            traceback.print_exc()
            continue
        if ceiling:
            run["ratio_to_ceiling"] = round(run["images_per_s"] / ceiling, 3)
        report["end_to_end"].append(run)
        if not run["every_inference_seen_once"]:
            report["errors"].append(f"end to end ({label}): detectors or metrics did not count every inference once")
        print(f"  {run['images_per_s']:,.0f} images/s, p50 {run['latency_p50_ms']:,.0f} ms, "
              f"p99 {run['latency_p99_ms']:,.0f} ms, statuses {run['statuses']}, "
              f"every inference seen once: {run['every_inference_seen_once']}", flush=True)


def preflight() -> str | None:
    """What is missing for the run, said so that it can be fixed, or None."""
    missing = []
    for module in ("monitord", "monitord_torchvision", "aiohttp", "safetensors", "pydantic_settings", "watchfiles"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        return (f"missing Python packages: {', '.join(missing)}; install the project (pip install -e . -e "
                "plugins/monitord-torchvision -e plugins/monitord-drift) and its dependencies first "
                "(see benchmarks/RESULTS.md, 'GPU path (issue 6)', for the H100 command)")
    from importlib.metadata import entry_points

    plugins = {entry.name for entry in entry_points(group="monitord")}
    if not {"torchvision", "drift"} <= plugins:
        return (f"monitord plugins found through entry points: {sorted(plugins) or 'none'}; the daemon needs "
                "monitord-torchvision and monitord-drift installed (pip install --no-build-isolation --no-deps -e "
                "plugins/monitord-torchvision -e plugins/monitord-drift)")
    return None


def write_report(report: dict[str, Any], out: Path | None) -> None:
    text = markdown(report)
    print("\n" + text, flush=True)
    if out is not None:
        (out / "gpu_h100.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (out / "gpu_h100.md").write_text(text + "\n")
        print(f"wrote {out / 'gpu_h100.json'} and {out / 'gpu_h100.md'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
