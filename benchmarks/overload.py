"""Overload: what the daemon does when clients post far more than it can classify.

Issue 5 asks that HTTP ingest stay bounded past capacity: excess requests are refused
(503 when the pipeline is full, 429 past ``http.max_concurrent_requests``), each with
Retry-After; every accepted request gets its predictions; memory stays flat; ``/healthz``
keeps answering. This script drives that scenario and reports it:

1. light load: ``--light-clients`` clients (default 1) for ``--light-seconds``, the
   latency of an unloaded daemon;
2. overload: ``--clients`` clients posting multipart batches of ``--batch`` digits back to
   back (no back-off; ``--honour-retry-after`` makes them wait as told) for ``--seconds``.
   The first ``--warmup`` seconds are the warm-up: the daemon's resident memory at their
   end is its steady state, and the figures below count requests started after it.

Throughout, ``/healthz`` is probed every 0.5 s and the daemon's VmRSS read from
``/proc/<pid>/status`` every 0.25 s. At the end the peak (the larger of the highest sample
and the kernel's VmHWM) is compared with the bound of ``monitord.memory_bound`` for the
daemon's settings, its baseline being the VmRSS measured once the model has run one full
batch of digits, before the light phase. ``--image-side S`` posts one incompressible S x S RGB PNG (about 3 S² bytes)
per image instead of digits: large bodies, large decodes. Run from the repository root::

    .venv/bin/python benchmarks/overload.py                       # starts its own daemon, 60 s
    .venv/bin/python benchmarks/overload.py --seconds 20 --json out.json
    .venv/bin/python benchmarks/overload.py --url http://127.0.0.1:8000 --pid 1234 --config monitord.toml
    .venv/bin/python benchmarks/overload.py --image-side 2500 --batch 1 --clients 100 \
        --max-concurrent 64 --max-image-pixels 6300000             # 19 MB bodies

Without ``--url`` it starts ``monitord run`` in a temporary folder with the small default
digits model (trained there in a few seconds unless ``--artifact`` names one) and the
pipeline settings given here (``--queue-size``, ``--max-concurrent``, ...). ``--json``
writes every figure (and each RSS sample) for a test or a notebook to read. With ``--url``
the bound is computed only if ``--config`` names the daemon's settings file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import aiohttp


@dataclass
class Outcome:
    """One request as the client saw it."""

    started: float  # seconds since the load began
    seconds: float
    status: int  # -1: no HTTP answer (connection error, client timeout)
    retry_after: bool = False
    valid: bool = False  # a 200 with one prediction per image; an error with a JSON reason
    error: str = ""


@dataclass
class Probe:
    at: float
    ok: bool
    seconds: float


@dataclass
class Run:
    """Everything recorded during one phase."""

    outcomes: list[Outcome] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds, kB)


def digit_images(count: int) -> list[bytes]:
    from monitord_torchvision.digits import digit_png_bytes, held_out_digits

    images, _ = held_out_digits()
    return [digit_png_bytes(images[i % len(images)]) for i in range(count)]


def noise_images(side: int, count: int = 2) -> list[bytes]:
    """``count`` RGB PNGs of ``side`` x ``side`` random pixels: about 3 side² bytes each."""
    import io

    import numpy as np
    from PIL import Image

    images = []
    for seed in range(count):
        pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", compress_level=1)
        images.append(buffer.getvalue())
    return images


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def rss_kb(pid: int) -> int:
    return status_kb(pid, "VmRSS")


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def client(session: aiohttp.ClientSession, url: str, images: list[bytes], batch: int, run: Run,
                 t0: float, until: float, honour_retry_after: bool, offset: int) -> None:
    """Post batches back to back until ``until``; record what each request got."""
    index = offset
    while (now := time.monotonic()) < until:
        form = aiohttp.FormData()
        for k in range(batch):
            form.add_field("image", images[(index + k) % len(images)], filename=f"{k}.png", content_type="image/png")
        index += batch
        outcome = Outcome(started=now - t0, seconds=0.0, status=-1)
        wait = 0.0
        try:
            async with session.post(url + "/v1/predict", data=form) as response:
                outcome.status = response.status
                outcome.retry_after = "Retry-After" in response.headers
                body = await response.json(content_type=None)
                if response.status == 200:
                    predictions = body.get("predictions", [])
                    outcome.valid = (body.get("count") == batch and len(predictions) == batch
                                     and all("class" in p for p in predictions))
                else:
                    outcome.valid = isinstance(body.get("error"), str) and body.get("status") == response.status
                if outcome.retry_after and honour_retry_after:
                    wait = float(response.headers["Retry-After"])
        except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as error:
            outcome.error = f"{type(error).__name__}: {error}"
        outcome.seconds = time.monotonic() - now
        run.outcomes.append(outcome)
        if wait:
            await asyncio.sleep(wait)


async def prober(url: str, run: Run, t0: float, until: float) -> None:
    """``GET /healthz`` every 0.5 s on its own connection, with a 5 s limit per probe."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while (now := time.monotonic()) < until:
            ok = False
            try:
                async with session.get(url + "/healthz") as response:
                    ok = response.status == 200 and (await response.json()).get("status") == "ok"
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            run.probes.append(Probe(now - t0, ok, time.monotonic() - now))
            await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - now)))


