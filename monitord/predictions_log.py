"""The JSON-lines log of every prediction, rotated by size, written off the event loop.

One line per prediction (id, source, time, class, confidence, signals, label) so that a
result can be looked up later and signals replayed through detectors. The standard
library's queue handler/listener pair does the writing in its own thread, and its
rotating handler does the rotation. The files are private (0600): the live one is created
before the handler opens it, and each rotation creates the next one the same way.
"""

from __future__ import annotations

import logging
import os
import queue
from logging.handlers import QueueHandler, QueueListener, RotatingFileHandler
from pathlib import Path
from typing import Iterable

from monitord.items import Prediction
from monitord.state_files import create_private_file, make_private, make_private_folder


#: The live log's name in the state folder; rotated ones add ``.1``, ``.2``, ... (oldest last).
FILE_NAME = "predictions.jsonl"


def predictions_log_path(state_dir: Path) -> Path:
    """Where the monitor writes the predictions log of ``state_dir``."""
    return Path(state_dir) / FILE_NAME


def _rotate_privately(source: str, destination: str) -> None:
    """The rotating handler's ``rotator``: move the full file aside and create the next one
    0600, which the handler then opens for appending (it would create it with the umask's mode)."""
    os.replace(source, destination)
    create_private_file(Path(source))


class PredictionsLog:
    """Appends predictions to ``path``; ``close()`` flushes everything queued."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        make_private_folder(path.parent)
        create_private_file(path)
        for number in range(1, backups + 1):  # left by a version that wrote them with the umask's mode
            make_private(path.with_name(f"{path.name}.{number}"))
        self.path = path
        file_handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        file_handler.rotator = _rotate_privately
        file_handler.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = QueueListener(self._queue, file_handler)
        self._logger = logging.getLogger(f"monitord.predictions.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(QueueHandler(self._queue))
        self._file_handler = file_handler
        self._listener.start()

    def write(self, predictions: Iterable[Prediction]) -> None:
        """Queue one batch's lines as one record: a record per prediction cost more than
        the model (the queue handler and listener dominated a profile of the daemon)."""
        lines = [prediction.json_line() for prediction in predictions]
        if lines:
            self._logger.info("\n".join(lines))

    def close(self) -> None:
        self._listener.stop()
        self._file_handler.close()
        for handler in list(self._logger.handlers):
            self._logger.removeHandler(handler)
