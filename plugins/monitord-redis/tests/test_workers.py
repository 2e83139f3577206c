"""``pipeline.workers = N``: one ``monitord run`` that supervises N inference processes and
a monitor on a private redis-server, behind one port, with one set of metrics."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from daemon_process import DaemonProcess, free_port, wait_for
from digit_files import drop_atomically, files_under, held_out_pngs
from redis_server import require_redis_server

from monitord.settings import Settings
from monitord.supervisor import Supervisor


def post(url: str, data: bytes, prediction_id: str) -> int:
    request = urllib.request.Request(f"{url}/v1/predict?id={prediction_id}", data=data,
                                     headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def children(daemon: DaemonProcess) -> list[int]:
    """The supervisor's children's pids (the inference processes, the monitor, redis-server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == daemon.process.pid:
                found.append(int(entry.name))
    return found


def inference_pids(daemon: DaemonProcess) -> list[int]:
    pids = []
    for pid in children(daemon):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"monitord" in command and b"MONITORD_ROLE=inference" in environ:
            pids.append(pid)
    return pids


def test_workers_share_a_port_an_inbox_and_one_set_of_metrics_and_come_back_after_a_kill(
        tmp_path: Path, digits_artifact: Path) -> None:
    require_redis_server()
    daemon = DaemonProcess(tmp_path, free_port(), artifact=digits_artifact,
                           extra_settings="[pipeline]\nworkers = 2\n[folder]\nsettle_seconds = 0.0\n")
    daemon.start(timeout=180)
    try:
        assert len(inference_pids(daemon)) == 2
        digits = held_out_pngs(60)
        for index, (label, data) in enumerate(digits[:40]):
            assert post(daemon.url, data, f"h{index}") == 200
        for index, (label, data) in enumerate(digits[40:]):
            drop_atomically(daemon.inbox, f"{label}/f{index}.png", data)
        wait_for(lambda: len(files_under(daemon.processed, "*.png")) == 20, 120, message="the 20 files processed")

        # One scrape answers for every process of the host; the monitor applied all 60 once.
        def applied() -> bool:
            try:
                with urllib.request.urlopen(daemon.url + "/v1/detectors", timeout=10) as response:
                    detectors = json.load(response)["detectors"]
            except urllib.error.HTTPError:  # 503 until the monitor has published its state
                return False
            return all(d["samples"] == 60 for d in detectors if d["signal"] != "error")

        wait_for(applied, 60, message="every image applied to every detector")
        assert daemon.metric("monitord_images_total", source="http", outcome="ok") == 40
        assert daemon.metric("monitord_images_total", source="folder", outcome="ok") == 20
        assert sum(v for (name, _), v in daemon.metrics().items() if name == "monitord_predictions_total") == 60
        # Each inference process took its share of the inbox (by a hash of the path).
        assert "share 1 of 2" in daemon.log() and "share 2 of 2" in daemon.log()
        logged = (daemon.state / "processes" / "monitor" / "predictions.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["id"] for line in logged) == sorted(
            [f"h{i}" for i in range(40)] + [str(p.relative_to(daemon.processed)) for p in files_under(daemon.processed)])

        # An inference process killed is started again; the port keeps answering meanwhile.
        victim = inference_pids(daemon)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(inference_pids(daemon)) == 2 and victim not in inference_pids(daemon), 120,
                 message="the killed inference process started again")
        wait_for(lambda: "exited with status -9" in daemon.log(), 10, message="the death logged")
        for index, (label, data) in enumerate(digits[:10]):
            assert post(daemon.url, data, f"after{index}") == 200
        assert daemon.terminate() == 0
        assert children(daemon) == []  # no process left behind, redis-server included
    finally:
        daemon.kill()


def test_workers_without_redis_say_what_to_install(tmp_path: Path, digits_artifact: Path) -> None:
    daemon = DaemonProcess(tmp_path, free_port(), artifact=digits_artifact, extra_settings="[pipeline]\nworkers = 2\n",
                           env={"PATH": str(tmp_path / "no-redis-here")})
    daemon.start(wait_ready=False)
    assert daemon.process.wait(60) == 2
    assert "install redis-server" in daemon.log() and "bus.url" in daemon.log()


def test_the_monitor_listens_on_loopback_only_and_its_alerts_name_the_shared_port(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, state_dir=tmp_path, http={"host": "0.0.0.0", "port": 8123},
                        pipeline={"workers": 2})
    monitor, *inference = Supervisor(settings, None)._plan("unix:///nowhere/redis.sock?db=0")
    assert monitor.env["MONITORD_ROLE"] == "monitor"
    assert (monitor.env["MONITORD_HTTP__HOST"], monitor.env["MONITORD_HTTP__PORT"]) == ("127.0.0.1", "0")
    instance = monitor.env["MONITORD_ALERTS__INSTANCE"]
    assert instance.endswith(":8123") and monitor.env["MONITORD_ALERTS__EXTERNAL_URL"] == f"http://{instance}"
    assert [child.env["MONITORD_FOLDER__SHARE"] for child in inference] == ["1/2", "2/2"]
