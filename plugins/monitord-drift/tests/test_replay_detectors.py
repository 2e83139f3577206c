"""``monitord replay`` with this package's detectors, as a user tunes them on recorded signals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def replay(*args: str, cwd: Path) -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "monitord", "replay", *args], cwd=cwd,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def write(path: Path, rows: np.ndarray) -> Path:
    rows = rows.reshape(len(rows), -1)
    path.write_text("\n".join(",".join(f"{v:.6f}" for v in row) for row in rows) + "\n")
    return path


def test_pht_with_a_reference_file_fires_after_the_shift_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    write(tmp_path / "reference.txt", rng.normal(10.0, 2.0, 1000))
    write(tmp_path / "signal.txt", np.concatenate([rng.normal(10.0, 2.0, 3000), rng.normal(11.0, 2.0, 2000)]))
    *events, summary = replay("-d", "pht", "-p", "direction=up", "--reference", "reference.txt", "signal.txt", cwd=tmp_path)
    drifts = [e["index"] for e in events if e["level"] == "drift"]
    assert drifts and 3000 <= drifts[0] <= 3300, events
    assert summary["samples"] == 5000 and summary["params"]["direction"] == "up"


def test_iks_takes_its_reference_from_the_start_of_the_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    write(tmp_path / "signal.txt", np.concatenate([rng.normal(0, 1, 3000), rng.uniform(-3, 3, 3000)]))
    *events, summary = replay("-d", "iks", "-p", "window=300", "-p", "reference_size=500", "-p", "alpha=1e-5",
                              "signal.txt", cwd=tmp_path)
    drifts = [e["index"] for e in events if e["level"] == "drift"]
    assert drifts and drifts[0] >= 3000, events
    assert summary["final"]["level"] == "drift" and 0 <= summary["final"]["p_value"] < 1e-5


def test_a_bad_parameter_is_named(tmp_path: Path) -> None:
    (tmp_path / "signal.txt").write_text("1\n2\n")
    result = subprocess.run([sys.executable, "-m", "monitord", "replay", "-d", "pht", "-p", "lamda=3", "signal.txt"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "unknown parameter(s) lamda" in result.stderr and "threshold" in result.stderr
