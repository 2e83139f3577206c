"""Which recent predictions a report covers: the last N, or those of the last hour, say.

``1000`` is a count; ``45s``, ``30m``, ``1h``, ``2d`` a duration before now. The default
is a count: a window of fixed size gives drift tests the same power whatever the traffic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The window when none is given: the last 1000 predictions.
DEFAULT_WINDOW = "1000"

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")


class WindowError(ValueError):
    """A window that cannot be read; the message says what to write instead."""


@dataclass(frozen=True)
class Window:
    """The last ``count`` predictions, or those of the last ``seconds``; exactly one is set."""

    text: str
    count: int | None = None
    seconds: float | None = None

    @property
    def kind(self) -> str:
        return "count" if self.count is not None else "time"

    def describe(self) -> str:
        if self.count is not None:
            return f"the last {self.count} predictions"
        return f"the predictions of the last {self.text}"


def parse_window(text: str) -> Window:
    """``"1000"`` → the last 1000 predictions; ``"30m"`` → those of the last 30 minutes."""
    cleaned = str(text).strip().lower()
    if cleaned.isdigit():
        count = int(cleaned)
        if count < 1:
            raise WindowError(f"window {text!r} holds no predictions; give a positive count such as 1000")
        return Window(cleaned, count=count)
    match = _DURATION.fullmatch(cleaned)
    if match is None:
        raise WindowError(f"window {text!r} is neither a count nor a duration; write a number of predictions "
                          "(1000) or a duration with a unit s, m, h or d (30m, 1h, 2d)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise WindowError(f"window {text!r} is empty; give a positive duration such as 1h")
    return Window(cleaned, seconds=seconds)
