"""Build monitord's images, start a compose stack and check it from outside, as a user would.

    python ops/smoke.py [--stack single|scale|both] [--images local|public] [--keep]

``--images local`` (the default: Docker Hub is not reachable where CI runs) makes the Debian
base (ops/base-image) and the wheelhouse (ops/make-wheelhouse), then builds and starts each
stack through its compose file and the ``*.local.yml`` override, as the README says;
``public`` builds monitord from ``python:3.11-slim`` and pulls the public
Prometheus/Alertmanager/Redis images.

For each stack: ``up -d``; ``/readyz``; one predict; a file dropped into the inbox volume is
processed; Prometheus's ``monitord`` targets are up and the shipped rules loaded; inverted
digits drive a detector to drift, Prometheus's ``MonitordDriftDetected`` fires and
Alertmanager holds it (and the daemon's own ``MonitordDrift``); then ``down -v`` leaves no
container, volume or network of the project. Every wait polls for its condition. Exits 0 when
all held, 1 when a check failed, 3 when no Docker engine answers. The status page answers
on every process, and the Evidently report (single stack) finds the inverted digits' drift.
Grafana is not started (it has no Debian package; its image cannot be pulled here).

Needs the project's Python environment (the digits come from monitord_torchvision) and, for
the rules, PyYAML: run it with ``.venv/bin/python``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "ops"
BASE_IMAGE = "monitord-base:bookworm"
MONITORD_IMAGE = "monitord:latest"
#: Generous: a first start trains the digits model and calibrates the detectors on 2 cores.
READY_DEADLINE = 600.0
ALERT_DEADLINE = 300.0


class SmokeFailure(Exception):
    """A check of the stack did not hold; the message says which and what was seen."""


@dataclass
class Stack:
    """One compose stack: its files, its project name, and where its services answer."""

    name: str
    project: str
    compose_file: str
    local_override: str
    inference: dict[str, int]  # service → published port of an inference (or all-in-one) process
    monitor_port: int  # where /v1/detectors answers
    inbox_service: str
    targets: int  # Prometheus targets of job monitord
    report_port: int | None  # where GET /v1/report has the predictions log and the model
    timings: dict[str, float] = field(default_factory=dict)


STACKS = {
    "single": Stack("single", "monitord-smoke", "docker-compose.yml", "docker-compose.local.yml",
                    {"monitord": 8000}, 8000, "monitord", 1, 8000),
    "scale": Stack("scale", "monitord-smoke-scale", "docker-compose.scale.yml", "docker-compose.scale.local.yml",
                   {"inference-a": 8001, "inference-b": 8002}, 8010, "inference-a", 3, None),
}


def log(message: str) -> None:
    print(f"smoke [{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(*command: str, capture: bool = False, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    result = subprocess.run(command, text=True, capture_output=capture, **kwargs)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip()[-2000:] if capture else ""
        raise SmokeFailure(f"{' '.join(command)} exited {result.returncode} {detail}")
    return result


def compose_command() -> list[str]:
    """Compose v2 (``docker compose``) where installed, else v1 (``docker-compose``, Debian's)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise SmokeFailure("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")


def wait_for(what: str, condition: Callable[[], Any], deadline: float, on_timeout: Callable[[], str] = lambda: "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``deadline`` s."""
    end = time.monotonic() + deadline
    last_error = ""
    while time.monotonic() < end:
        try:
            result = condition()
            if result:
                return result
        except (OSError, ValueError, KeyError, urllib.error.URLError) as error:
            last_error = f"{type(error).__name__}: {error}"
        time.sleep(1.0)
    raise SmokeFailure(f"timed out after {deadline:.0f} s waiting for {what} {last_error} {on_timeout()}".strip())


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def get_json(url: str) -> Any:
    status, body = http(url)
    if status != 200:
        raise ValueError(f"GET {url}: HTTP {status} {body[:200]!r}")
    return json.loads(body)


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, data in files:
        body.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                   "Content-Type: image/png\r\n\r\n".encode())
        body.write(data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def digits(inverted: bool) -> list[tuple[int, bytes]]:
    """Held-out digits as PNGs; inverted (white on black) ones are what the model never saw."""
    from monitord_torchvision.digits import digit_png_bytes, held_out_digits

    images, labels = held_out_digits()
    if inverted:
        images = (255 - images).astype(np.uint8)
    return [(int(label), digit_png_bytes(image)) for image, label in zip(images, labels)]


# --- building ----------------------------------------------------------------------------------

def build_images(images: str, stacks: list[Stack], timings: dict[str, float]) -> None:
    """Build as the README's ``up --build`` does: through each stack's compose files (and
    their ``local`` override), so the build sections users run are the ones checked."""
    started = time.monotonic()
    if images == "local":
        run(str(OPS / "base-image"), BASE_IMAGE)
        timings["base image"] = time.monotonic() - started
        started = time.monotonic()
        if not any((ROOT / "wheelhouse").glob("torch-*.whl")):
            run(str(OPS / "make-wheelhouse"), os.environ.get("MONITORD_SMOKE_PIP", str(Path(sys.executable).parent / "pip")))
        timings["wheelhouse"] = time.monotonic() - started
    built_monitord = False
    for stack in stacks:
        # The monitord image is the same in both stacks: once built, the scaled-out stack
        # builds only what it adds (Redis, from the local base).
        services = ["redis"] if built_monitord and images == "local" else []
        if built_monitord and not services:
            continue
        started = time.monotonic()
        log(f"{stack.name}: building {' '.join(services) or 'every image'} ({images})")
        RunningStack(stack, images)("build", *services)
        timings[f"{stack.name} images"] = time.monotonic() - started
        built_monitord = True
    size = run("docker", "image", "inspect", "-f", "{{.Size}}", MONITORD_IMAGE, capture=True).stdout.strip()
    log(f"{MONITORD_IMAGE}: {int(size) / 1e9:.2f} GB")


# --- checking a running stack -------------------------------------------------------------------

class RunningStack:
    def __init__(self, stack: Stack, images: str) -> None:
        self.stack = stack
        files = ["-f", str(OPS / stack.compose_file)]
        if images == "local":
            files += ["-f", str(OPS / stack.local_override)]
        self.compose = [*compose_command(), "-p", stack.project, *files]

    def __call__(self, *args: str, capture: bool = True, check: bool = True) -> subprocess.CompletedProcess:
        return run(*self.compose, *args, capture=capture, check=check)

    def logs(self) -> str:
        return "\n--- compose logs (tail) ---\n" + self("logs", "--no-color", "--tail", "40", check=False).stdout

    def container(self, service: str) -> str:
        return self("ps", "-q", service).stdout.strip()

    def up(self) -> None:
        # Grafana is left out: its image cannot be pulled here and has no Debian package.
        services = [s for s in self("config", "--services").stdout.split() if s != "grafana"]
        self("up", "-d", "--no-build", *services)

    def down(self) -> None:
        self("down", "-v", "--remove-orphans", "--timeout", "20", check=False)

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.stack.project}"
        found = []
        for kind in (["ps", "-a", "-q"], ["volume", "ls", "-q"], ["network", "ls", "-q"]):
            out = run("docker", *kind, "--filter", label, capture=True).stdout.split()
            found += [f"{kind[0]} {name}" for name in out]
        return found


def check_ready(running: RunningStack) -> None:
    ports = sorted({*running.stack.inference.values(), running.stack.monitor_port})
    for port in ports:
        wait_for(f"/readyz on :{port}", lambda: http(f"http://127.0.0.1:{port}/readyz")[0] == 200,
                 READY_DEADLINE, running.logs)
        log(f":{port} ready")
    # The monitor publishes its detectors once it has built (calibrated) them.
    wait_for("/v1/detectors", lambda: get_json(f"http://127.0.0.1:{running.stack.monitor_port}/v1/detectors")["detectors"],
             READY_DEADLINE, running.logs)


def check_predict(running: RunningStack, clean: list[tuple[int, bytes]]) -> None:
    for service, port in running.stack.inference.items():
        label, png = clean[0]
        status, body = http(f"http://127.0.0.1:{port}/v1/predict?id=smoke-{service}&label={label}", png,
                            {"Content-Type": "image/png"})
        if status != 200:
            raise SmokeFailure(f"POST /v1/predict on {service}: HTTP {status} {body[:300]!r}")
        prediction = json.loads(body)
        if "class" not in prediction or not 0 <= prediction["confidence"] <= 1:
            raise SmokeFailure(f"POST /v1/predict on {service}: no prediction in {prediction}")
        log(f"{service} predicted class {prediction['class']} for a {label} ({prediction['confidence']:.2f})")


def folder_images(port: int) -> float:
    status, body = http(f"http://127.0.0.1:{port}/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("monitord_images_total{") and 'source="folder"' in line and 'outcome="ok"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def check_inbox(running: RunningStack, clean: list[tuple[int, bytes]]) -> None:
    service = running.stack.inbox_service
    container = running.container(service)
    label, png = clean[1]
    # The label's folder made by the container's user first: docker cp creates folders as
    # root, and the daemon could then not move the file out of it.
    run("docker", "exec", container, "mkdir", "-p", f"/var/lib/monitord/inbox/{label}", capture=True)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "smoke.png").write_bytes(png)
        run("docker", "cp", str(Path(folder) / "smoke.png"), f"{container}:/var/lib/monitord/inbox/{label}/smoke.png",
            capture=True)
    port = running.stack.inference[service]
    wait_for("the inbox file processed", lambda: folder_images(port) >= 1, 120, running.logs)
    processed = f"/var/lib/monitord/state/processed/{label}/smoke.png.json"
    wait_for(f"{processed} in the state volume and the file gone from the inbox",
             lambda: run("docker", "exec", container, "sh", "-c",
                         f"test -f {processed} && ! test -e /var/lib/monitord/inbox/{label}/smoke.png",
                         check=False).returncode == 0,
             60, running.logs)
    log(f"inbox/{label}/smoke.png processed into {processed}")


def check_prometheus(running: RunningStack) -> None:
    def targets_up() -> bool:
        active = get_json("http://127.0.0.1:9090/api/v1/targets")["data"]["activeTargets"]
        ours = [t for t in active if t["labels"].get("job") == "monitord"]
        return len(ours) == running.stack.targets and all(t["health"] == "up" for t in ours)

    wait_for(f"{running.stack.targets} Prometheus target(s) of job monitord up", targets_up, 120, running.logs)
    shipped = yaml.safe_load((ROOT / "configs" / "prometheus_rules.yaml").read_text())
    wanted = {rule.get("alert") or rule.get("record") for group in shipped["groups"] for rule in group["rules"]}
    groups = get_json("http://127.0.0.1:9090/api/v1/rules")["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    if wanted - loaded:
        raise SmokeFailure(f"Prometheus did not load the shipped rules {sorted(wanted - loaded)}")
    log(f"Prometheus: target(s) up, {len(loaded)} shipped rules loaded")


def drifting(port: int) -> list[str]:
    detectors = get_json(f"http://127.0.0.1:{port}/v1/detectors")["detectors"]
    return [d["name"] for d in detectors if d.get("level") == "drift"]


def alertmanager_alerts(name: str) -> list[dict]:
    alerts = get_json("http://127.0.0.1:9093/api/v2/alerts")
    return [a for a in alerts if a["labels"].get("alertname") == name and a["status"]["state"] == "active"]


def check_drift_alert(running: RunningStack, inverted: list[tuple[int, bytes]]) -> None:
    started = time.monotonic()
    ports = list(running.stack.inference.values())
    sent = 0
    # Inverted digits in batches of 40, round-robin over the inference processes, until a
    # detector reaches drift (a few hundred at most with the default detectors).
    while not drifting(running.stack.monitor_port):
        if sent >= 3 * len(inverted):
            raise SmokeFailure(f"no detector reached drift after {sent} inverted digits: "
                               f"{get_json(f'http://127.0.0.1:{running.stack.monitor_port}/v1/detectors')}")
        batch = [(f"{sent + i}.png", inverted[(sent + i) % len(inverted)][1]) for i in range(40)]
        body, content_type = multipart(batch)
        status, answer = http(f"http://127.0.0.1:{ports[(sent // 40) % len(ports)]}/v1/predict", body,
                              {"Content-Type": content_type})
        if status != 200:
            raise SmokeFailure(f"multipart POST /v1/predict: HTTP {status} {answer[:300]!r}")
        sent += len(batch)
    log(f"drift after {sent} inverted digits: {drifting(running.stack.monitor_port)}")

    def prometheus_firing() -> bool:
        alerts = get_json("http://127.0.0.1:9090/api/v1/alerts")["data"]["alerts"]
        return any(a["labels"]["alertname"] == "MonitordDriftDetected" and a["state"] == "firing" for a in alerts)

    wait_for("Prometheus firing MonitordDriftDetected", prometheus_firing, ALERT_DEADLINE, running.logs)
    wait_for("Alertmanager holding MonitordDriftDetected", lambda: alertmanager_alerts("MonitordDriftDetected"),
             ALERT_DEADLINE, running.logs)
    wait_for("Alertmanager holding the daemon's own MonitordDrift", lambda: alertmanager_alerts("MonitordDrift"),
             ALERT_DEADLINE, running.logs)
    running.stack.timings["drift to alert"] = time.monotonic() - started
    log("MonitordDriftDetected fired in Prometheus and reached Alertmanager, with the daemon's MonitordDrift")


def check_pages(running: RunningStack) -> None:
    """The status page and its data; the Evidently report where the predictions log and the model are."""
    for port in sorted({*running.stack.inference.values(), running.stack.monitor_port}):
        status, body = http(f"http://127.0.0.1:{port}/")
        if status != 200 or b"<title>monitord status</title>" not in body:
            raise SmokeFailure(f"GET / on :{port}: HTTP {status} {body[:200]!r}")
        get_json(f"http://127.0.0.1:{port}/v1/status")
    log("status page and /v1/status answer on every process")
    if running.stack.report_port is None:
        return
    url = f"http://127.0.0.1:{running.stack.report_port}/v1/report?format=json"
    report = wait_for("/v1/report", lambda: get_json(url), 120, running.logs)
    if not report["drifted"]:
        raise SmokeFailure(f"the Evidently report on the inverted digits found no drift: {report['signals']}")
    log(f"Evidently report: drift on {', '.join(report['drifted'])}")


def check_stack(stack: Stack, images: str, keep: bool, clean: list, inverted: list) -> None:
    running = RunningStack(stack, images)
    running.down()  # a stack left by an interrupted run
    started = time.monotonic()
    try:
        log(f"{stack.name}: up ({' '.join(running.compose)})")
        running.up()
        check_ready(running)
        stack.timings["up to ready"] = time.monotonic() - started
        check_predict(running, clean)
        check_inbox(running, clean)
        check_prometheus(running)
        check_drift_alert(running, inverted)
        check_pages(running)
    finally:
        if not keep:
            started_down = time.monotonic()
            running.down()
            stack.timings["down"] = time.monotonic() - started_down
            left = running.leftovers()
            if left:
                raise SmokeFailure(f"`down -v` left {left}")
            log(f"{stack.name}: down -v, nothing left")


def engine_answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", choices=["single", "scale", "both"], default="both")
    parser.add_argument("--images", choices=["local", "public"], default="local")
    parser.add_argument("--keep", action="store_true", help="leave the stack running (and its volumes)")
    parser.add_argument("--no-build", action="store_true", help="use the images already built")
    options = parser.parse_args(argv)
    if not engine_answers():
        print("smoke: NO DOCKER ENGINE ANSWERS (`docker info` failed): the image and the compose stacks "
              "were not built or started", file=sys.stderr)
        return 3
    stacks = [STACKS[name] for name in (["single", "scale"] if options.stack == "both" else [options.stack])]
    timings: dict[str, float] = {}
    started = time.monotonic()
    # Debian's engine 20.10 with a newer client has no buildx: the legacy builder builds.
    os.environ.setdefault("DOCKER_BUILDKIT", "0")
    try:
        if not options.no_build:
            build_images(options.images, stacks, timings)
        clean, inverted = digits(inverted=False), digits(inverted=True)
        for stack in stacks:
            stack_started = time.monotonic()
            check_stack(stack, options.images, options.keep, clean, inverted)
            timings[f"{stack.name} stack"] = time.monotonic() - stack_started
            timings.update({f"{stack.name}: {k}": v for k, v in stack.timings.items()})
    except SmokeFailure as failure:
        print(f"smoke: FAILED: {failure}", file=sys.stderr)
        return 1
    timings["total"] = time.monotonic() - started
    log("passed; " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
