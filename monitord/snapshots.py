"""Detector state on disk: saved periodically and at shutdown, restored at start.

A restart (planned or after ``kill -9``) then continues each detector's statistics
instead of re-learning its window and forgetting a drift in progress: without this the
on-call would see every alert resolve and re-fire, or worse, a drift go quiet.

The file, ``<state_dir>/detectors.json``, holds one entry per detector instance, keyed by
its name, with its type, signals and the detector's own ``snapshot()``. A detector is
restored only from an entry of the same name, type and signals, written for the same
model reference; anything else starts fresh. A file that cannot be read, or an entry a
detector refuses, is reported and the file set aside (``detectors.json.corrupt-<time>``
or ``.incompatible-<time>``) so the next snapshot does not destroy the evidence.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from monitord.detectors import DetectorStage
from monitord.state_files import set_aside, write_json_durably

log = logging.getLogger("monitord.snapshots")

FILE_NAME = "detectors.json"
FORMAT_VERSION = 1


def reference_fingerprint(model_name: str, reference_signals: Mapping[str, Sequence[float]]) -> str:
    """Identifies the model reference detectors were fitted to; a retrained model changes it."""
    digest = hashlib.sha256(model_name.encode())
    for name in sorted(reference_signals):
        digest.update(name.encode())
        digest.update(json.dumps([float(value) for value in reference_signals[name]]).encode())
    return digest.hexdigest()[:16]


class DetectorSnapshots:
    """Saves and restores the detectors of one ``DetectorStage``."""

    def __init__(self, state_dir: Path, stage: DetectorStage, fingerprint: str) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self.stage = stage
        self.fingerprint = fingerprint
        self.saved_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    # -- restore -------------------------------------------------------------------------

    def restore(self) -> list[str]:
        """Restore every detector the file has a fitting entry for; return their names.

        Never raises: a file that does not fit is set aside and the detectors start fresh.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as error:
            log.error("cannot read detector snapshot %s: %s; detectors start fresh", self.path, error)
            return []
        try:
            data = json.loads(text)
            entries = data["detectors"]
            if data.get("version") != FORMAT_VERSION or not isinstance(entries, dict):
                raise ValueError(f"format version {data.get('version')!r}, expected {FORMAT_VERSION}")
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            log.error("detector snapshot %s is unreadable (%s); detectors start fresh", self.path, error)
            set_aside(self.path, "corrupt")
            return []
        if data.get("reference") != self.fingerprint:
            log.warning(
                "detector snapshot %s was taken against another model or reference; detectors start fresh",
                self.path,
            )
            set_aside(self.path, "incompatible")
            return []
        restored, refused = [], []
        for watched in self.stage.detectors:
            spec = watched.spec
            entry = entries.get(spec.label)
            if entry is None:
                continue
            if entry.get("type") != spec.type or entry.get("signals") != spec.signals:
                refused.append(f"{spec.label} (snapshot of {entry.get('type')} on {entry.get('signals')})")
                continue
            try:
                watched.detector.restore(entry["state"])
            except Exception as error:  # a plugin's restore says why it refuses; keep going
                refused.append(f"{spec.label} ({type(error).__name__}: {error})")
                self._rebuild(watched)
                continue
            self.stage.refresh(watched)
            restored.append(spec.label)
        if refused:
            log.warning("detector snapshot does not fit %s; they start fresh", "; ".join(refused))
            set_aside(self.path, "incompatible")
        if restored:
            age = data.get("saved_at", "?")
            log.info("restored detectors %s from the snapshot of %s", ", ".join(restored), age)
        return restored

    def _rebuild(self, watched: Any) -> None:
        """A restore that failed half-way may leave a detector in a mixed state: start it anew."""
        try:
            self.stage.rebuild(watched)
        except Exception:
            log.exception("cannot rebuild detector %s after a refused snapshot", watched.spec.label)

    # -- save ----------------------------------------------------------------------------

    def collect(self) -> dict[str, Any]:
        """The snapshot of every detector now. Runs on the event loop, between batches."""
        entries = {}
        for watched in self.stage.detectors:
            try:
                state = watched.detector.snapshot()
            except Exception:
                log.exception("detector %s cannot take a snapshot; it will start fresh after a restart",
                              watched.spec.label)
                continue
            entries[watched.spec.label] = {"type": watched.spec.type, "signals": watched.spec.signals,
                                           "state": state}
        return {
            "version": FORMAT_VERSION,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "reference": self.fingerprint,
            "detectors": entries,
        }

    def save(self) -> None:
        """Take and write a snapshot now (at shutdown, after the last batch)."""
        self._write(self.collect())

    async def save_async(self) -> None:
        data = self.collect()
        await asyncio.to_thread(self._write, data)

    def _write(self, data: dict[str, Any]) -> None:
        try:
            write_json_durably(self.path, data)
        except (OSError, TypeError, ValueError) as error:
            log.error("cannot save detector snapshot to %s: %s", self.path, error)
            return
        self.saved_at = time.time()

    def start(self, interval_seconds: float) -> None:
        self._task = asyncio.create_task(self._periodically(interval_seconds), name="detector-snapshots")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _periodically(self, interval_seconds: float) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            await self.save_async()
