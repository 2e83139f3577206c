"""The plugin's own keys in the ``[model]`` settings section, and their validation.

The core hands over whatever extra keys ``[model]`` holds (``ModelSettings.plugin_options``);
validating them here, with ``extra="forbid"``, turns a misspelled key into an error that
names it instead of a silently ignored setting.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from monitord.settings import ModelSettings, SettingsError, describe_validation_error
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from .preprocess import Interpolation, PreprocessSpec

if TYPE_CHECKING:
    from .weights_transforms import WeightsTransform

#: torchvision's ImageNet statistics, the right default for its architectures.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The same statistics averaged over channels, for single-channel input.
IMAGENET_GRAY_MEAN = (0.449,)
IMAGENET_GRAY_STD = (0.226,)

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class TorchvisionOptions(BaseModel):
    """Keys of ``[model]`` that belong to the ``torchvision`` model type.

    Without ``architecture`` the plugin serves the trained artifact folder
    (``model.artifact``), training the default digits model there first when
    ``train_if_missing`` allows. With ``architecture`` it builds that torchvision model and
    loads ``weights``; ``classes`` (or ``classes_file``), ``input_size``, ``channels``,
    ``mean``, ``std``, ``resize_size`` and ``interpolation`` then describe how the weights
    were trained, or ``transforms`` names the torchvision weights entry whose
    ``transforms()`` sets the preprocessing ones (see ``preprocess_spec``). With ``program``
    (instead of ``architecture``) it serves a TorchScript or torch.export file, which
    holds its own network and weights; the same keys but ``weights`` describe its input.

    The rest tune speed, whichever model is served: ``channels_last`` (default: on for
    CUDA, off for the CPU) and ``autocast`` ("off", "bf16", "fp16") for the forward pass,
    ``decode_on_device`` to decode JPEGs in batches on the model's device, and
    ``torch_threads`` for CPU inference.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str | None = Field(None, min_length=1)
    #: A TorchScript (``torch.jit.save``) or ``torch.export.save`` file.
    program: Path | None = None
    weights: Path | None = None
    classes: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)
    classes_file: Path | None = None
    input_size: tuple[PositiveInt, PositiveInt] = (224, 224)
    channels: Literal[1, 3] = 3
    mean: tuple[float, ...] | None = Field(None, min_length=1, max_length=3)
    std: tuple[PositiveFloat, ...] | None = Field(None, min_length=1, max_length=3)
    #: Shorter side resized to this, then the centre ``input_size`` crop; None: resize
    #: straight to ``input_size``.
    resize_size: PositiveInt | None = None
    interpolation: Interpolation = "bilinear"
    #: A torchvision weights entry ("ResNet18_Weights.IMAGENET1K_V1") whose transforms()
    #: sets input_size, resize_size, mean, std and interpolation.
    transforms: str | None = Field(None, min_length=1)
    activation_layer: str | None = Field(None, min_length=1)
    train_if_missing: bool = True
    #: Network and inputs in ``torch.channels_last``; None: on for CUDA, off for the CPU.
    channels_last: bool | None = None
    #: Mixed precision for the forward pass; signals are computed in float32 afterwards.
    autocast: Literal["off", "bf16", "fp16"] = "off"
    #: Decode JPEGs on the model's device in batches (nvJPEG on CUDA).
    decode_on_device: bool = False
    #: ``torch.set_num_threads`` for CPU inference; None: half the usable cores (torch's
    #: default when ``OMP_NUM_THREADS`` is set).
    torch_threads: PositiveInt | None = None

    @field_validator("classes", "input_size", "mean", "std", mode="before")
    @classmethod
    def _json_list_from_environment(cls, value: Any) -> Any:
        """Lists set through ``MONITORD_MODEL__*`` variables arrive as strings."""
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
        return value

    @field_validator("channels", mode="before")
    @classmethod
    def _channels_from_environment(cls, value: Any) -> Any:
        """``MONITORD_MODEL__CHANNELS=1`` arrives as the string "1", which a Literal refuses."""
        if isinstance(value, str) and value.strip() in ("1", "3"):
            return int(value)
        return value

    @field_validator("channels_last", "decode_on_device", "torch_threads", mode="before")
    @classmethod
    def _no_numbers_for_flags_nor_flags_for_numbers(cls, value: Any, info: Any) -> Any:
        """Pydantic would read ``torch_threads = true`` as 1 and ``channels_last = 2`` as
        an error only by luck; say plainly what each key takes."""
        if info.field_name == "torch_threads":
            if isinstance(value, bool):
                raise PydanticCustomError(
                    "threads", "must be a whole number of threads (e.g. 8), not true/false"
                )
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            raise PydanticCustomError("flag", "must be true or false")
        return value

    @field_validator("autocast", mode="before")
    @classmethod
    def _autocast_words(cls, value: Any) -> Any:
        """Refuse the likely near misses with the accepted spellings and a recommendation."""
        if value not in ("off", "bf16", "fp16"):
            raise PydanticCustomError(
                "autocast",
                'must be "off", "bf16" or "fp16" (bf16 is the recommended setting on a GPU; '
                '"off" runs in float32)',
            )
        return value

    @field_validator("classes")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            repeated = sorted({name for name in value if value.count(name) > 1})
            raise ValueError(f"class names must be unique; repeated: {', '.join(repeated)}")
        return value

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)``, one value per channel, with ImageNet's as the default."""
        if self.channels == 3:
            default_mean, default_std = IMAGENET_MEAN, IMAGENET_STD
        else:
            default_mean, default_std = IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD
        return (self.mean or default_mean, self.std or default_std)

    def listed_classes(self) -> tuple[list[str], str]:
        """The class names in output order, and the key that gave them (for messages)."""
        if self.classes is not None:
            return list(self.classes), "model.classes"
        if self.classes_file is not None:
            return read_classes_file(self.classes_file), f"model.classes_file ({self.classes_file})"
        raise SettingsError("model.classes (or model.classes_file) is needed: list the class names in output order")

    def preprocess_spec(self) -> PreprocessSpec:
        """How inputs are preprocessed for the model these keys describe.

        With ``transforms``, that weights entry's values, the keys set explicitly having to
        agree with them: a key that silently lost to ``transforms`` (or won over it) would
        hide which preprocessing the model really gets. Raises ``SettingsError`` naming
        each contradiction, an unknown ``transforms`` name, or a crop larger than the resize.
        """
        problems = self._preprocess_problems()
        if problems:
            raise SettingsError(_problem_list(problems))
        if self.transforms is not None:
            preset = self._weights_transform()
            return PreprocessSpec(
                input_size=preset.input_size,
                channels=3,
                mean=preset.mean,
                std=preset.std,
                resize_size=preset.resize_size,
                interpolation=preset.interpolation,
            )
        mean, std = self.normalisation()
        return PreprocessSpec(
            input_size=tuple(self.input_size),
            channels=self.channels,
            mean=mean,
            std=std,
            resize_size=self.resize_size,
            interpolation=self.interpolation,
        )

    def _weights_transform(self) -> WeightsTransform:
        from .weights_transforms import UnknownTransform, weights_transform

        try:
            return weights_transform(self.transforms)
        except UnknownTransform as error:
            raise SettingsError(f"model.transforms = {self.transforms!r}: {error}") from None

    def _preprocess_problems(self) -> list[str]:
        """One line per preprocessing key that contradicts another (empty: none)."""
        if self.transforms is None:
            if self.resize_size is not None and self.resize_size < max(self.input_size):
                return [
                    f"  model.resize_size = {self.resize_size} is smaller than model.input_size "
                    f"= {list(self.input_size)}: the centre crop would reach past the resized "
                    f"image; set resize_size to at least {max(self.input_size)}, or remove it "
                    "to resize straight to input_size"
                ]
            return []
        try:
            preset = self._weights_transform()
        except SettingsError as error:
            return [f"  {error}"]
        expected: dict[str, object] = {
            "input_size": preset.input_size,
            "resize_size": preset.resize_size,
            "mean": preset.mean,
            "std": preset.std,
            "interpolation": preset.interpolation,
            "channels": 3,
        }
        problems = []
        for key, wanted in expected.items():
            if key not in self.model_fields_set:
                continue
            given = getattr(self, key)
            if not _same(given, wanted):
                shown = list(given) if isinstance(given, tuple) else given
                problems.append(
                    f"  model.{key} = {shown!r} contradicts model.transforms = "
                    f"{self.transforms!r}, whose transforms() give "
                    f"{list(wanted) if isinstance(wanted, tuple) else wanted!r}; remove "
                    f"model.{key} (model.transforms sets it), or remove model.transforms "
                    "and set each preprocessing key yourself"
                )
        return problems


