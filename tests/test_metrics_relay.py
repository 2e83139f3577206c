"""An ingest worker's metrics: recorded on stand-ins, replayed on the main process's."""

from __future__ import annotations

import sys
import threading

import pytest
from prometheus_client import CollectorRegistry

from monitord.metrics import Metrics
from monitord.metrics_relay import MetricsRelay, relayed_metrics, replay


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_counts_are_summed_and_observations_kept_then_replayed_once() -> None:
    relay = MetricsRelay()
    worker = relayed_metrics(relay)
    ok = worker.images.labels(source="http", outcome="ok")
    for _ in range(3):
        ok.inc()
    worker.images.labels("http", "rejected").inc(2)
    worker.end_to_end.observe(0.25)
    worker.end_to_end.observe(0.5)
    worker.batch_size.observe(8)
    worker.inference_duration.observe(0.01)
    records = relay.take()
    assert relay.take() == []
    assert sorted(r for r in records if r[0] == "images") == [
        ("images", (("source", "http"), ("outcome", "ok")), 3),
        ("images", (("source", "http"), ("outcome", "rejected")), 2),
    ]
    main = Metrics(CollectorRegistry())
    replay(main, records)
    assert value(main, "monitord_images_total", source="http", outcome="ok") == 3
    assert value(main, "monitord_images_total", source="http", outcome="rejected") == 2
    assert value(main, "monitord_end_to_end_duration_seconds_count") == 2
    assert value(main, "monitord_end_to_end_duration_seconds_sum") == pytest.approx(0.75)
    assert value(main, "monitord_batch_size_sum") == 8
    assert value(main, "monitord_inference_duration_seconds_count") == 1


def test_wrong_labels_fail_in_the_worker_as_they_would_on_a_real_metric() -> None:
    worker = relayed_metrics(MetricsRelay())
    with pytest.raises(ValueError, match="expected"):
        worker.images.labels(source="http")


def test_metrics_that_are_not_relayed_stay_untouched() -> None:
    main = Metrics(CollectorRegistry())
    replay(main, [("accuracy", (), 0.5), ("images", (("source", "http"), ("outcome", "ok")), 1)])
    assert value(main, "monitord_images_total", source="http", outcome="ok") == 1


def test_queue_depth_shows_the_fullest_queue_of_each_stage_across_processes() -> None:
    from monitord.ingest_workers import IngestWorkers
    from monitord.settings import Settings

    main = Metrics(CollectorRegistry())
    own = {"ingest": 3.0, "inference": 8.0}
    for stage in own:
        main.watch_queue(stage, lambda stage=stage: own[stage])
    workers = IngestWorkers(Settings(), 2, [], "http://127.0.0.1:1", observer=None, metrics=main)  # type: ignore[arg-type]
    main.report_other_queues(workers.deepest)
    assert value(main, "monitord_queue_depth", stage="ingest") == 3
    workers._workers[0].depths = {"ingest": 900.0, "inference": 2.0}
    workers._workers[1].depths = {"ingest": 40.0}
    assert value(main, "monitord_queue_depth", stage="ingest") == 900  # the fullest, not the sum
    assert value(main, "monitord_queue_depth", stage="inference") == 8  # the main process's own


def test_counts_from_several_threads_while_taking_are_neither_lost_nor_doubled() -> None:
    # A worker counts on its event loop and in the folder's thread (Pipeline.run_batch)
    # while the loop takes what was recorded for the main process.
    relay = MetricsRelay()
    worker = relayed_metrics(relay)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the interpreter lock over as often as it can go
    taken: list = []
    try:
        def count(source: str) -> None:
            ok = worker.images.labels(source=source, outcome="ok")
            for _ in range(20_000):
                ok.inc()
                worker.end_to_end.observe(0.1)

        threads = [threading.Thread(target=count, args=(source,)) for source in ("http", "folder", "folder")]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            taken += relay.take()
        taken += relay.take()
    finally:
        sys.setswitchinterval(switch)
    counts: dict[str, float] = {}
    for name, labels, amount in taken:
        if name == "images":
            counts[dict(labels)["source"]] = counts.get(dict(labels)["source"], 0) + amount
    assert counts == {"http": 20_000, "folder": 40_000}
    assert sum(1 for record in taken if record[0] == "end_to_end") == 60_000
