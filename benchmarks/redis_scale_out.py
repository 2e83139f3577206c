"""Scaling out over Redis (monitord-redis): throughput, takeover, a Redis crash, the cost of each step.

Real ``monitord run`` processes (two inference processes, a monitor, a standby) on a real
redis-server (append-only file, ``appendfsync everysec``), each in a folder of its own:

- **throughput**: 10,000 digits, 8,000 over HTTP to the two inference processes (multipart,
  16 a request, 4 clients each) and 1,000 through each inbox: seconds from the first request
  until the monitor applied the last image;
- **takeover**: steady HTTP load, ``kill -9`` of the active monitor; seconds until the standby
  holds the lease, and until it applied its first entry (``bus.lease_seconds`` 5, the default);
- **redis crash**: HTTP load, ``kill -9`` of redis-server, restarted at once on the same
  append-only file; images answered 200 that the monitor never applied (what
  ``appendfsync everysec`` lost);
- **steps**: one process, one connection: ``XADD`` of a batch of 64, the checkpoint script
  with a state of the size the throughput run checkpointed, a trimming step of 1,000 entries.

``--results`` writes the tables into benchmarks/RESULTS.md ("Scaling out over Redis").

    python benchmarks/redis_scale_out.py --runs 3 --results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
REPO = HERE.parent
for folder in (REPO / "plugins" / "monitord-redis" / "tests", REPO / "tests"):
    sys.path.insert(0, str(folder))
sys.path.insert(0, str(HERE))

from _harness import machine_line, replace_section, trained_artifact, utc_now  # noqa: E402
from cluster import Cluster, Load, images_ok, predictions_log, samples  # noqa: E402
from daemon_process import wait_for  # noqa: E402
from digit_files import drop_atomically, held_out_pngs  # noqa: E402
from redis_server import RedisServer  # noqa: E402

RESULTS = REPO / "benchmarks" / "RESULTS.md"
SETTINGS = """
sources = ["folder", "http"]
[[detectors]]
type = "pht"
signal = "confidence"
[[detectors]]
type = "pht"
signal = "entropy"
[bus]
checkpoint_seconds = 1.0
"""


#: What the figures mean (the second paragraph only when no answered image was lost).
TAKEOVER_NOTE = """\
The takeover is the lease's expiry: renewed every third of `bus.lease_seconds`, the lease
expires 3.3–5 s after the last renewal before the kill, and the standby looks for it every
0.25 s; it then restores the checkpoint (detectors built at its start) and reads on. The
acceptance asks for 10 s."""
NO_LOSS_NOTE = """\
No answered image was lost when redis-server was killed: Redis writes its append-only file
(to the kernel) before it sends the replies of the commands it carried out, and a killed
process loses nothing the kernel holds. What `appendfsync everysec` can lose, the writes of
about the last second, is lost only when the machine itself goes down; not measured here."""
STATE_NOTE = """\
The checkpointed state grows with the predictions waiting for a label (the feedback join:
10,000 here, 270–335 KB of JSON). The whole state is written every `bus.checkpoint_seconds`,
or less often when writing it would take more than a twentieth of the monitor's time (at
`feedback.max_pending` = 100,000 it is some 3 MB)."""


def digits() -> list[bytes]:
    return [data for _, data in held_out_pngs(360)]


def throughput(folder: Path, artifact: Path) -> dict[str, float]:
    server = RedisServer(folder / "redis")
    server.start()
    cluster = Cluster(folder, server, SETTINGS, artifact)
    try:
        a, b, monitor = cluster.inference("a", start=False), cluster.inference("b", start=False), \
            cluster.monitor("m", start=False)
        began = time.monotonic()
        cluster.start_all(a, b, monitor)
        ready = time.monotonic() - began
        images = digits()
        load = Load(images)
        began = time.monotonic()
        for node in (a, b):
            for i in range(1000):
                drop_atomically(node.inbox, f"{node.workdir.name}-{i}.png", images[i % len(images)])

        async def post() -> None:
            await asyncio.gather(load.run(a.url, "a", 4000), load.run(b.url, "b", 4000))

        asyncio.run(post())
        answered = time.monotonic() - began
        wait_for(lambda: images_ok(a) + images_ok(b) == 10000, 300, 0.01)
        wait_for(lambda: set(samples(monitor).values()) == {10000}, 300, 0.01)
        applied = time.monotonic() - began
        state = server.client().hget("monitord:checkpoint", "state") or b""
        return {"ready": ready, "answered": answered, "applied": applied, "state_bytes": len(state)}
    finally:
        cluster.close()
        server.kill()


def takeover(folder: Path, artifact: Path) -> dict[str, float]:
    server = RedisServer(folder / "redis")
    server.start()
    cluster = Cluster(folder, server, SETTINGS, artifact)
    try:
        a, first, second = cluster.inference("a", start=False), cluster.monitor("m1", start=False), \
            cluster.monitor("m2", start=False)
        cluster.start_all(a, first, second)
        wait_for(lambda: cluster.active_monitor_port() is not None, 30)
        active = first if cluster.active_monitor_port() == first.port else second
        standby = second if active is first else first
        load = Load(digits(), per_request=8, concurrency=2)
        measured: dict[str, float] = {}

        async def run() -> None:
            stop = asyncio.Event()
            posting = asyncio.create_task(load.run(a.url, "a", 10 ** 6, stop=stop))
            await asyncio.sleep(3.0)  # steady load, checkpoints taken
            client = server.client()
            applied_before = int(client.get("monitord:applied") or 0)
            os.kill(active.process.pid, signal.SIGKILL)
            killed = time.monotonic()
            while cluster.active_monitor_port() != standby.port:
                assert time.monotonic() - killed < 60, "the standby did not take over"
                await asyncio.sleep(0.01)
            measured["lease"] = time.monotonic() - killed
            while int(client.get("monitord:applied") or 0) <= applied_before:
                assert time.monotonic() - killed < 60, "the standby applied nothing"
                await asyncio.sleep(0.01)
            measured["applying"] = time.monotonic() - killed
            stop.set()
            await posting

        asyncio.run(run())
        wait_for(cluster.drained, 120)
        measured["exact"] = float(set(samples(standby).values()) == {images_ok(a)})
        return measured
    finally:
        cluster.close()
        server.kill()


def redis_crash(folder: Path, artifact: Path) -> dict[str, float]:
    server = RedisServer(folder / "redis")
    server.start()
    cluster = Cluster(folder, server, SETTINGS, artifact)
    try:
        a, monitor = cluster.inference("a", start=False), cluster.monitor("m", start=False)
        cluster.start_all(a, monitor)
        load = Load(digits(), per_request=8, concurrency=4)
        measured: dict[str, float] = {}

        async def run() -> None:
            stop = asyncio.Event()
            posting = asyncio.create_task(load.run(a.url, "a", 10 ** 6, stop=stop))
            await asyncio.sleep(3.0)
            answered_before = len(load.ok())
            started = time.monotonic()
            server.kill()
            killed = time.monotonic()
            measured["answered_before_crash"] = answered_before
            server.start()
            measured["down"] = time.monotonic() - killed
            await asyncio.sleep(3.0)
            stop.set()
            await posting
            measured["load_seconds"] = time.monotonic() - started

        asyncio.run(run())
        wait_for(cluster.drained, 120)
        applied = {record["id"] for record in predictions_log(monitor)}
        lost = load.ok() - applied
        measured["answered"] = len(load.ok())
        measured["lost"] = len(lost)
        return measured
    finally:
        cluster.close()
        server.kill()


def steps(folder: Path, state_bytes: int, repeats: int = 300) -> dict[str, float]:
    """Median milliseconds of each Redis step, one connection, in this process."""
    import numpy as np

    from monitord.items import Prediction
    from monitord.metrics import Metrics
    from monitord.settings import Settings
    from monitord.transport.contract import TransportContext
    from monitord.transport.entries import PredictionBatch
    from monitord_redis.transport import RedisTransport

    server = RedisServer(folder / "redis")
    server.start()

    async def run() -> dict[str, float]:
        settings = Settings(_env_file=None, bus={"url": server.url})
        transport = RedisTransport(TransportContext(settings, folder, "bench:1", Metrics()))
        await transport.start()
        try:
            values = np.linspace(0.1, 0.9, 64)
            predictions = [Prediction(f"bench-{i}", "http", "3", 3, float(values[i]),
                                      {name: float(values[i]) for name in ("confidence", "entropy", "margin")},
                                      "2026-12-04T00:00:00.000+00:00") for i in range(64)]
            batch = PredictionBatch(predictions, {name: values for name in ("confidence", "entropy", "margin")}, "b")
            timings: dict[str, list[float]] = {"xadd": [], "commit": [], "trim": []}
            for _ in range(repeats):
                began = time.perf_counter()
                await transport.publish(batch)
                timings["xadd"].append(time.perf_counter() - began)
            link = transport.monitor_link()
            await link.acquire()
            state = json.dumps({"pad": "x" * max(0, state_bytes - 12)}).encode()
            for _ in range(repeats):
                began = time.perf_counter()
                await link._commit(keys=[link._keys.lease, link._keys.checkpoint],
                                   args=[link.lease.token, "0-1", state, "", "bench", "now"])
                timings["commit"].append(time.perf_counter() - began)
            for _ in range(5):
                for _ in range(1000):
                    await transport.publish(batch)
                last = (await transport.client.xrevrange("monitord:entries", count=1))[0][0].decode()
                began = time.perf_counter()
                await transport.client.xtrim("monitord:entries", minid=last, approximate=True, limit=1000)
                timings["trim"].append(time.perf_counter() - began)
            return {name: statistics.median(values) * 1000 for name, values in timings.items()} | {
                "entry_bytes": len(batch.encode())}
        finally:
            await transport.close()

    try:
        return asyncio.run(run())
    finally:
        server.kill()


def describe(runs: list[dict[str, float]], key: str, digits_after: int = 2) -> str:
    values = [run[key] for run in runs]
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.{digits_after}f}"
    return f"{median:.{digits_after}f} ({min(values):.{digits_after}f}–{max(values):.{digits_after}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--results", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="monitord-redis-bench-") as scratch:
        root = Path(scratch)
        artifact = trained_artifact(root / "artifact")
        fast = [throughput(root / f"throughput-{i}", artifact) for i in range(options.runs)]
        print("throughput", fast, flush=True)
        over = [takeover(root / f"takeover-{i}", artifact) for i in range(options.runs)]
        print("takeover", over, flush=True)
        crashes = [redis_crash(root / f"crash-{i}", artifact) for i in range(options.runs)]
        print("redis crash", crashes, flush=True)
        step = steps(root / "steps", int(statistics.median(run["state_bytes"] for run in fast)))
        print("steps", step, flush=True)
    runs = options.runs
    lines = [
        "## Scaling out over Redis (issue 16)",
        "",
        "`benchmarks/redis_scale_out.py` runs real `monitord run` processes on a real redis-server 7.0",
        "(append-only file, `appendfsync everysec`), each process in a folder of its own as if on a",
        "host of its own, with the digits model and two PHT detectors. Medians, range in brackets,",
        f"{runs} runs each.",
        "",
        f"{utc_now()}; {machine_line()}",
        "",
        f"`python benchmarks/redis_scale_out.py --runs {runs} --results`",
        "",
        "| | |",
        "|---|---:|",
        f"| two inference processes and a monitor ready, started together (s) | {describe(fast, 'ready')} |",
        f"| 10,000 images (8,000 over HTTP, 1,000 per inbox): all answered (s) | {describe(fast, 'answered')} |",
        f"| ... all applied to both detectors by the monitor (s) | {describe(fast, 'applied')} |",
        f"| checkpointed state after them (bytes) | {describe(fast, 'state_bytes', 0)} |",
        f"| kill -9 of the active monitor → the standby holds the lease (s; lease_seconds 5) | "
        f"{describe(over, 'lease')} |",
        f"| ... → the standby applied its first entry (s) | {describe(over, 'applying')} |",
        f"| ... detector samples exact afterwards (runs) | {sum(int(run['exact']) for run in over)} of {runs} |",
        f"| kill -9 of redis-server under load, restarted at once: images answered 200 | "
        f"{describe(crashes, 'answered', 0)} |",
        f"| ... of which never applied (lost) | "
        f"{describe(crashes, 'lost', 0)} |",
        f"| one XADD of a batch of 64 ({step['entry_bytes']:,.0f} bytes), one connection (ms) | {step['xadd']:.3f} |",
        f"| the checkpoint script with a state of that size (ms) | {step['commit']:.3f} |",
        f"| one trimming step of 1,000 entries (ms) | {step['trim']:.3f} |",
        "",
        TAKEOVER_NOTE,
        *(["", NO_LOSS_NOTE] if all(run["lost"] == 0 for run in crashes) else []),
        "",
        STATE_NOTE,
    ]
    section = "\n".join(lines)
    print(section)
    if options.results:
        replace_section(RESULTS, "## Scaling out over Redis (issue 16)", section)


if __name__ == "__main__":
    main()
