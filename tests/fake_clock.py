"""A clock the alert tests move by hand: monotonic seconds, and the wall time beside them."""

from __future__ import annotations


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t
