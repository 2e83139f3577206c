"""Sustained overload against the real daemon: bounded, honest refusals and flat memory.

The load comes from ``benchmarks/overload.py`` in its own process (so the clients do not
share this interpreter's GIL, and the benchmark and this test run the same scenario):
24 clients post multipart batches of 8 digits back to back, with no back-off, for 20 s,
to a daemon that queues at most 16 images and serves at most 12 predict requests at once
— far past what it can classify on any machine. What must hold whatever the machine's
speed: some requests are refused, each with 429 or 503 and Retry-After; every accepted
request gets a prediction per image; nothing else comes back (no 500, no dropped
connection); ``/healthz`` answers every probe during the load and after; the daemon's
resident memory after the 6 s warm-up stays within 20 % of its level at the end of it;
and its peak stays under the bound ``monitord.memory_bound`` computes for its settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from daemon_process import DaemonProcess, free_port

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "overload.py"


def test_sustained_overload_is_refused_with_retry_after_and_memory_stays_flat(
    tmp_path: Path, digits_artifact: Path
) -> None:
    daemon = DaemonProcess(
        tmp_path, free_port(), artifact=digits_artifact,
        extra_settings='sources = ["http"]\n[http]\nmax_concurrent_requests = 12\n[pipeline]\nqueue_size = 16\n',
        env={"MONITORD_LOG_LEVEL": "INFO"},
    )
    try:
        daemon.start()
        assert daemon.process is not None
        out = tmp_path / "overload.json"
        run = subprocess.run(
            [sys.executable, str(BENCHMARK), "--url", daemon.url, "--pid", str(daemon.process.pid),
             "--seconds", "20", "--warmup", "6", "--light-seconds", "0", "--clients", "24", "--batch", "8",
             "--config", str(daemon.config), "--json", str(out)],
            capture_output=True, text=True, timeout=120, env=daemon.env,  # the daemon's settings, all of them
        )
        assert run.returncode == 0, run.stderr
        print(run.stdout)
        result = json.loads(out.read_text())
        load = result["overload"]

        assert set(load["by_status"]) <= {"200", "429", "503"}, (load["by_status"], load["errors"])
        assert load["refused"] > 0 and load["accepted"] > 0
        assert load["refused_without_retry_after"] == 0
        assert load["invalid_answers"] == 0  # each 200 has 8 predictions, each refusal a JSON reason

        rss = result["rss_kb"]
        assert rss["max_after_warmup"] <= 1.2 * rss["steady"], rss
        bound = result["memory_bound"]
        assert bound["within"] and bound["peak_bytes"] >= rss["max_after_warmup"] * 1024, bound

        health = result["healthz"]
        assert health["probes"] >= 30 and health["failed"] == 0 and health["after"] == 200

        throttled = daemon.metric("monitord_images_total", source="http", outcome="throttled")
        assert throttled >= load["refused"]  # one or more images counted per refused request
        assert daemon.metric("monitord_images_total", source="http", outcome="error") == 0
        assert daemon.terminate() == 0
        assert "Traceback" not in daemon.log()
    finally:
        daemon.kill()
