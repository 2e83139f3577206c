"""``monitord replay`` with this package's detectors, as a user tunes them on recorded signals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


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


def run_replay(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitord", "replay", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=180, env={**os.environ, **(env or {})})


def assert_refused(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit status 2, nothing on stdout, one line on stderr holding every ``expected``."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)


@pytest.mark.parametrize(("detector", "bad"), [("ddm", "2"), ("eddm", "0.5"), ("hddm_a", "-1"), ("hddm_w", "1.5")])
def test_a_value_an_error_detector_cannot_take_is_named_with_its_line(tmp_path: Path, detector: str, bad: str) -> None:
    # Comments, blank lines and NaN (skipped by detectors) come before it: the line is
    # counted in the file, not in the values the detector kept.
    lines = ["# error", "0", "", "nan", "1", "0", bad, "1"]
    (tmp_path / "errors.txt").write_text("\n".join(lines) + "\n")
    result = run_replay("-d", detector, "errors.txt", cwd=tmp_path)
    assert_refused(result, "errors.txt, line 7:", detector, bad)
    assert "Traceback" not in result.stderr


def test_an_input_shorter_than_the_stream_reference_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "short.txt", np.random.default_rng(5).normal(size=300))
    result = run_replay("-d", "iks", "short.txt", cwd=tmp_path)  # reference_size 500 by default
    assert_refused(result, "short.txt", "300 samples", "reference", "--reference")


def test_a_detector_that_never_became_ready_says_so(tmp_path: Path) -> None:
    write(tmp_path / "signal.txt", np.random.default_rng(6).normal(size=550))
    result = run_replay("-d", "iks", "signal.txt", cwd=tmp_path)  # reference 500, window 500
    assert result.returncode == 0, result.stderr
    (summary,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert summary["tested"] is False and summary["final"]["ready"] is False
    assert summary["final"]["samples_needed"] == 450 and summary["final"]["statistic"] is None
    assert "never became ready" in result.stderr and "450" in result.stderr


def write_artifact(folder: Path, reference_signals: dict[str, list[float]]) -> Path:
    """The part of a model artifact that replay reads: metadata.json's reference signals."""
    folder.mkdir(parents=True)
    metadata = {"format_version": 1, "architecture": "digits_cnn", "reference_signals": reference_signals}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def test_the_reference_comes_from_a_model_artifact(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    reference = rng.normal(0.0, 1.0, 400)
    write_artifact(tmp_path / "model", {"entropy": reference.tolist(), "confidence": [0.9] * 10})
    write(tmp_path / "reference.txt", reference)
    write(tmp_path / "signal.txt", np.concatenate([rng.normal(0, 1, 1000), rng.normal(1.0, 1, 500)]))
    common = ["-d", "iks", "-p", "window=200", "-p", "alpha=1e-5"]
    from_artifact = replay(*common, "--signal", "entropy", "--reference-from", "model", "signal.txt", cwd=tmp_path)
    from_file = replay(*common, "--reference", "reference.txt", "signal.txt", cwd=tmp_path)
    # The same reference either way (the file is rounded to 6 decimals: compare the decisions).
    assert [(e["index"], e["level"]) for e in from_artifact[:-1]] == [(e["index"], e["level"]) for e in from_file[:-1]]
    drifts = [e["index"] for e in from_artifact if e.get("level") == "drift"]
    assert drifts and drifts[0] >= 1000
    summary = from_artifact[-1]
    assert summary["final"]["reference_samples"] == 400 and summary["samples"] == 1500 and summary["tested"]

    # --model-reference: the artifact the settings name (model.artifact), here through --config.
    (tmp_path / "monitord.toml").write_text(f'[model]\nartifact = "{tmp_path / "model"}"\n')
    configured = replay(*common, "--signal", "entropy", "--model-reference", "--config", "monitord.toml",
                        "signal.txt", cwd=tmp_path)
    assert configured == from_artifact[:-1] + [{**summary, "seconds": configured[-1]["seconds"]}]


def test_several_signals_from_a_model_artifact(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    reference = rng.normal(size=(300, 2))
    write_artifact(tmp_path / "model", {"activation_mean": reference[:, 0].tolist(),
                                        "activation_std": reference[:, 1].tolist()})
    write(tmp_path / "signal.txt", np.concatenate([rng.normal(size=(300, 2)), rng.normal(size=(200, 2)) + [2.0, 0]]))
    *events, summary = replay("-d", "nm_ddm", "--signal", "activation_mean,activation_std",
                              "--reference-from", "model", "-p", "alpha_drift=1e-3", "signal.txt", cwd=tmp_path)
    drifts = [e["index"] for e in events if e["level"] == "drift"]
    assert drifts and drifts[0] >= 300 and summary["final"]["reference_samples"] == 300


def test_a_model_reference_that_cannot_be_used_is_named(tmp_path: Path) -> None:
    write_artifact(tmp_path / "model", {"entropy": [0.1, 0.2, 0.3]})
    (tmp_path / "signal.txt").write_text("0.1\n0.2\n")
    missing = run_replay("-d", "pht", "--signal", "margin", "--reference-from", "model", "signal.txt", cwd=tmp_path)
    assert_refused(missing, "model/metadata.json", "no reference for signal(s) margin", "it has entropy")
    unnamed = run_replay("-d", "pht", "--reference-from", "model", "signal.txt", cwd=tmp_path)
    assert_refused(unnamed, "--signal")
    nowhere = run_replay("-d", "pht", "--signal", "entropy", "--reference-from", "elsewhere", "signal.txt",
                         cwd=tmp_path)
    assert_refused(nowhere, "elsewhere", "metadata.json", "monitord train")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metadata.json").write_text("{not json")
    broken = run_replay("-d", "pht", "--signal", "entropy", "--reference-from", "broken", "signal.txt", cwd=tmp_path)
    assert_refused(broken, "broken", "metadata.json")
    both = run_replay("-d", "pht", "--signal", "entropy", "--reference-from", "model", "--reference", "signal.txt",
                      "signal.txt", cwd=tmp_path)
    assert_refused(both, "--reference and --reference-from")


def test_an_impossible_setting_is_refused_before_reading_the_input(tmp_path: Path) -> None:
    (tmp_path / "signal.txt").write_text("0.1\n")
    result = run_replay("-d", "iks", "-p", "window=3", "signal.txt", cwd=tmp_path)
    assert_refused(result, "window = 3", "never")


def test_calibrate_reports_false_alarms_against_the_ert(tmp_path: Path) -> None:
    rng = np.random.default_rng(21)
    # A long reference: the run length a given reference gets varies about the ERT (which is
    # an average over references of its size) less the longer it is.
    write(tmp_path / "reference.txt", rng.normal(3.0, 0.5, 5000))
    write(tmp_path / "clean.txt", rng.normal(3.0, 0.5, 100_000))
    write(tmp_path / "wider.txt", rng.normal(3.0, 0.75, 100_000))
    common = ("-d", "pht", "-p", "ert=2000", "-p", "reference_size=5000", "--reference", "reference.txt", "--calibrate")
    (clean,) = replay(*common, "--json", "clean.txt", cwd=tmp_path)
    assert clean["samples"] == 100_000 and clean["ert"] == 2000.0
    assert clean["false_alarms"] >= 10  # an ERT of 2,000 over 100,000 samples: about 50
    assert clean["run_length"] == clean["samples_tested"] / clean["false_alarms"]
    assert clean["run_length_low"] < clean["run_length"] < clean["run_length_high"]
    assert clean["run_length_high"] >= 2000 and clean["consistent"] is True
    # Data unlike the reference (wider: PHT re-learns a mean after a drift, not a spread)
    # alarm far more often than the ERT allows, and replay says so.
    (wider,) = replay(*common, "--json", "wider.txt", cwd=tmp_path)
    assert wider["false_alarms"] > 3 * clean["false_alarms"] and wider["consistent"] is False
    assert "more often than an ert of 2000" in wider["verdict"]
    text = run_replay(*common, "clean.txt", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert f"{clean['false_alarms']} false alarm(s)" in text.stdout and "95 % interval" in text.stdout
    assert "consistent" in text.stdout and "{" not in text.stdout


def test_calibrate_without_an_ert_still_counts_the_alarms(tmp_path: Path) -> None:
    rng = np.random.default_rng(22)
    write(tmp_path / "clean.txt", rng.random(20_000) < 0.05)
    (result,) = replay("-d", "bernoulli_cusum", "-p", "threshold=2", "--calibrate", "--json", "clean.txt", cwd=tmp_path)
    assert result["ert"] is None and result["consistent"] is None and result["false_alarms"] > 0
    assert result["samples_tested"] == 20_000 - 500  # the first min_samples labels only learn the rate
