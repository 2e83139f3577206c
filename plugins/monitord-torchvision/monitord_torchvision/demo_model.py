"""Which model the demo may feed: the default digits model, and nothing else.

The demo writes 8x8 grayscale digits. Fed to another model they would be resized to its
input and classified into classes that are not digits, and the "drift" it shows would
mean nothing; so the demo checks the model first, before it writes a single file, from
the settings and the artifact's metadata (its own daemon) or from
``monitord_build_info`` (a running daemon).
"""

from __future__ import annotations

from pathlib import Path

from monitord.settings import Settings

from .errors import DemoError

#: What the demo tells a user whose settings serve another model.
_WHAT_TO_DO = (
    "the demo writes 8x8 grayscale digits and needs the default digits model; run it with "
    "settings that serve that model (no model.architecture; model.artifact written by "
    "`monitord train`, or not there yet, and the demo trains one in its temporary folder)"
)


def artifact_to_reuse(settings: Settings) -> Path | None:
    """The trained digits artifact the settings name, for the demo's daemon to read; None
    when there is none yet (the demo's daemon then trains one in its own folder).

    Raises ``DemoError`` when the settings serve any other model.
    """
    from .artifact import is_artifact, read_metadata
    from .errors import ModelLoadError

    model = settings.model
    if model.type != "torchvision":
        raise DemoError(f"model.type = {model.type!r} is not the torchvision plugin's model: {_WHAT_TO_DO}")
    architecture = model.plugin_options().get("architecture")
    if architecture:
        raise DemoError(f"model.architecture = {architecture!r} is set, so the daemon serves that model: {_WHAT_TO_DO}")
    artifact = settings.model_artifact
    if not is_artifact(artifact):
        return None
    try:
        metadata = read_metadata(artifact)
    except ModelLoadError as error:
        raise DemoError(f"{error}; the demo cannot tell which model it holds") from None
    differences = digits_differences(
        metadata.architecture, metadata.class_names, tuple(metadata.input_size), metadata.channels
    )
    if differences:
        raise DemoError(f"the model at {artifact} (model.artifact) is not the digits model ({differences}): {_WHAT_TO_DO}")
    return artifact


def digits_differences(architecture: str, class_names: list[str], input_size: tuple[int, int], channels: int) -> str:
    """How a model differs from the default digits model, or "" when it is that model."""
    from .architectures import DIGITS_CNN
    from .digits import DIGIT_CLASS_NAMES
    from .training import DIGITS_INPUT_SIZE

    found = []
    if architecture != DIGITS_CNN:
        found.append(f"architecture {architecture!r}, not {DIGITS_CNN!r}")
    if list(class_names) != list(DIGIT_CLASS_NAMES):
        shown = ", ".join(class_names[:5]) + (", ..." if len(class_names) > 5 else "")
        found.append(f"classes {shown}, not the digits 0 to 9")
    if tuple(input_size) != DIGITS_INPUT_SIZE or channels != 1:
        found.append(f"input {channels}x{input_size[0]}x{input_size[1]}, not 1x8x8")
    return "; ".join(found)


def check_served_model(model: str | None, url: str) -> None:
    """Refuse a running daemon whose ``monitord_build_info`` names another model."""
    from .architectures import DIGITS_CNN

    if model != DIGITS_CNN:
        served = f"serves {model!r}" if model else "does not say which model it serves (monitord_build_info)"
        raise DemoError(f"the daemon at {url} {served}, not the default digits model ({DIGITS_CNN}): {_WHAT_TO_DO}")
