"""Where the demo's own daemon lives: its state, inbox, processed and failed folders.

By default a temporary folder, removed at the end (also after Ctrl-C or a failure), so a
demo leaves the user's detectors, alerts, predictions log and folders exactly as they
were; ``--workdir`` names a folder to keep instead. The daemon is started with the
user's model, detector and pipeline settings and nothing else of theirs: no alert sink
but the log (no notification reaches a real receiver), its own HTTP port, and neither
the user's ``MONITORD_*`` variables nor their ``.env``, which would override the folders.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from monitord.settings import Settings

from .errors import DemoError

#: The one ``MONITORD_*`` variable that is not a setting: which plugins load.
_KEPT_VARIABLES = ("MONITORD_LOAD_PLUGINS",)


@dataclass(frozen=True)
class Workspace:
    """The demo daemon's folder; ``temporary`` ones are removed by ``remove``."""

    root: Path
    temporary: bool

    @classmethod
    def create(cls, workdir: Path | None) -> Workspace:
        """A fresh temporary folder, or ``workdir`` when it is new or empty."""
        if workdir is None:
            return cls(Path(tempfile.mkdtemp(prefix="monitord-demo-")).resolve(), temporary=True)
        workdir = workdir.resolve()
        if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
            raise DemoError(
                f"--workdir {workdir} is not an empty folder; give a new or empty one (the state of "
                "an earlier demo there would carry its detectors' levels into this one)"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(workdir, temporary=False)

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def processed(self) -> Path:
        return self.root / "processed"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def log(self) -> Path:
        return self.root / "daemon.log"

    @property
    def predictions_log(self) -> Path:
        return self.state / "predictions.jsonl"

    def remove(self) -> None:
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)


def free_port() -> int:
    """A TCP port nothing listens on now, on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def daemon_environment(settings: Settings, workspace: Workspace, port: int, artifact: Path) -> dict[str, str]:
    """The environment of the demo's ``monitord run``: settings as ``MONITORD_*`` variables
    (JSON for the sections carried over), none of the caller's own."""
    model = settings.model.model_dump(mode="json", exclude_none=True)
    # Read the user's trained artifact in place, or train one into the workspace.
    model.update(artifact=str(artifact), train_if_missing=True)
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MONITORD_") or name in _KEPT_VARIABLES
    }
    environment.update(
        {
            "MONITORD_STATE_DIR": str(workspace.state),
            "MONITORD_FOLDER__INBOX": str(workspace.inbox),
            "MONITORD_FOLDER__PROCESSED": str(workspace.processed),
            "MONITORD_FOLDER__FAILED": str(workspace.failed),
            "MONITORD_HTTP__HOST": "127.0.0.1",
            "MONITORD_HTTP__PORT": str(port),
            "MONITORD_MODEL": json.dumps(model),
            "MONITORD_DETECTORS": json.dumps(
                [spec.model_dump(mode="json", exclude_none=True) for spec in settings.detectors]
            ),
            "MONITORD_PIPELINE": json.dumps(settings.pipeline.model_dump(mode="json")),
        }
    )
    return environment
