"""Every Prometheus metric the daemon exports, on one registry per daemon.

Names follow DESIGN.md: prefix ``monitord_``, base units, ``_total`` on counters, and
only bounded label values (sources, outcomes, class names, detector names).

Several processes on one host behind one port (``pipeline.workers``) use
prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the
supervisor): every process writes its values to files there and whichever process a
scrape reaches answers for all of them, counters summed and each gauge merged as its
``multiprocess_mode`` says. Gauges read from a function are then set every second
instead (``watch``), since another process cannot call the function.
"""

from __future__ import annotations

import os
import platform
from typing import Any, Callable, Iterable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

from monitord import __version__

#: The roles a process may play (``monitord run --role``), each with the metrics it owns.
ROLES = ("inference", "monitor")

#: Outcomes of ``monitord_images_total``: ``ok`` (classified), ``rejected`` (bad input),
#: ``error`` (our failure, e.g. the model raised), ``throttled`` (refused while saturated).
OUTCOMES = ("ok", "rejected", "error", "throttled")

#: Outcomes of ``monitord_feedback_total``: ``joined`` (label matched a prediction),
#: ``unknown`` (no such id), ``late`` (the prediction had expired, feedback.ttl_seconds),
#: ``duplicate`` (the prediction already had a label), ``invalid`` (malformed record).
FEEDBACK_OUTCOMES = ("joined", "unknown", "late", "duplicate", "invalid")

#: Outcomes of ``monitord_alerts_total``: ``delivered`` (a notification reached its
#: destination), ``failed`` (an attempt failed; it will be retried), ``dropped`` (given up:
#: the spool was full, or the receiver refused it for good with a 4xx).
ALERT_OUTCOMES = ("delivered", "failed", "dropped")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# The *_created series double the exposition for no use on a long-running daemon.
prometheus_client.disable_created_metrics()


