"""Detector snapshots: every detector's state as plain data, and back.

A restart (planned or after ``kill -9``), or another monitor taking over, then continues
each detector's statistics instead of re-learning its window and forgetting a drift in
progress: without this the on-call would see every alert resolve and re-fire, or worse, a
drift go quiet.

A snapshot holds one entry per detector instance, keyed by its name, with its type,
signals and the detector's own ``snapshot()``. A detector is restored only from an entry
of the same name, type and signals, taken against the same model reference; anything else
starts fresh. The monitor's checkpoint carries it; the in-process transport keeps it in
``<state_dir>/detectors.json``, and sets a file that cannot be used aside
(``detectors.json.corrupt-<time>`` or ``.incompatible-<time>``) so the next snapshot does
not destroy the evidence.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
    """Takes and restores the snapshots of one ``DetectorStage``'s detectors, as plain data
    (the monitor's checkpoint holds it; the in-process transport keeps it in ``FILE_NAME``)."""

    def __init__(self, stage: DetectorStage, fingerprint: str) -> None:
        self.stage = stage
        self.fingerprint = fingerprint

    # -- restore -------------------------------------------------------------------------

    def restore_from(self, data: Mapping[str, Any] | None) -> bool:
        """Restore every detector ``data`` has a fitting entry for; start the others fresh.

        Never raises. Returns False when ``data`` did not fit (another format, model or
        reference, or an entry a detector refused), so its keeper can set it aside.
        """
        if data is None:
            self._start_fresh(self.stage.detectors)
            return True
        try:
            entries = data["detectors"]
            if data.get("version") != FORMAT_VERSION or not isinstance(entries, dict):
                raise ValueError(f"format version {data.get('version')!r}, expected {FORMAT_VERSION}")
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            log.error("the detector snapshot is unreadable (%s); detectors start fresh", error)
            self._start_fresh(self.stage.detectors)
            return False
        if data.get("reference") != self.fingerprint:
            log.warning("the detector snapshot was taken against another model or reference; detectors start fresh")
            self._start_fresh(self.stage.detectors)
            return False
        restored, refused, fresh = [], [], []
        for watched in self.stage.detectors:
            spec = watched.spec
            entry = entries.get(spec.label)
            if entry is None:
                fresh.append(watched)
                continue
            if entry.get("type") != spec.type or entry.get("signals") != spec.signals:
                refused.append(f"{spec.label} (snapshot of {entry.get('type')} on {entry.get('signals')})")
                fresh.append(watched)
                continue
            try:
                watched.detector.restore(entry["state"])
            except Exception as error:  # a plugin's restore says why it refuses; keep going
                refused.append(f"{spec.label} ({type(error).__name__}: {error})")
                self._rebuild(watched)
                continue
            self.stage.refresh(watched)
            restored.append(spec.label)
        self._start_fresh(fresh)
        if refused:
            log.warning("the detector snapshot does not fit %s; they start fresh", "; ".join(refused))
        if restored:
            log.info("restored detectors %s from the snapshot of %s", ", ".join(restored), data.get("saved_at", "?"))
        return not refused

    def _start_fresh(self, detectors: Sequence[Any]) -> None:
        """Detectors that took samples since they were built start anew (a monitor that lost
        its lease and comes back restores a checkpoint without them)."""
        for watched in detectors:
            if watched.detector.state.samples:
                self._rebuild(watched)

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


def read_snapshot_file(path: Path) -> dict[str, Any] | None:
    """The snapshot in ``path``, or None (missing, unreadable: set aside as corrupt)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        log.error("cannot read detector snapshot %s: %s; detectors start fresh", path, error)
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        log.error("detector snapshot %s is unreadable (%s); detectors start fresh", path, error)
        set_aside(path, "corrupt")
        return None
    return data


def write_snapshot_file(path: Path, data: Mapping[str, Any]) -> None:
    try:
        write_json_durably(path, data)
    except (OSError, TypeError, ValueError) as error:
        log.error("cannot save detector snapshot to %s: %s", path, error)
