"""The plugin's own keys in the ``[model]`` settings section, and their validation.

The core keeps ``type``, ``artifact`` and ``device`` and hands every other key of
``[model]`` to the plugin (``ModelSettings.plugin_options()``). Validating them here with
``extra="forbid"`` turns a misspelled key into an error that names it.
"""

from __future__ import annotations

from pathlib import Path

from monitord.settings import ModelSettings, SettingsError, describe_validation_error
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class NearestCentroidOptions(BaseModel):
    """Keys of ``[model]`` that belong to the ``nearest_centroid`` model type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The centroid file written by ``python -m monitord_example_model.build``.
    centroids: Path | None = None
    #: Softness of the class probabilities, in the units of ``distance`` (RMS pixel
    #: difference, 0..1): lower makes the nearest class more certain.
    temperature: float = Field(0.02, gt=0)


def parse_options(settings: ModelSettings) -> NearestCentroidOptions:
    """Validate the plugin's keys, or raise ``SettingsError`` naming each bad one.

    Cheap (no file is read), since the daemon calls it before anything loads.
    """
    try:
        options = NearestCentroidOptions.model_validate(settings.plugin_options())
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error, prefix=("model",))) from None
    if options.centroids is None:
        raise SettingsError(
            "model.centroids is missing: name the centroid file of the nearest_centroid model "
            "(make one from labelled images with `python -m monitord_example_model.build DIR FILE`)"
        )
    if not options.centroids.is_file():
        raise SettingsError(
            f"model.centroids = '{options.centroids}': no such file; make one from labelled images "
            "with `python -m monitord_example_model.build DIR FILE`"
        )
    return options
