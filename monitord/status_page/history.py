"""The page's last hour: samples taken at a fixed cadence into a bounded ring in memory.

A freshly opened page draws the whole span at once; later polls ask only for the samples
after the newest they have (``since``). Each sample is small and flat (a detector is
``[statistic, threshold, level]`` with level 0 ok, 1 warning, 2 drift, as the metric
``monitord_drift_level``), so an hour of ten detectors stays around 100 KB of JSON.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from monitord.detectors import LEVEL_VALUES
from monitord.status_page.readings import finite


class History:
    def __init__(self, sample_seconds: float, span_seconds: float) -> None:
        self.sample_seconds = sample_seconds
        self.span_seconds = span_seconds
        self._samples: deque[dict[str, Any]] = deque(maxlen=max(1, math.ceil(span_seconds / sample_seconds)))

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, sample: dict[str, Any]) -> None:
        """Append one sample (``time``: seconds since the epoch); the oldest falls out."""
        self._samples.append(sample)

    def since(self, time: float) -> list[dict[str, Any]]:
        """The samples taken after ``time``, oldest first."""
        if not self._samples or self._samples[-1]["time"] <= time:
            return []
        return [sample for sample in self._samples if sample["time"] > time]

    def latest(self) -> dict[str, Any] | None:
        return self._samples[-1] if self._samples else None


def sample_of(time: float, status: dict[str, Any] | None, rates: tuple[float | None, float | None] | None
              ) -> dict[str, Any]:
    """One history sample from a monitor status (None: none known) and the traffic rates
    (None: this process sees no images)."""
    sample: dict[str, Any] = {"time": round(time, 3)}
    if rates is not None:
        sample["images_per_second"], sample["latency_seconds"] = rates
    if status is not None:
        sample["detectors"] = {
            state["name"]: [finite(state.get("statistic")), finite(state.get("threshold")),
                            LEVEL_VALUES.get(state.get("level"), 0)]
            for state in status.get("detectors", [])
        }
        sample["accuracy"] = finite((status.get("accuracy") or {}).get("value"))
        sample["estimated_accuracy"] = finite((status.get("estimated_accuracy") or {}).get("value"))
    return sample