#: Keys that only make sense together with ``architecture``.
_ARCHITECTURE_KEYS = (
    "weights",
    "classes",
    "classes_file",
    "input_size",
    "channels",
    "mean",
    "std",
    "resize_size",
    "interpolation",
    "transforms",
)


def _same(given: object, wanted: object) -> bool:
    """Equal, floats within rounding (a TOML 0.485 and torchvision's are the same value)."""
    if isinstance(given, tuple) and isinstance(wanted, tuple):
        return len(given) == len(wanted) and all(map(_same, given, wanted))
    if isinstance(given, float) or isinstance(wanted, float):
        return math.isclose(float(given), float(wanted), rel_tol=1e-6)
    return given == wanted


def _problem_list(problems: list[str]) -> str:
    return "\n".join([f"invalid settings ({len(problems)} problem(s)):", *problems])


def parse_options(settings: ModelSettings | dict[str, Any]) -> TorchvisionOptions:
    """Validate the plugin's keys, or raise ``SettingsError`` naming each bad one."""
    raw = settings.plugin_options() if isinstance(settings, ModelSettings) else dict(settings)
    try:
        options = TorchvisionOptions.model_validate(raw)
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error, prefix=("model",))) from None
    _check_combinations(options, raw)
    return options


def _check_combinations(options: TorchvisionOptions, raw: dict[str, Any]) -> None:
    """Rules between keys, which per-field validation cannot express."""
    problems: list[str] = []
    if options.program is not None:
        problems.extend(_program_problems(options))
    elif options.architecture is None:
        stray = [key for key in _ARCHITECTURE_KEYS if key in raw]
        if stray:
            problems.append(
                f"  model.{stray[0]} is set but model.architecture is not: "
                f"{', '.join('model.' + key for key in stray)} describe a torchvision model "
                "loaded from a weights file; set model.architecture too, or remove them to "
                "serve the trained artifact (model.artifact), whose metadata.json holds them"
            )
    else:
        if options.weights is None:
            problems.append(
                f"  model.weights is missing: model.architecture = {options.architecture!r} "
                "needs a weights file (.safetensors, or a .pt/.pth state dict) trained for it"
            )
        if options.classes is None and options.classes_file is None:
            problems.append(
                "  model.classes is missing: list the class names in output order "
                '(classes = ["cat", "dog"]) or name a text file with one per line '
                "(classes_file)"
            )
        if options.classes is not None and options.classes_file is not None:
            problems.append(
                "  model.classes and model.classes_file are both set; keep only one of them"
            )
    for key in ("mean", "std"):
        value = getattr(options, key)
        if value is not None and len(value) != options.channels and options.transforms is None:
            problems.append(
                f"  model.{key} = {list(value)!r}: needs one value per channel, and "
                f"model.channels = {options.channels}"
            )
    if options.architecture is not None or options.program is not None:
        problems.extend(options._preprocess_problems())
    if problems:
        raise SettingsError(_problem_list(problems))


