"""The signals the plugin declares before loading (for the daemon's start-up check) are
the ones its models produce."""

from __future__ import annotations

import pytest
from monitord.settings import ModelSettings, SettingsError
from monitord_torchvision.plugin import SIGNALS, torchvision_model
from monitord_torchvision.signals import SIGNAL_NAMES


def test_declared_signals_are_the_ones_a_model_produces(digits_model) -> None:
    import numpy as np

    declared = tuple(torchvision_model.signals(ModelSettings()))
    assert declared == SIGNALS == SIGNAL_NAMES
    result = digits_model.predict(np.zeros((2, 1, 8, 8), dtype=np.float32))
    assert set(result.signals) == set(declared)


def test_declaring_checks_the_plugin_keys() -> None:
    with pytest.raises(SettingsError, match="model.autocast"):
        torchvision_model.signals(ModelSettings(autocast="yes"))
