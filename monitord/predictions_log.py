"""The JSON-lines log of every prediction, rotated by size, written off the event loop.

One line per prediction (id, source, time, class, confidence, signals, label) so that a
result can be looked up later and signals replayed through detectors. The standard
library's queue handler/listener pair does the writing in its own thread, and its
rotating handler does the rotation.
"""

from __future__ import annotations

import logging
import queue
from logging.handlers import QueueHandler, QueueListener, RotatingFileHandler
from pathlib import Path
from typing import Iterable

from monitord.items import Prediction


class PredictionsLog:
    """Appends predictions to ``path``; ``close()`` flushes everything queued."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        file_handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
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
