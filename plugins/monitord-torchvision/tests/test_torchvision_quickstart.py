"""The README's quick start, followed as a user follows it (issue 15, item 8).

One test runs it against the real daemon: ``monitord samples`` writes digits, which are
posted to ``/v1/predict`` (raw and multipart) and dropped into the inbox, and the answers
are right. The other reads the quick start out of README.md, runs the ``monitord
samples`` command written there, and checks that every file the commands after it send
or copy exists, so the README cannot name an image that nobody wrote again.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from monitord_torchvision import plugin

README = Path(__file__).resolve().parents[3] / "README.md"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers or {}), timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until(condition, what: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n{log.read_text(errors='replace')}"
        time.sleep(0.1)


def multipart(files: list[Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
        for path in files
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_the_quick_start_against_the_daemon(tmp_path: Path, artifact_dir: Path) -> None:
    """In a fresh folder: ``monitord run`` (the trained model given, to spare the training),
    ``monitord samples samples``, then what the quick start sends."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MONITORD_")}
    env.update(MONITORD_HTTP__PORT=str(port), MONITORD_MODEL__ARTIFACT=str(artifact_dir), MONITORD_MODEL__DEVICE="cpu")
    log = tmp_path / "daemon.log"
    with log.open("wb") as output:
        daemon = subprocess.Popen([sys.executable, "-m", "monitord", "run"], cwd=tmp_path, env=env,
                                  stdout=output, stderr=subprocess.STDOUT)
    try:
        made = subprocess.run([sys.executable, "-m", "monitord", "samples", "samples"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stdout + made.stderr
        samples = sorted((tmp_path / "samples").rglob("*.png"))
        assert len(samples) == 20
        wait_until(lambda: request(url + "/readyz")[0] == 200, "ready daemon", log)

        status, body = request(url + "/v1/predict?id=first", (tmp_path / "samples/5/0.png").read_bytes(),
                               {"Content-Type": "image/png"})
        assert status == 200, body
        first = json.loads(body)
        assert (first["id"], first["class"]) == ("first", "5")

        data, content_type = multipart(samples)
        status, body = request(url + "/v1/predict", data, {"Content-Type": content_type})
        assert status == 200, body
        answer = json.loads(body)
        assert answer["count"] == 20 and answer["errors"] == 0
        classes = [prediction["class"] for prediction in answer["predictions"]]
        assert sum(c == path.parent.name for c, path in zip(classes, samples)) >= 19  # 98 % held-out accuracy

        (tmp_path / "inbox" / "5").mkdir(parents=True)
        shutil.copy(tmp_path / "samples/5/1.png", tmp_path / "inbox/5/")
        prediction = tmp_path / "processed/5/1.png.json"
        wait_until(prediction.is_file, "processed/5/1.png.json", log)
        record = json.loads(prediction.read_text())
        assert (record["class"], record["label"], record["correct"]) == ("5", "5", True)
        assert (tmp_path / "processed/5/1.png").is_file() and not (tmp_path / "inbox/5/1.png").exists()

        status, body = request(url + "/v1/feedback", b'{"id": "first", "label": "5"}',
                               {"Content-Type": "application/json"})
        assert status == 200, body
        status, body = request(url + "/v1/detectors")
        assert status == 200 and {d["name"] for d in json.loads(body)["detectors"]} >= {"pht_confidence"}
        status, body = request(url + "/metrics")
        assert status == 200 and re.search(rb'monitord_images_total\{outcome="ok",source="folder"\} 1\.0', body)
    finally:
        daemon.terminate()
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


# -- the README itself -------------------------------------------------------------------------------


def quick_start_commands() -> list[str]:
    """The command lines of the README's quick start code blocks, without comments."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README.md has no '## Quick start' section"
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", section.group(1), re.M | re.S)
    lines = []
    for block in blocks:
        for line in block.splitlines():
            command = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
            if command:
                lines.append(command)
    return lines


def samples_arguments(commands: list[str]) -> list[str]:
    """The arguments of the quick start's ``monitord samples`` (after ``samples``)."""
    for command in commands:
        words = shlex.split(command)
        for at, word in enumerate(words[:-1]):
            if word.endswith("monitord") and words[at + 1] == "samples":
                return words[at + 2 :]
    raise AssertionError(f"the README's quick start runs no `monitord samples` command: {commands}")


def used_files(commands: list[str]) -> list[str]:
    """Files the commands read: curl's ``@file`` (``--data-binary``, ``-F``) and ``cp``'s sources."""
    found = []
    for command in commands:
        for part in command.split("&&"):
            words = shlex.split(part)
            found += [word.split("@", 1)[1] for word in words if "@" in word and not word.startswith("http")]
            if words and words[0] == "cp":
                found += [word for word in words[1:-1] if not word.startswith("-")]
    return found


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> click.Group:
    monkeypatch.chdir(tmp_path)
    group = click.Group("monitord")
    plugin.register_commands(group)
    return group


def test_every_file_the_readme_quick_start_uses_is_written_by_its_samples_command(
    cli: click.Group, tmp_path: Path
) -> None:
    commands = quick_start_commands()
    result = CliRunner().invoke(cli, ["samples", *samples_arguments(commands)])
    assert result.exit_code == 0, result.output
    files = used_files(commands)
    assert len(files) >= 3, f"expected the quick start to send and copy sample files: {commands}"
    missing = [name for name in files if not (tmp_path / name).is_file()]
    assert not missing, f"the README's quick start uses files `monitord samples` does not write: {missing}"