class Metrics:
    """The daemon's metrics. Pass ``registry`` in tests to keep daemons apart.

    A process exports the metrics of the roles it plays (``roles``): an inference process
    its images, latencies, batch sizes and queues; the monitor its predictions by class,
    drift, accuracy, labels and alerts. Prometheus scrapes every process and the rules and
    dashboard sum across them; a metric a role does not own would only add zeros (or an
    accuracy of NaN) to those sums. The others still exist here, unexported, so the code
    that counts need not know which role it is in.
    """

    def __init__(self, registry: CollectorRegistry | None = None, roles: Iterable[str] = ROLES) -> None:
        self.registry = registry or CollectorRegistry()
        #: The roles this process plays: it exports their metrics only.
        self.roles = roles = frozenset(roles)
        unknown = roles - set(ROLES)
        if unknown:
            raise ValueError(f"unknown role(s) {sorted(unknown)}; expected some of {ROLES}")
        #: Values shared with the other processes of this host (see the module docstring).
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._watched: list[tuple[Any, Callable[[], float]]] = []
        r = self.registry
        inference = r if "inference" in roles else None
        monitor = r if "monitor" in roles else None
        self.images = Counter(
            "monitord_images", "Images taken in, by source and outcome.", ["source", "outcome"], registry=inference
        )
        self.predictions = Counter(
            "monitord_predictions", "Predictions made, by predicted class.", ["class"], registry=monitor
        )
        self.confidence = Histogram(
            "monitord_prediction_confidence",
            "Top-1 probability of each prediction.",
            buckets=_CONFIDENCE_BUCKETS,
            registry=monitor,
        )
        self.inference_duration = Histogram(
            "monitord_inference_duration_seconds",
            "Time the model took for one micro-batch.",
            buckets=_LATENCY_BUCKETS,
            registry=inference,
        )
        self.batch_size = Histogram(
            "monitord_batch_size", "Images per micro-batch.", buckets=_BATCH_BUCKETS, registry=inference
        )
        self.end_to_end = Histogram(
            "monitord_end_to_end_duration_seconds",
            "Time from an image's arrival to its outcome.",
            buckets=_LATENCY_BUCKETS,
            registry=inference,
        )
        self.queue_depth = Gauge(
            "monitord_queue_depth", "Items waiting at each pipeline stage (the fullest process's).", ["stage"],
            registry=inference, multiprocess_mode="livemax",
        )
        detector_labels = ["detector", "type", "signal"]
        self.drift_statistic = Gauge(
            "monitord_drift_statistic", "Each detector's current test statistic.", detector_labels, registry=monitor, multiprocess_mode="livemostrecent"
        )
        self.drift_threshold = Gauge(
            "monitord_drift_threshold", "The statistic's drift threshold.", detector_labels, registry=monitor, multiprocess_mode="livemostrecent"
        )
        self.drift_p_value = Gauge(
            "monitord_drift_p_value", "The test's p-value, where it has one.", detector_labels, registry=monitor, multiprocess_mode="livemostrecent"
        )
        self.drift_level = Gauge(
            "monitord_drift_level", "0 ok, 1 warning, 2 drift.", detector_labels, registry=monitor, multiprocess_mode="livemostrecent"
        )
        self.drift_events = Counter(
            "monitord_drift_events",
            "Warning and drift events raised by detectors.",
            [*detector_labels, "level"],
            registry=monitor,
        )
        self.detector_errors = Counter(
            "monitord_detector_errors",
            "Batches a detector failed on and skipped (see the log for the first failure).",
            detector_labels,
            registry=monitor,
        )
        self.accuracy = Gauge(
            "monitord_accuracy",
            "Share of correct predictions among the most recent labelled ones (feedback.accuracy_window); "
            "NaN below feedback.min_labels labels and after feedback.accuracy_max_age_seconds without one.",
            registry=monitor,
            multiprocess_mode="livemostrecent",
        )
        if "monitor" in roles:  # (shared in multiprocess mode: another role must not write it)
            self.accuracy.set(float("nan"))
        self.accuracy_labels = Gauge(
            "monitord_accuracy_labels",
            "Labelled predictions monitord_accuracy is computed from (0 once it is NaN for want of new labels).",
            registry=monitor,
            multiprocess_mode="livemostrecent",
        )
        self.estimated_accuracy = Gauge(
            "monitord_estimated_accuracy",
            "Accuracy estimated without labels from the latest estimated_accuracy.window predictions' confidence "
            "(difference of confidences to the reference); NaN until the window is full or without a labelled "
            "reference.",
            registry=monitor,
            multiprocess_mode="livemostrecent",
        )
        self.estimated_accuracy_reliable = Gauge(
            "monitord_estimated_accuracy_reliable",
            "1 while monitord_estimated_accuracy can be trusted, 0 while a detector on the inputs is at drift "
            "(a shift the model is confidently wrong on does not lower its confidence) or there is no estimate.",
            registry=monitor,
            multiprocess_mode="livemostrecent",
        )
        self.reference_accuracy = Gauge(
            "monitord_reference_accuracy",
            "The model's accuracy on its labelled reference images (NaN without one).",
            registry=monitor,
            multiprocess_mode="livemostrecent",
        )
        if "monitor" in roles:
            self.estimated_accuracy.set(float("nan"))
            self.reference_accuracy.set(float("nan"))
        self.feedback = Counter(
            "monitord_feedback", "Labels received, by how they joined a prediction.", ["outcome"], registry=r
        )
        for outcome in FEEDBACK_OUTCOMES:
            self.feedback.labels(outcome)
        self.alerts = Counter(
            "monitord_alerts",
            "Alert notifications by sink and outcome (delivered, failed attempt, dropped).",
            ["sink", "outcome"],
            registry=monitor,
        )
        self.alert_spool_depth = Gauge(
            "monitord_alert_spool_depth",
            "Notifications waiting in a sink's on-disk spool for delivery.",
            ["sink"],
            registry=monitor,
            multiprocess_mode="livemostrecent",
        )
        self.build = Gauge("monitord_build_info", "Version of monitord, its runtime and model (value 1).",
                           ["version", "python", "model", "device"], registry=r, multiprocess_mode="liveall")
        if not self.multiprocess:  # (there, a series once written stays: only the final one is)
            self.describe_build()

    def describe_build(self, model: str = "", device: str = "") -> None:
        """Set ``monitord_build_info``; the daemon adds the model and device once loaded."""
        if not self.multiprocess:  # (there it is set once, with the model)
            self.build.clear()
        self.build.labels(__version__, platform.python_version(), model, device).set(1)

    def watch(self, gauge: Any, read: Callable[[], float]) -> None:
        """Report ``read()`` as ``gauge``'s value: at every scrape of this process, and every
        second (``refresh``) for a scrape that another process of the host answers."""
        self._watched.append((gauge, read))

    def refresh(self) -> None:
        """Set every watched gauge to its current value."""
        for gauge, read in self._watched:
            gauge.set(read())

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """``/metrics``: this process's registry, or every process's of the host."""
        self.refresh()
        encoder, content_type = choose_encoder(accept)
        if not self.multiprocess:
            return encoder(self.registry), content_type
        host = CollectorRegistry()
        multiprocess.MultiProcessCollector(host)
        return encoder(host), content_type

    def declare_sources(self, sources: Iterable[str]) -> None:
        """Create every source/outcome series at 0 so ``rate()`` works from the start."""
        for source in sources:
            for outcome in OUTCOMES:
                self.images.labels(source=source, outcome=outcome)

    def declare_sink(self, sink: str, spooled: bool = False) -> None:
        """Create the sink's ``monitord_alerts_total`` series (and spool depth) at 0."""
        for outcome in ALERT_OUTCOMES:
            self.alerts.labels(sink=sink, outcome=outcome)
        if spooled:
            self.alert_spool_depth.labels(sink=sink).set(0)

    def declare_classes(self, class_names: Iterable[str]) -> None:
        for name in class_names:
            self.predictions.labels(name)

    def watch_queue(self, stage: str, depth: Callable[[], float]) -> None:
        """Report ``depth()`` as the queue depth of ``stage``."""
        self.watch(self.queue_depth.labels(stage=stage), depth)
