"""The hook implementation monitord discovers through this distribution's entry point.

Hooks only register factories; nothing is loaded until the daemon calls the factory.
"""

from __future__ import annotations

from pathlib import Path

from monitord.hookspecs import Register, hookimpl
from monitord.settings import ModelSettings

from .model import SIGNALS, NearestCentroidModel
from .options import parse_options

#: The ``model.type`` this plugin serves.
MODEL_TYPE = "nearest_centroid"


class NearestCentroidFactory:
    """``factory(settings, state_dir) -> Model``, plus the optional ``signals(settings)``."""

    def __call__(self, settings: ModelSettings, state_dir: Path) -> NearestCentroidModel:
        options = parse_options(settings)
        assert options.centroids is not None  # parse_options refuses a missing one
        return NearestCentroidModel(options.centroids, options.temperature)

    def signals(self, settings: ModelSettings) -> tuple[str, ...]:
        """Check the plugin's ``[model]`` keys and name the signals, loading nothing: the
        daemon calls this first, to refuse a detector on a signal the model never produces."""
        parse_options(settings)
        return SIGNALS


@hookimpl
def register_models(register: Register) -> None:
    register(MODEL_TYPE, NearestCentroidFactory())
