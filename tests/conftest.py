"""Shared fixtures: a trained default model, digit images, and the daemon as a subprocess."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS / "testplugin"))
sys.path.insert(0, str(TESTS))

from daemon_process import DaemonProcess, free_port  # noqa: E402


@pytest.fixture(scope="session")
def digits_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default digits model, trained once for the whole session."""
    from monitord_torchvision.training import train_default_model

    output = tmp_path_factory.mktemp("artifact") / "model"
    train_default_model(output, seed=0, progress=False)
    return output


@pytest.fixture
def daemon(tmp_path: Path, digits_artifact: Path):
    """Start ``monitord run`` on a free port with a temporary inbox; stopped at teardown."""
    started: list[DaemonProcess] = []

    def start(settings: str = "", env: dict[str, str] | None = None, wait_ready: bool = True) -> DaemonProcess:
        process = DaemonProcess(tmp_path, free_port(), artifact=digits_artifact, extra_settings=settings, env=env)
        started.append(process)
        process.start(wait_ready=wait_ready)
        return process

    yield start
    for process in started:
        process.kill()
