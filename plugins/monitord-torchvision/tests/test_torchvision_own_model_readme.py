"""The README's "Your own model" walkthrough, pasted into a shell as a user would.

The commands of its code block run through bash in an empty folder (with ``.venv`` the
environment running the tests): samples written, a ResNet-18 trained with ``monitord
train --data``, a reference built with ``monitord reference``; then ``monitord run`` as
written (on a free port), and what the paragraph after it says: ``/readyz`` names the
reference, and rotated digits copied into the inbox bring a detector to drift.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

README = Path(__file__).resolve().parents[3] / "README.md"
CORE_TESTS = README.parent / "tests"
if str(CORE_TESTS) not in sys.path:
    sys.path.insert(0, str(CORE_TESTS))

from daemon_process import free_port, wait_for  # noqa: E402


def walkthrough() -> tuple[str, str, str]:
    """(the commands before ``monitord run``, the ``monitord run`` line, the follow-up commands)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Your own model", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    lines = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    run = next(index for index, line in enumerate(lines) if "monitord run" in line)
    follow = re.search(r"`(\.venv/bin/monitord samples rotated[^`]*)`", section.replace("\n", " "))
    assert follow, "the walkthrough no longer says how to send rotated digits"
    return "\n".join(lines[:run]), lines[run], follow.group(1)


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def test_the_own_model_walkthrough_works_when_pasted(tmp_path: Path) -> None:
    before_run, run_line, follow_up = walkthrough()
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = {key: value for key, value in os.environ.items() if not key.startswith("MONITORD_")}
    env["MONITORD_MODEL__DEVICE"] = "cpu"
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", before_run], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "drift reference: the 200 validation images" in done.stdout
    assert "wrote the reference to models/digits-resnet18/reference" in done.stdout

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "run.log"
    with log.open("wb") as output:
        daemon = subprocess.Popen(["bash", "-c", f"exec env MONITORD_HTTP__PORT={port} {run_line}"], cwd=tmp_path,
                                  env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            assert daemon.poll() is None, log.read_text(errors="replace")
            try:
                return get(url + "/readyz")["ready"]
            except OSError:
                return False

        wait_for(ready, 180, message=f"readiness:\n{log.read_text(errors='replace')}")
        reference = get(url + "/readyz")["reference"]
        assert reference["source"] == "artifact" and reference["samples"] == 300
        sent = subprocess.run(["bash", "-euo", "pipefail", "-c", follow_up], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert sent.returncode == 0, sent.stdout + sent.stderr

        def seen_all() -> bool:
            found = {d["type"]: d for d in get(url + "/v1/detectors")["detectors"]}
            return found["pht"]["samples"] == 300

        wait_for(seen_all, 180, message="300 rotated digits classified")
        levels = {d["name"]: d["level"] for d in get(url + "/v1/detectors")["detectors"]}
        assert levels["nm_ddm_activation_mean_activation_std"] == "drift", levels
    finally:
        daemon.terminate()
        daemon.wait(60)
    assert shlex.split(run_line)[0].startswith("MONITORD_MODEL__ARTIFACT=")
