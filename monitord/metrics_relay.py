"""Metrics of an ingest worker, relayed to the main process that exports them.

A worker counts what its HTTP source and pipeline see (images by outcome, end-to-end
times, batch sizes, inference times) with the same calls as the main process, on
stand-ins that record each call instead of owning a series. The records travel with
the worker's batches and in a flush every ``FLUSH_SECONDS``, and the main process
replays them on its own metrics: ``/metrics`` shows one daemon, whichever process took
an image in. (prometheus-client's multiprocess mode would do the same through files
shared by every process, but gives up callback gauges and custom collectors, which
the queue depths and the detectors use.)
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import Counter

from monitord.metrics import Metrics

#: Seconds between flushes of counts that no batch carried (refusals while idle, say).
FLUSH_SECONDS = 0.25

#: The metrics a worker touches; the rest (detectors, feedback, alerts) live only in
#: the main process.
RELAYED = ("images", "end_to_end", "inference_duration", "batch_size")
#: Of those, the counters: their increments are summed before they travel.
COUNTERS = ("images",)

#: One recorded call: metric attribute, label values (positional, in declaration order
#: or by keyword), and the amount (``inc``) or the value (``observe``).
Record = tuple[str, tuple[tuple[str, str], ...], float]


class MetricsRelay:
    """Collects the calls made on the stand-ins until ``take()``."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._observations: list[Record] = []
        # Calls come from the event loop and from a source's own thread (the folder's
        # ``Pipeline.run_batch``): a count is read, then written, and ``take`` swaps both.
        self._lock = threading.Lock()

    def add(self, record: Record) -> None:
        name, labels, value = record
        with self._lock:
            if name in COUNTERS:
                key = (name, labels)
                self._counts[key] = self._counts.get(key, 0) + value
            else:
                self._observations.append(record)

    def take(self) -> list[Record]:
        """Everything recorded since the last ``take``: counts summed, observations as made."""
        with self._lock:
            counts, observations = self._counts, self._observations
            self._counts, self._observations = {}, []
        return [(name, labels, value) for (name, labels), value in counts.items()] + observations


class RelayedMetric:
    """Stands in for a prometheus_client counter or histogram (or one labelled child)."""

    __slots__ = ("_relay", "_name", "_labelnames", "_labels")

    def __init__(self, relay: MetricsRelay, name: str, labelnames: tuple[str, ...],
                 labels: tuple[tuple[str, str], ...] = ()) -> None:
        self._relay = relay
        self._name = name
        self._labelnames = labelnames
        self._labels = labels

    def labels(self, *values: Any, **named: Any) -> RelayedMetric:
        if values:
            named = dict(zip(self._labelnames, values))
        if set(named) != set(self._labelnames):
            raise ValueError(f"{self._name}: labels {sorted(named)}, expected {list(self._labelnames)}")
        return RelayedMetric(self._relay, self._name, self._labelnames,
                             tuple((key, str(named[key])) for key in self._labelnames))

    def inc(self, amount: float = 1) -> None:
        self._relay.add((self._name, self._labels, amount))

    def observe(self, value: float) -> None:
        self._relay.add((self._name, self._labels, value))


def relayed_metrics(relay: MetricsRelay) -> Metrics:
    """A ``Metrics`` whose relayed metrics record into ``relay`` instead of counting."""
    metrics = Metrics()
    for name in RELAYED:
        real = getattr(metrics, name)
        setattr(metrics, name, RelayedMetric(relay, name, tuple(real._labelnames)))
    return metrics


def replay(metrics: Metrics, records: list[Record]) -> None:
    """Apply a worker's records to the main process's metrics."""
    for name, labels, value in records:
        if name not in RELAYED:
            continue  # not ours to touch: a newer worker than this main process?
        metric = getattr(metrics, name)
        target = metric.labels(**dict(labels)) if labels else metric
        if isinstance(metric, Counter):
            target.inc(value)
        else:
            target.observe(value)
