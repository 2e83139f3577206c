"""``monitord replay``: a detector over recorded values, events and summary as JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from installed_plugin import install_testplugin


def replay(*args: str, env: dict[str, str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitord", "replay", *args],
        env={**os.environ, **env}, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120,
    )


def lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def test_events_are_indexed_over_the_whole_input_across_chunks(tmp_path: Path) -> None:
    env = install_testplugin(tmp_path / "site")
    values = ["0.1"] * 10_000
    values[3] = values[4500] = values[9999] = "0.9"
    (tmp_path / "signal.txt").write_text("# confidence\n" + "\n".join(values) + "\n\n")
    result = replay("--detector", "over", "--param", "limit=0.5", "signal.txt", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    *events, summary = lines(result.stdout)
    assert [(e["index"], e["level"]) for e in events] == [(3, "drift"), (4500, "drift"), (9999, "drift")]
    assert events[0]["statistic"] == 0.9 and events[0]["threshold"] == 0.5
    assert summary["samples"] == 10_000 and summary["events"] == 3 and summary["seconds"] >= 0
    assert summary["final"]["level"] == "drift"


def test_parameters_and_standard_input(tmp_path: Path) -> None:
    env = install_testplugin(tmp_path / "site")
    stream = "0.6\n0.7\n0.9\n0.1\n"
    default = lines(replay("-d", "over", "-", env=env, cwd=tmp_path, stdin=stream).stdout)
    strict = lines(replay("-d", "over", "-p", "limit=0.8", "-p", "warn=0.65", "-", env=env, cwd=tmp_path, stdin=stream).stdout)
    assert [(e["index"], e["level"]) for e in default[:-1]] == [(0, "drift")]
    assert [(e["index"], e["level"]) for e in strict[:-1]] == [(1, "warning"), (2, "drift")]


def assert_refused(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit status 2, nothing on stdout, one line on stderr holding every ``expected``."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)


def test_bad_input_and_unknown_detector_say_what_to_fix(tmp_path: Path) -> None:
    env = install_testplugin(tmp_path / "site")
    bad = replay("-d", "over", "-", env=env, cwd=tmp_path, stdin="0.1\n0.2\nabc\n")
    assert_refused(bad, "line 3", "'abc'")
    ragged = replay("-d", "over", "-", env=env, cwd=tmp_path, stdin="0.1,0.2\n0.3\n")
    assert_refused(ragged, "line 2: 1 value(s) where earlier lines had 2")
    unknown = replay("-d", "nope", "-", env=env, cwd=tmp_path, stdin="0.1\n")
    assert_refused(unknown, "nope", "over")
    empty = replay("-d", "over", "-", env=env, cwd=tmp_path, stdin="# only a comment\n\n")
    assert_refused(empty, "holds no values")
    (tmp_path / "reference.txt").write_text("x\n")
    bad_reference = replay("-d", "over", "-r", "reference.txt", "-", env=env, cwd=tmp_path, stdin="0.1\n")
    assert_refused(bad_reference, "reference.txt, line 1")
    bad_param = replay("-d", "over", "-p", "limit", "-", env=env, cwd=tmp_path, stdin="0.1\n")
    assert bad_param.returncode == 2 and "key=value" in bad_param.stderr


def test_columns_must_match_the_signals_named(tmp_path: Path) -> None:
    env = install_testplugin(tmp_path / "site")
    result = replay("-d", "over", "--signal", "a", "--signal", "b", "-", env=env, cwd=tmp_path, stdin="0.1\n")
    assert_refused(result, "line 1: 1 value(s) where --signal names 2 (a, b)")


def test_json_without_calibrate_is_refused(tmp_path: Path) -> None:
    env = install_testplugin(tmp_path / "site")
    result = replay("-d", "over", "--json", "-", env=env, cwd=tmp_path, stdin="0.1\n")
    assert_refused(result, "--json goes with --calibrate")