async def sampler(pid: int, run: Run, t0: float, until: float) -> None:
    while (now := time.monotonic()) < until:
        run.rss.append((now - t0, rss_kb(pid)))
        await asyncio.sleep(0.25)


async def load(url: str, pid: int, clients: int, batch: int, seconds: float, images: list[bytes],
               honour_retry_after: bool) -> Run:
    run = Run()
    t0 = time.monotonic()
    until = t0 + seconds
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(
            sampler(pid, run, t0, until),
            prober(url, run, t0, until),
            *(client(session, url, images, batch, run, t0, until, honour_retry_after, i * batch)
              for i in range(clients)),
        )
    return run


def summarise(outcomes: list[Outcome], seconds: float, batch: int) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for outcome in outcomes:
        by_status[str(outcome.status)] = by_status.get(str(outcome.status), 0) + 1
    accepted = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status in (429, 503)]
    latencies = [o.seconds * 1000 for o in accepted]
    return {
        "requests": len(outcomes),
        "by_status": by_status,
        "accepted": len(accepted),
        "refused": len(refused),
        "refused_share": len(refused) / len(outcomes) if outcomes else 0.0,
        "refused_without_retry_after": sum(1 for o in refused if not o.retry_after),
        "invalid_answers": sum(1 for o in outcomes if o.status > 0 and not o.valid),
        "errors": sorted({o.error for o in outcomes if o.error})[:5],
        "requests_per_s": len(outcomes) / seconds,
        "images_per_s": len(accepted) * batch / seconds,
        "latency_ms": {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
                       "max": max(latencies) if latencies else None},
        "refusal_latency_ms_p50": percentile([o.seconds * 1000 for o in refused], 0.5),
    }


def full_batch(url: str, images: list[bytes], size: int) -> None:
    """One request of ``size`` images, so that the model has run a full batch before the
    baseline is read."""

    async def post() -> None:
        form = aiohttp.FormData()
        for k in range(size):
            form.add_field("image", images[k % len(images)], filename=f"{k}.png", content_type="image/png")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            async with session.post(url + "/v1/predict", data=form) as response:
                await response.read()

    asyncio.run(post())


def measure(args: argparse.Namespace, url: str, pid: int, settings: Any | None) -> dict[str, Any]:
    images = noise_images(args.image_side) if args.image_side else digit_images(256)
    result: dict[str, Any] = {"settings": {key: value for key, value in vars(args).items() if key != "json"}}
    result["settings"]["request_bytes"] = len(images[0]) * args.batch
    baseline_kb = None
    if settings is not None:
        full_batch(url, digit_images(256), min(settings.pipeline.max_batch_size, settings.http.max_parts))
        baseline_kb = rss_kb(pid)
    if args.light_seconds > 0:
        light = asyncio.run(load(url, pid, args.light_clients, args.batch, args.light_seconds, images, False))
        result["light"] = summarise(light.outcomes, args.light_seconds, args.batch)
    rss_start = rss_kb(pid)
    heavy = asyncio.run(load(url, pid, args.clients, args.batch, args.seconds, images, args.honour_retry_after))
    measured = [o for o in heavy.outcomes if o.started >= args.warmup]
    result["overload"] = summarise(measured, args.seconds - args.warmup, args.batch)
    result["overload"]["warmup_requests"] = len(heavy.outcomes) - len(measured)
    warm = [kb for at, kb in heavy.rss if at < args.warmup]
    after = [kb for at, kb in heavy.rss if at >= args.warmup]
    steady = warm[-1] if warm else rss_start
    result["rss_kb"] = {
        "start": rss_start,
        "steady": steady,
        "max_after_warmup": max(after) if after else steady,
        "end": heavy.rss[-1][1] if heavy.rss else steady,
        "samples": heavy.rss,
    }
    result["rss_kb"]["max_over_steady"] = result["rss_kb"]["max_after_warmup"] / steady
    result["rss_kb"]["hwm"] = status_kb(pid, "VmHWM")
    if settings is not None and baseline_kb is not None:
        result["rss_kb"]["baseline"] = baseline_kb
        result["memory_bound"] = check_bound(settings, args, baseline_kb * 1024, result["rss_kb"])
    result["healthz"] = {
        "probes": len(heavy.probes),
        "failed": sum(1 for p in heavy.probes if not p.ok),
        "max_ms": max((p.seconds * 1000 for p in heavy.probes), default=None),
        "after": healthz(url),
    }
    return result


