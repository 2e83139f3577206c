"""The predictions log: one JSON line per prediction, each line encoded once."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

import monitord.items
from monitord.items import Prediction
from monitord.predictions_log import PredictionsLog


def prediction(index: int, label: str | None = None) -> Prediction:
    return Prediction(id=f"7/img-{index}.png", source="folder", class_name="7", class_index=7,
                      confidence=0.875, signals={"entropy": 0.25, "margin": 0.5},
                      time="2026-11-27T10:00:00.000000+00:00", label=label)


def refuse_to_encode(monkeypatch: pytest.MonkeyPatch) -> None:
    def encode(*args, **kwargs):
        raise AssertionError("a prediction was encoded twice")

    monkeypatch.setattr(monitord.items.orjson, "dumps", encode)
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
    assert json.loads(line) == made.to_json()
    arrived = pickle.loads(pickle.dumps(made))  # as a prediction that crossed a process
    refuse_to_encode(monkeypatch)
    assert arrived.json_line() == line
    assert arrived == made  # the kept line is not part of what a prediction is
    log = PredictionsLog(tmp_path / "predictions.jsonl", max_bytes=1 << 20, backups=1)
    log.write([arrived])
    log.close()
    assert (tmp_path / "predictions.jsonl").read_text() == line + "\n"


def test_a_name_that_is_not_utf8_is_written_escaped_and_read_back_the_same(tmp_path: Path) -> None:
    name = b"latin1-caf\xe9.png".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    made = Prediction(id=name, source="folder", class_name="7", class_index=7, confidence=0.5,
                      signals={"entropy": float("nan")}, time="2026-11-27T10:00:00.000+00:00")
    line = made.json_line()
    assert "\\udce9" in line and json.loads(line)["id"] == name
    clean = prediction(9)
    assert json.loads(clean.json_line())["signals"] == clean.signals
