"""Settings come from TOML, .env and MONITORD_* variables, and fail with readable errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitord.settings import DetectorSpec, Settings, SettingsError, SinkSpec, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("MONITORD_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_match_the_public_contract() -> None:
    settings = load_settings()
    assert settings.http.host == "127.0.0.1"
    assert settings.http.port == 8000
    assert settings.folder.inbox == Path("inbox")
    assert settings.sources == ["folder", "http"]
    assert settings.model_artifact == Path("state") / "model"
    assert [(spec.type, spec.signals) for spec in settings.detectors] == [
        ("pht", ["confidence"]),
        ("iks", ["entropy"]),
        ("nm_ddm", ["activation_mean", "activation_std"]),
        ("class_mix", ["predicted_class"]),
        ("bernoulli_cusum", ["error"]),
    ]


def test_precedence_env_over_dotenv_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "monitord.toml"
    config.write_text('[http]\nport = 9001\nhost = "0.0.0.0"\n[pipeline]\nmax_batch_size = 8\n')
    (tmp_path / ".env").write_text("MONITORD_HTTP__PORT=9002\nMONITORD_PIPELINE__MAX_BATCH_DELAY=0.5\n")
    monkeypatch.setenv("MONITORD_HTTP__PORT", "9003")
    settings = load_settings(config)
    assert settings.http.port == 9003  # environment wins
    assert settings.pipeline.max_batch_delay == 0.5  # .env beats the file
    assert settings.http.host == "0.0.0.0"  # file beats defaults
    assert settings.pipeline.max_batch_size == 8


def test_model_section_passes_plugin_keys_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "monitord.toml"
    config.write_text('[model]\narchitecture = "resnet18"\n')
    monkeypatch.setenv("MONITORD_MODEL__WEIGHTS", "/models/r18.safetensors")
    settings = load_settings(config)
    assert settings.model.plugin_options() == {"architecture": "resnet18", "weights": "/models/r18.safetensors"}


def test_detectors_list_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "monitord.toml"
    config.write_text('[[detectors]]\ntype = "pht"\nsignal = "confidence"\nthreshold = 5\n')
    (spec,) = load_settings(config).detectors
    assert (spec.type, spec.signal, spec.label, spec.params()) == ("pht", "confidence", "pht_confidence", {"threshold": 5})


def test_alerts_and_sinks_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "monitord.toml"
    config.write_text('[alerts]\ncooldown_seconds = 5\n[[sinks]]\ntype = "webhook"\nname = "ops"\n'
                      'urls = ["http://x/hook"]\n')
    settings = load_settings(config)
    assert settings.alerts.cooldown_seconds == 5 and settings.alerts.warning_alerts is True
    (sink,) = settings.sinks
    assert (sink.type, sink.label, sink.options()) == ("webhook", "ops", {"urls": ["http://x/hook"]})
    assert [spec.label for spec in load_settings().sinks] == ["log"]


def test_bad_value_names_the_key_the_value_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITORD_HTTP__PORT", "eighty")
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert "http.port = 'eighty'" in message
    assert "MONITORD_HTTP__PORT" in message


def test_out_of_range_and_unknown_keys(tmp_path: Path) -> None:
    config = tmp_path / "monitord.toml"
    config.write_text("[pipeline]\nmax_batch_size = 0\n[folder]\ninbx = 'typo'\n")
    with pytest.raises(SettingsError) as error:
        load_settings(config)
    message = str(error.value)
    assert "pipeline.max_batch_size = 0" in message and "greater than 0" in message
    assert "folder.inbx: unknown setting" in message


def test_missing_and_malformed_config_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[http\nport = 1\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(broken)


def test_daemon_refuses_to_start_on_bad_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITORD_")}
    env["MONITORD_PIPELINE__DECODE_WORKERS"] = "-1"
    result = subprocess.run(
        [sys.executable, "-m", "monitord", "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "pipeline.decode_workers = '-1'" in result.stderr
    assert "Traceback" not in result.stderr


def test_example_config_documents_every_setting_with_its_default() -> None:
    """configs/monitord.toml must stay in step with the Settings class."""
    import tomllib

    example = tomllib.loads((Path(__file__).parents[1] / "configs" / "monitord.toml").read_text())
    defaults = Settings.model_construct().model_dump(mode="json")
    for key, value in defaults.items():
        if isinstance(value, dict) and key not in ("source_options",):
            assert key in example, f"[{key}] missing from configs/monitord.toml"
            for sub_key, sub_value in value.items():
                assert example[key].get(sub_key) == sub_value, f"{key}.{sub_key} differs from its default"
        elif key == "detectors":
            listed = [DetectorSpec(**entry) for entry in example["detectors"]]
            assert listed == Settings.model_construct().detectors, "[[detectors]] differ from the default set"
        elif key == "sinks":
            listed = [SinkSpec(**entry) for entry in example["sinks"]]
            assert listed == Settings.model_construct().sinks, "[[sinks]] differ from the default set"
        elif key != "source_options":
            assert example.get(key) == value, f"{key} differs from its default"
