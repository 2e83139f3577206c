"""What the page shows now, read from what the daemon computes anyway: the metrics'
counters and histograms (throughput, latency, the model's build labels). The detectors,
the accuracies and the open alerts come from the monitor's status, as ``GET /v1/detectors``
serves it; nothing here computes them a second time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from monitord.metrics import Metrics


def metric_sum(metric: Any, suffix: str, **labels: str) -> float:
    """The sum of ``metric``'s samples named ``..<suffix>`` whose labels include ``labels``.

    Read through ``collect()``, prometheus-client's public API, which works whether or not
    the metric is exported by this process's role."""
    total = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix) and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@dataclass(frozen=True)
class Traffic:
    """Cumulative readings of the inference metrics at one moment (``time``: monotonic)."""

    time: float
    #: ``monitord_images_total{outcome="ok"}`` over every source: images classified.
    images: float
    #: ``monitord_images_total`` of the other outcomes: rejected, error, throttled.
    refused: float
    #: ``monitord_end_to_end_duration_seconds``: its sum and count.
    latency_sum: float
    latency_count: float

    @classmethod
    def read(cls, metrics: Metrics, now: float) -> Traffic:
        images = metric_sum(metrics.images, "_total", outcome="ok")
        return cls(now, images, metric_sum(metrics.images, "_total") - images,
                   metric_sum(metrics.end_to_end, "_sum"), metric_sum(metrics.end_to_end, "_count"))

    def since(self, before: Traffic) -> tuple[float | None, float | None]:
        """Images classified per second, and their mean end-to-end latency in seconds, from
        ``before`` to this reading (latency None when no image finished in between)."""
        seconds = self.time - before.time
        if seconds <= 0:
            return None, None
        finished = self.latency_count - before.latency_count
        latency = (self.latency_sum - before.latency_sum) / finished if finished > 0 else None
        return (self.images - before.images) / seconds, latency


def model_of(metrics: Metrics) -> dict[str, str] | None:
    """The model's name and device as ``monitord_build_info`` labels them (None before it
    is loaded: the labels are empty until then)."""
    for family in metrics.build.collect():
        for sample in family.samples:
            if sample.labels.get("model"):
                return {"name": sample.labels["model"], "device": sample.labels.get("device", ""),
                        "version": sample.labels.get("version", "")}
    return None


def finite(value: Any) -> float | None:
    """A number JSON can carry: NaN and infinity become None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
