"""``pipeline.workers``: ingest processes beside the main one, on the real daemon over real HTTP.

What must hold: the workers (not the main process) take the connections on the public
port; every prediction a worker makes reaches the main process's detectors, metrics and
predictions log exactly once; every other route works through a worker; a worker that
dies is started again; a stop answers what is in flight; the main process dying takes
the workers with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from daemon_process import DaemonProcess, free_port, wait_for
from digit_files import held_out_pngs
from installed_plugin import install_testplugin

WORKERS = 2
SETTINGS = f"""
sources = ["http"]
[pipeline]
workers = {WORKERS}
max_batch_size = 8
"""


def worker_pids(main_pid: int) -> list[int]:
    """The main process's children (its ingest workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == main_pid:
                pids.append(int(entry.name))
    return pids


def connection_owners(port: int, pids: list[int]) -> dict[int, int]:
    """How many established server-side connections on ``port`` each of ``pids`` holds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED, the server's side
                inodes.add(fields[9])
    owners: dict[int, int] = {}
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        owners[pid] = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
    return owners


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, digits_artifact: Path):
    process = DaemonProcess(tmp_path_factory.mktemp("workers"), free_port(), artifact=digits_artifact,
                            extra_settings=SETTINGS)
    process.start()
    yield process
    assert process.terminate() == 0
    process.kill()


def form(pngs: list[bytes]) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for index, png in enumerate(pngs):
        data.add_field("image", png, filename=f"{index}.png", content_type="image/png")
    return data


def detector_samples(server: DaemonProcess) -> dict[str, int]:
    """Samples of each detector fed by predictions (not by labels: signal ``error``)."""
    import urllib.request

    with urllib.request.urlopen(server.url + "/v1/detectors", timeout=5) as response:
        detectors = json.loads(response.read())["detectors"]
    return {d["name"]: d["samples"] for d in detectors if d["signal"] != "error"}


async def test_workers_take_the_connections_and_every_prediction_reaches_the_detectors_once(
    server: DaemonProcess,
) -> None:
    assert server.process is not None
    main_pid = server.process.pid
    workers = worker_pids(main_pid)
    assert len(workers) == WORKERS, server.log()
    before = detector_samples(server)
    ok_before = server.metric("monitord_images_total", source="http", outcome="ok")
    digits = held_out_pngs(64)
    pngs = [png for _, png in digits]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def multipart(index: int) -> list[dict]:
            async with session.post(server.url + "/v1/predict", data=form(pngs[index::8]),
                                    params={"id": f"m{index}"}) as response:
                assert response.status == 200
                return (await response.json())["predictions"]

        async def raw(index: int) -> dict:
            async with session.post(server.url + "/v1/predict", data=pngs[index],
                                    headers={"Content-Type": "image/png"}) as response:
                assert response.status == 200
                return await response.json()

        # Many connections at once, so that both workers take some.
        results = await asyncio.gather(*(multipart(i) for i in range(8)), *(raw(i) for i in range(24)))
        owners = connection_owners(server.port, [main_pid, *workers])
    multipart_predictions = [p for batch in results[:8] for p in batch]
    assert len(multipart_predictions) == 64
    correct = sum(p["class"] == str(digits[int(p["id"][1:].split("-")[0]) + 8 * int(p["id"].split("-")[1])][0])
                  for p in multipart_predictions)
    assert correct >= 0.9 * 64
    # The main process accepts nothing on the public port: each connection is a worker's.
    assert owners[main_pid] == 0, owners
    assert sum(owners[pid] for pid in workers) > 0, owners
    sent = 64 + 24
    wait_for(lambda: server.metric("monitord_images_total", source="http", outcome="ok") - ok_before == sent,
             timeout=10, message="the workers' counts in /metrics")
    after = detector_samples(server)
    assert after, "no detector watches a prediction signal"
    assert {name: after[name] - before[name] for name in after} == {name: sent for name in after}
    assert server.metric("monitord_batch_size_count") > 0
    assert server.metric("monitord_end_to_end_duration_seconds_count") >= sent


async def test_the_predictions_log_gets_each_worker_prediction_once(server: DaemonProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + "/v1/predict", data=form([png for _, png in held_out_pngs(5)]),
                                params={"id": "logged"}) as response:
            assert response.status == 200
    log_file = server.state / "predictions.jsonl"

    def logged() -> list[str]:
        if not log_file.exists():
            return []
        return [json.loads(line)["id"] for line in log_file.read_text().splitlines() if line]

    wait_for(lambda: len([i for i in logged() if i.startswith("logged-")]) == 5, timeout=10,
             message="five log lines")
    assert sorted(i for i in logged() if i.startswith("logged-")) == [f"logged-{i}" for i in range(5)]


async def test_other_routes_pass_through_a_worker_to_the_main_process(server: DaemonProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + "/v1/predict", data=held_out_pngs(1)[0][1],
                                params={"id": "fb-1"}, headers={"Content-Type": "image/png"}) as response:
            predicted = (await response.json())["class"]
        async with session.post(server.url + "/v1/feedback", json={"id": "fb-1", "label": predicted}) as response:
            assert response.status == 200
            assert await response.json() == {"id": "fb-1", "outcome": "joined", "correct": True, "predicted": predicted}
        async with session.get(server.url + "/metrics") as response:
            assert response.status == 200
            assert "monitord_feedback_total" in await response.text()
        async with session.get(server.url + "/healthz") as response:
            assert response.status == 200 and (await response.json()) == {"status": "ok"}
        async with session.get(server.url + "/readyz") as response:
            assert response.status == 200 and (await response.json())["ready"] is True
        async with session.get(server.url + "/nowhere") as response:
            assert response.status == 404 and (await response.json())["status"] == 404
        async with session.get(server.url + "/v1/predict") as response:
            assert response.status == 405 and "error" in await response.json()
        async with session.post(server.url + "/v1/feedback", data=b"{not json",
                                headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400 and "error" in await response.json()
    assert server.metric("monitord_feedback_total", outcome="joined") == 1


async def test_bad_images_are_refused_by_a_worker_and_counted_by_the_main_process(server: DaemonProcess) -> None:
    rejected_before = server.metric("monitord_images_total", source="http", outcome="rejected")
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + "/v1/predict", data=b"not an image at all",
                                headers={"Content-Type": "image/png"}) as response:
            assert response.status == 422
            assert "error" in await response.json()
        async with session.post(server.url + "/v1/predict",
                                data=form([held_out_pngs(1)[0][1], b"\x89PNG\r\n\x1a\ntruncated"])) as response:
            assert response.status == 200
            body = await response.json()
    assert body["errors"] == 1 and body["predictions"][1]["status"] == 422
    wait_for(lambda: server.metric("monitord_images_total", source="http", outcome="rejected") - rejected_before == 2,
             timeout=10, message="two rejections counted")


def test_a_worker_that_dies_is_started_again(daemon) -> None:
    server = daemon(SETTINGS)
    assert server.process is not None
    first = sorted(worker_pids(server.process.pid))
    assert len(first) == WORKERS
    os.kill(first[0], signal.SIGKILL)
    wait_for(lambda: "exited unexpectedly" in server.log(), timeout=20, message="the restart notice")
    wait_for(lambda: len(worker_pids(server.process.pid)) == WORKERS and first[0] not in worker_pids(server.process.pid),
             timeout=60, message="a new worker")
    wait_for(lambda: server.log().count(") ingesting") >= WORKERS + 1, timeout=60,
             message="the new worker serving")
    import urllib.request

    png = held_out_pngs(1)[0][1]
    for _ in range(10):  # whichever process takes the connection answers
        request = urllib.request.Request(server.url + "/v1/predict", data=png, headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    assert server.terminate() == 0
    assert worker_pids(server.process.pid) == []


async def test_a_stop_answers_the_requests_in_flight(daemon) -> None:
    server = daemon(SETTINGS)
    assert server.process is not None
    pngs = [png for _, png in held_out_pngs(32)]
    async with aiohttp.ClientSession() as session:

        async def multipart(index: int) -> int:
            async with session.post(server.url + "/v1/predict", data=form(pngs)) as response:
                body = await response.json()
                assert response.status != 200 or body["count"] == 32
                return response.status

        requests = [asyncio.create_task(multipart(i)) for i in range(16)]
        await asyncio.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        statuses = await asyncio.gather(*requests)
    # Taken in before the stop: answered; arriving during it: told to come back.
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses
    assert server.process.wait(60) == 0
    assert "stopped" in server.log()


def test_workers_exit_when_the_main_process_is_killed(daemon) -> None:
    server = daemon(SETTINGS)
    assert server.process is not None
    workers = worker_pids(server.process.pid)
    assert len(workers) == WORKERS
    server.process.kill()
    server.process.wait(10)

    def gone(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        return stat[stat.rindex(")") + 2] == "Z"  # exited, waiting to be reaped by init

    wait_for(lambda: all(gone(pid) for pid in workers), timeout=30, message="the workers to exit")

    def port_free() -> bool:  # a supervisor restarting the daemon can listen again
        import socket

        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", server.port))
            except OSError:
                return False
            return True

    wait_for(port_free, timeout=10, message="the port to be free")


def test_workers_are_ignored_when_no_source_can_use_them(daemon, tmp_path: Path) -> None:
    """``ticker`` (the test plugin's source) is neither the http source nor partitioned:
    no worker process could run it, so none starts and the main process runs it."""
    env = install_testplugin(tmp_path / "site")
    server = daemon('sources = ["ticker"]\n[model]\ntype = "brightness"\n[pipeline]\nworkers = 2\n'
                    '[source_options.ticker]\ncount = 5\n', env=env)
    assert server.process is not None
    assert worker_pids(server.process.pid) == []
    assert "pipeline.workers = 2 ignored" in server.log()
    wait_for(lambda: server.metric("monitord_images_total", source="ticker", outcome="ok") == 5, timeout=20,
             message="the ticker's five images, counted by the main process")
    assert worker_pids(server.process.pid) == []
    assert server.terminate() == 0


def test_the_token_guards_the_workers_and_the_routes_they_pass_on(daemon) -> None:
    import urllib.error
    import urllib.request

    token = "worker-token-0123456789"
    server = daemon(SETTINGS + f'[http]\ntoken = "{token}"\n')

    def status(path: str, data: bytes | None = None, with_token: bool = False) -> int:
        headers = {"Content-Type": "image/png"} if data else {}
        if with_token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(server.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    png = held_out_pngs(1)[0][1]
    assert status("/v1/predict", png) == 401  # answered by a worker
    assert status("/v1/detectors") == 401  # passed on, answered by the main process
    assert status("/v1/predict", png, with_token=True) == 200
    assert status("/v1/detectors", with_token=True) == 200
    assert status("/healthz") == 200 and status("/metrics") == 200