def check_bound(settings: Any, args: argparse.Namespace, baseline_bytes: int, rss: dict[str, Any]) -> dict[str, Any]:
    """The bound of ``monitord.memory_bound`` for ``settings`` against the measured peak."""
    from monitord.memory_bound import memory_bound

    bound = memory_bound(settings, baseline_bytes=baseline_bytes, input_bytes=input_bytes(settings),
                         connections=args.clients + args.light_clients + 2)
    peak = max(rss["hwm"], max((kb for _, kb in rss["samples"]), default=0)) * 1024
    return {"terms": [{"name": t.name, "formula": t.formula, "bytes": t.bytes} for t in bound.terms],
            "bound_bytes": bound.total, "peak_bytes": peak, "peak_share_of_bound": peak / bound.total,
            "within": peak <= bound.total}


def input_bytes(settings: Any) -> int:
    """One preprocessed model input of the artifact the daemon runs, in bytes (float32)."""
    from monitord_torchvision.artifact import read_metadata

    metadata = read_metadata(Path(settings.model_artifact))
    height, width = metadata.input_size
    return metadata.channels * height * width * 4


def healthz(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return -1


def start_daemon(args: argparse.Namespace, workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """``monitord run`` in ``workdir`` with the digits model and this run's pipeline settings;
    the process, its URL and its settings file."""
    artifact = args.artifact
    if artifact is None:
        from monitord_torchvision.training import train_default_model

        artifact = workdir / "model"
        train_default_model(artifact, seed=0, progress=False)
    port = free_port()
    config = workdir / "monitord.toml"
    config.write_text(
        'sources = ["http"]\n'
        f"[http]\nport = {port}\nmax_concurrent_requests = {args.max_concurrent}\n"
        f"max_body_bytes = {args.max_body_bytes}\n"
        f"[pipeline]\nqueue_size = {args.queue_size}\nmax_batch_size = {args.max_batch_size}\n"
        f"max_image_pixels = {args.max_image_pixels}\n"
        f"[model]\nartifact = \"{artifact}\"\n"
    )
    env = {**os.environ, "MONITORD_STATE_DIR": str(workdir / "state")}
    log = (workdir / "daemon.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "monitord", "run", "--config", str(config)],
                               cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the daemon exited with {process.returncode}; see {workdir / 'daemon.log'}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return process, url, config
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the daemon was not ready within 120 s")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def report(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [f"overload: {s['clients']} clients x {s['batch']} images per request, {s['seconds']:g} s "
             f"({s['warmup']:g} s warm-up)"]

    def phase(name: str, figures: dict[str, Any]) -> None:
        latency = figures["latency_ms"]
        fmt = lambda value: "-" if value is None else f"{value:.0f}"  # noqa: E731
        lines.append(
            f"  {name}: {figures['requests']} requests ({figures['requests_per_s']:.1f}/s), "
            f"{figures['images_per_s']:.0f} images/s accepted, refused {figures['refused_share']:.1%} "
            f"{figures['by_status']}, accepted latency p50 {fmt(latency['p50'])} ms p99 {fmt(latency['p99'])} ms, "
            f"refusal p50 {fmt(figures['refusal_latency_ms_p50'])} ms; refused without Retry-After "
            f"{figures['refused_without_retry_after']}, invalid answers {figures['invalid_answers']}"
        )
        if figures["errors"]:
            lines.append(f"    client errors: {figures['errors']}")

    if "light" in result:
        phase(f"light ({s['light_clients']} client(s))", result["light"])
    phase("past capacity", result["overload"])
    rss = result["rss_kb"]
    lines.append(f"  RSS: start {rss['start'] / 1024:.0f} MiB, steady {rss['steady'] / 1024:.0f} MiB, "
                 f"max after warm-up {rss['max_after_warmup'] / 1024:.0f} MiB "
                 f"({rss['max_over_steady']:.3f} x steady), end {rss['end'] / 1024:.0f} MiB")
    every = max(1, len(rss["samples"]) // 12)
    lines.append("  RSS over time (s: MiB): " + ", ".join(
        f"{at:.0f}: {kb / 1024:.0f}" for at, kb in rss["samples"][::every]))
    health = result["healthz"]
    lines.append(f"  /healthz: {health['probes']} probes, {health['failed']} failed, slowest "
                 f"{health['max_ms']:.0f} ms; after the load: {health['after']}")
    if "memory_bound" in result:
        bound = result["memory_bound"]
        lines.append(f"  peak memory {bound['peak_bytes'] / 2**20:.0f} MiB (VmHWM {rss['hwm'] / 1024:.0f} MiB) "
                     f"against the bound of {bound['bound_bytes'] / 2**20:.0f} MiB "
                     f"({bound['peak_share_of_bound']:.0%}; {'within' if bound['within'] else 'OVER THE BOUND'}):")
        lines.extend(f"    {term['name']}: {term['formula']} = {term['bytes'] / 2**20:.0f} MiB"
                     for term in bound["terms"])
    return "\n".join(lines)


def settings_of(config: Path) -> Any:
    from monitord.settings import load_settings

    return load_settings(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the overload phase")
    parser.add_argument("--warmup", type=float, default=10.0, help="first seconds of the overload phase not measured")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="images per multipart request")
    parser.add_argument("--light-seconds", type=float, default=10.0, help="0 skips the light-load phase")
    parser.add_argument("--light-clients", type=int, default=1)
    parser.add_argument("--honour-retry-after", action="store_true", help="clients wait as Retry-After says")
    parser.add_argument("--url", help="a running daemon (with --pid); default: start one")
    parser.add_argument("--pid", type=int, help="the process id of the daemon at --url (for its RSS)")
    parser.add_argument("--artifact", type=Path, help="model artifact for the daemon started here")
    parser.add_argument("--queue-size", type=int, default=64, help="pipeline.queue_size of the daemon started here")
    parser.add_argument("--max-concurrent", type=int, default=16,
                        help="http.max_concurrent_requests of the daemon started here")
    parser.add_argument("--max-batch-size", type=int, default=32, help="pipeline.max_batch_size of the daemon started here")
    parser.add_argument("--max-body-bytes", type=int, default=20 * 2**20,
                        help="http.max_body_bytes of the daemon started here")
    parser.add_argument("--max-image-pixels", type=int, default=40_000_000,
                        help="pipeline.max_image_pixels of the daemon started here")
    parser.add_argument("--image-side", type=int, default=0,
                        help="post S x S noise PNGs instead of digits (0: digits)")
    parser.add_argument("--config", type=Path, help="the settings file of the daemon at --url (for the memory bound)")
    parser.add_argument("--json", type=Path, help="write every figure here as JSON")
    args = parser.parse_args(argv)
    if args.warmup >= args.seconds:
        parser.error("--warmup must be shorter than --seconds")
    if (args.url is None) != (args.pid is None):
        parser.error("give --url and --pid together, or neither")

    process = None
    with tempfile.TemporaryDirectory(prefix="monitord-overload-") as tmp:
        config = args.config
        if args.url is None:
            process, url, config = start_daemon(args, Path(tmp))
            pid = process.pid
        else:
            url, pid = args.url.rstrip("/"), args.pid
        try:
            result = measure(args, url, pid, settings_of(config) if config else None)
        finally:
            if process is not None:
                process.terminate()
                process.wait(60)
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=lambda o: asdict(o) if is_dataclass(o) else str(o)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
