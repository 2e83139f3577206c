"""The signals the plugin declares before loading (for the daemon's start-up check) are
the ones its models produce."""

from __future__ import annotations

import pytest
from monitord.settings import ModelSettings, SettingsError
from monitord_torchvision.plugin import SIGNALS, torchvision_model
from monitord_torchvision.signals import SIGNAL_NAMES


def test_declared_signals_match_the_produced_ones() -> None:
    assert SIGNALS == SIGNAL_NAMES
    assert tuple(torchvision_model.signals(ModelSettings())) == SIGNAL_NAMES


def test_declaring_checks_the_plugin_keys() -> None:
    with pytest.raises(SettingsError, match="model.autocast"):
        torchvision_model.signals(ModelSettings(autocast="yes"))
