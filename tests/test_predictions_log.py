"""The predictions log: one JSON line per prediction, each line encoded once."""

from __future__ import annotations

import asyncio
import json
import pickle
from pathlib import Path

import pytest

import monitord.items
from monitord.ingest_worker import RelayObserver
from monitord.items import Prediction
from monitord.metrics_relay import MetricsRelay
from monitord.predictions_log import PredictionsLog


def prediction(index: int, label: str | None = None) -> Prediction:
    return Prediction(id=f"7/img-{index}.png", source="folder", class_name="7", class_index=7,
                      confidence=0.875, signals={"entropy": 0.25, "margin": 0.5},
                      time="2026-11-27T10:00:00.000000+00:00", label=label)


def refuse_to_encode(monkeypatch: pytest.MonkeyPatch) -> None:
    def encode(*args, **kwargs):
        raise AssertionError("a prediction was encoded twice")

    monkeypatch.setattr(monitord.items.json, "dumps", encode)


def test_the_log_holds_one_line_per_prediction(tmp_path: Path) -> None:
    log = PredictionsLog(tmp_path / "predictions.jsonl", max_bytes=1 << 20, backups=1)
    log.write([prediction(1, label="7"), prediction(2)])
    log.write([])
    log.close()
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [prediction(1, label="7").to_json(), prediction(2).to_json()]
    assert json.loads(lines[0])["correct"] is True


def test_a_line_is_encoded_once_and_travels_with_the_prediction(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    made = prediction(3)
    line = made.json_line()
    assert line == json.dumps(made.to_json(), separators=(",", ":"))
    arrived = pickle.loads(pickle.dumps(made))  # a worker's prediction reaching the main process
    refuse_to_encode(monkeypatch)
    assert arrived.json_line() == line
    assert arrived == made  # the kept line is not part of what a prediction is
    log = PredictionsLog(tmp_path / "predictions.jsonl", max_bytes=1 << 20, backups=1)
    log.write([arrived])
    log.close()
    assert (tmp_path / "predictions.jsonl").read_text() == line + "\n"


class Capture:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, message) -> None:
        self.sent.append(pickle.dumps(message))


@pytest.mark.parametrize("encode_lines", [True, False])
def test_a_worker_encodes_the_lines_when_the_main_process_logs(monkeypatch: pytest.MonkeyPatch,
                                                               encode_lines: bool) -> None:
    async def send() -> list[Prediction]:
        channel = Capture()
        observer = RelayObserver(channel, MetricsRelay(), encode_lines=encode_lines)  # type: ignore[arg-type]
        observer.observe([prediction(4), prediction(5)], {})
        return pickle.loads(channel.sent[0])[2]

    arrived = asyncio.run(send())
    refuse_to_encode(monkeypatch)
    if encode_lines:
        assert [json.loads(p.json_line())["id"] for p in arrived] == ["7/img-4.png", "7/img-5.png"]
    else:  # nothing encoded that no one writes
        with pytest.raises(AssertionError, match="encoded twice"):
            arrived[0].json_line()
