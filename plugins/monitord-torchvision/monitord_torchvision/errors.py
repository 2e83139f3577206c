"""Errors this plugin raises, so the core can report them without a traceback."""

from __future__ import annotations

from monitord.settings import SettingsError


class ModelLoadError(SettingsError):
    """The model cannot be built as configured; the message says what to change.

    A subclass of ``SettingsError`` because every such problem is fixed in the settings
    (a path, a name, a class list) or by running ``monitord train``, and the daemon
    already reports settings errors cleanly at start-up.
    """


class TrainingError(RuntimeError):
    """Training finished but the model is not good enough to serve.

    Carries the training ``report`` so that callers can show what was reached.
    """

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report


class DemoError(RuntimeError):
    """``monitord demo`` cannot go on: the daemon is missing, not ready, or not taking
    its images. The message says what happened and what to try."""