def _program_problems(options: TorchvisionOptions) -> list[str]:
    """The rules for ``model.program``, which replaces architecture and weights."""
    problems: list[str] = []
    if options.architecture is not None:
        problems.append(
            "  model.program and model.architecture are both set: a program file holds its "
            "own network; keep model.program to serve the file, or model.architecture and "
            "model.weights to serve a torchvision architecture"
        )
    if options.weights is not None:
        problems.append(
            "  model.weights is set with model.program: the program file holds its weights; "
            "remove model.weights"
        )
    if options.classes is None and options.classes_file is None:
        problems.append(
            "  model.classes is missing: list the class names in the order of the program's "
            'outputs (classes = ["cat", "dog"]) or name a text file with one per line '
            "(classes_file)"
        )
    if options.classes is not None and options.classes_file is not None:
        problems.append(
            "  model.classes and model.classes_file are both set; keep only one of them"
        )
    if options.activation_layer is not None:
        problems.append(
            f"  model.activation_layer = {options.activation_layer!r} cannot be used with "
            "model.program: torch runs no forward hooks inside TorchScript or torch.export "
            "programs; return (logits, features) from the program's forward instead, and "
            "the features are watched (remove model.activation_layer)"
        )
    return problems


def read_classes_file(path: Path) -> list[str]:
    """Class names from a text file, one per line; blank lines and ``#`` comments skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(
            f"model.classes_file = '{path}': no such file; give the path of a text file "
            "with one class name per line, or list them in model.classes"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(
            f"model.classes_file = '{path}': cannot be read as UTF-8 text ({error})"
        ) from None
    names = [line.strip() for line in text.splitlines()]
    names = [name for name in names if name and not name.startswith("#")]
    if not names:
        raise SettingsError(
            f"model.classes_file = '{path}': the file lists no class names; write one per line"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SettingsError(
            f"model.classes_file = '{path}': class names must be unique; repeated: "
            + ", ".join(repeated)
        )
    return names
