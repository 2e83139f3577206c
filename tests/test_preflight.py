"""Settings that cannot work stop `monitord run` before anything loads or binds: exit 2,
one line per problem naming the key and the value, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_process import free_port
from monitord.plugins import load_plugins
from monitord.preflight import check_configuration
from monitord.settings import SettingsError, load_settings


def run_daemon(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MONITORD_")}
    base = {"MONITORD_STATE_DIR": str(tmp_path / "state"), "MONITORD_HTTP__PORT": str(free_port()),
            "MONITORD_FOLDER__INBOX": str(tmp_path / "inbox")}
    return subprocess.run([sys.executable, "-m", "monitord", "run"], env={**clean, **base, **env},
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


BAD_SETTINGS = [
    pytest.param({"MONITORD_DETECTORS": json.dumps([{"type": "pht", "signal": "confidance"}])},
                 ["detectors[0]", "'confidance'", "produces no signal", "confidence"], id="misspelled-signal"),
    pytest.param({"MONITORD_DETECTORS": json.dumps([{"type": "phtt", "signal": "confidence"}])},
                 ["detectors[0]", "type = 'phtt'", "installed:"], id="unknown-type"),
    pytest.param({"MONITORD_DETECTORS": json.dumps([{"type": "pht", "signal": "confidence", "treshold": 5}])},
                 ["pht_confidence", "treshold"], id="unknown-parameter"),
    pytest.param({"MONITORD_DETECTORS": json.dumps([{"type": "pht", "signal": "confidence", "threshold": -1}])},
                 ["pht_confidence", "threshold"], id="bad-parameter"),
    pytest.param({"MONITORD_DETECTORS": json.dumps([{"type": "iks", "signal": "entropy", "window": 3}])},
                 ["iks_entropy", "can never alarm", "window = 3"], id="can-never-alarm"),
    pytest.param({"MONITORD_DETECTORS": '[{"type": "pht",'},
                 ["MONITORD_DETECTORS", "not valid JSON", "line 1 column"], id="malformed-json"),
    pytest.param({"MONITORD_SINKS": json.dumps([{"type": "webhook", "urls": ["ftp://example"]}])},
                 ["sinks[0]", "ftp://example"], id="bad-sink"),
    pytest.param({"MONITORD_SOURCES": json.dumps(["folder", "ftp"])},
                 ["sources[1] = 'ftp'"], id="unknown-source"),
    pytest.param({"MONITORD_MODEL__AUTOCAST": "yes"}, ["model.autocast = 'yes'"], id="model-plugin-key"),
]


@pytest.mark.parametrize(("env", "expected"), BAD_SETTINGS)
def test_bad_settings_stop_the_daemon_before_anything_loads(tmp_path: Path, env: dict, expected: list[str]) -> None:
    result = run_daemon(tmp_path, env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in expected:
        assert fragment in lines[0], lines[0]
    # Nothing was created, loaded or bound.
    assert not (tmp_path / "state").exists()
    assert "HTTP on" not in result.stderr


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    result = run_daemon(tmp_path, {
        "MONITORD_DETECTORS": json.dumps([{"type": "pht", "signal": "confidance"}, {"type": "nope", "signal": "entropy"}]),
        "MONITORD_SINKS": json.dumps([{"type": "webhook", "urls": []}]),
    })
    assert result.returncode == 2
    assert "3 problems" in result.stderr
    assert "'confidance'" in result.stderr and "'nope'" in result.stderr and "sinks[0]" in result.stderr


def test_a_model_plugin_that_declares_no_signals_is_not_second_guessed() -> None:
    """A third-party model factory without ``signals()`` may produce any signal: no refusal."""
    import monitord_testplugin

    host = load_plugins({})
    host.pm.register(monitord_testplugin, name="testplugin")
    settings = load_settings(model={"type": "brightness"},
                             detectors=[{"type": "pht", "signal": "brightness"}])
    check_configuration(settings, host)  # no error: brightness is the plugin's business
    torchvision = load_settings(detectors=[{"type": "pht", "signal": "brightness"}])
    with pytest.raises(SettingsError, match="produces no signal 'brightness'"):
        check_configuration(torchvision, host)


def test_the_default_settings_pass(tmp_path: Path) -> None:
    check_configuration(load_settings(), load_plugins())
