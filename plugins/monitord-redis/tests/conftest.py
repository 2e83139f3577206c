"""Fixtures of the Redis transport's tests: a real redis-server per test, and the core's
test helpers (the daemon as a subprocess, the digits model) from the repository's tests/."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CORE_TESTS = HERE.parents[2] / "tests"
for folder in (HERE, CORE_TESTS / "testplugin", CORE_TESTS):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from redis_server import RedisServer  # noqa: E402


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (append-only file on, appendfsync everysec)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def digits_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default digits model, trained once for the whole session (as in tests/conftest.py)."""
    from monitord_torchvision.training import train_default_model

    output = tmp_path_factory.mktemp("artifact") / "model"
    train_default_model(output, seed=0, progress=False)
    return output
