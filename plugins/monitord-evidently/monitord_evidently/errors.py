"""The one error a report raises for input it cannot use."""

from __future__ import annotations


class ReportError(Exception):
    """No report can be made from this input; the message says what was wrong and what to do."""
