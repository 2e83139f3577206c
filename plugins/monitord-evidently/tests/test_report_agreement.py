"""Evidently's per-signal verdicts agree with monitord's own detectors on the same log.

The held-out digits through the trained digits model make a clean log (the data the
reference was measured on, drawn again) and a rotated one (every digit turned 45°). The
daemon's default detectors (those watching model signals; the error-rate one has no
column in the report, whose quality section stands for it) are fed the log's signals in
micro-batches through the daemon's own ``DetectorStage``; the report is made from the
same log file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from monitord.detectors import ERROR_SIGNAL, DetectorStage
from monitord.metrics import Metrics
from monitord.plugins import load_plugins
from monitord.reference import reference_for
from monitord.settings import default_detectors

from digit_logs import DigitRows, write_log
from monitord_evidently.report import report_for
from monitord_evidently.window import parse_window

ROWS = 1000
BATCH = 64


def detectors_flagging(model, artifact: Path, stream: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Each default detector's signals, for the detectors that reached ``drift`` on ``stream``."""
    host = load_plugins()
    specs = [spec for spec in default_detectors() if ERROR_SIGNAL not in spec.signals]
    stage = DetectorStage.build(specs, lambda kind: host.factory("detector", kind),
                                reference_for(model, artifact).signals, Metrics())
    flagged: dict[str, list[str]] = {}
    for first in range(0, ROWS, BATCH):
        batch = {name: values[first:first + BATCH] for name, values in stream.items() if name != ERROR_SIGNAL}
        for watched, event in stage.update(batch):
            if event.level == "drift":
                flagged[watched.spec.label] = list(watched.spec.signals)
    assert len(stage.detectors) == len(specs) >= 4  # confidence, entropy, activations, class mix
    return flagged


@pytest.fixture
def verdicts(tmp_path: Path, digits_model, digits_artifact: Path):
    def both(rows: DigitRows, seed: int) -> tuple[dict[str, list[str]], list[str], dict]:
        stream = rows.stream(ROWS, seed)
        write_log(tmp_path / "state", rows, stream)
        report = report_for(tmp_path / "state", digits_artifact, parse_window(str(ROWS)))
        assert report.document["window"]["rows"] == ROWS
        return detectors_flagging(digits_model, digits_artifact, stream), report.drifted, report.document["signals"]

    return both


def test_on_a_clean_log_neither_finds_drift(verdicts, clean_rows: DigitRows) -> None:
    detectors, evidently, columns = verdicts(clean_rows, seed=11)
    assert detectors == {}
    assert evidently == []
    # Every signal a default detector watches was tested by Evidently too.
    watched = {signal for spec in default_detectors() for signal in spec.signals if signal != ERROR_SIGNAL}
    assert watched <= set(columns)


def test_on_a_rotated_log_evidently_flags_every_signal_the_detectors_flag(verdicts, rotated_rows: DigitRows) -> None:
    detectors, evidently, _ = verdicts(rotated_rows, seed=12)
    assert detectors, "rotating every digit 45° must trip monitord's detectors"
    for label, signals in detectors.items():
        # One signal: the same verdict on it; several (NM-DDM's pair): drift on one of them at least.
        assert set(signals) & set(evidently), f"{label} flags {signals}; Evidently flags only {evidently}"
