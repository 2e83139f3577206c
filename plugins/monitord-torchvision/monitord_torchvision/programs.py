"""TorchScript and torch.export programs served as classifiers (``model.program``).

A program file holds its network and weights, so a classifier that torchvision does not
know is served without writing a plugin. Both kinds are zip archives and are told apart
by their content, not their name: TorchScript's has a ``code/`` folder, torch.export's an
``archive_format`` entry reading ``pt2``. A ``torch.save`` file (a state dict, or a whole
pickled module) is refused with what to do instead.

Loading runs no Python unpickler on anything but tensors (torch 2.14):

- ``torch.jit.load`` reads ``data.pkl`` and ``constants.pkl`` with TorchScript's own C++
  unpickler, which rebuilds TorchScript values (tensors, containers, script classes)
  and imports no Python name.
- ``torch.export.load`` uses Python's pickle for tensor subclasses among the weights or
  constants (``use_pickle`` in the archive's index), for opaque constant objects, and for
  example inputs that ``torch.load(weights_only=True)`` refuses; and it would load an
  AOTInductor package's compiled code. ``check_export_archive`` reads the archive's JSON
  indices first and refuses a file that would take any of those paths.

Either way a program is code (TorchScript, or an exported graph of torch operators) that
runs with the daemon's rights: serve programs you trust, as with any model.

The program returns the logits (N, classes), or the logits and a feature tensor as a
tuple or list ``(logits, features)`` or a dict with keys ``logits`` and ``features``.
The activation signals and the embedding come from the features, else from the logits:
torch runs no forward hooks inside either kind of program, so ``model.activation_layer``
is refused with one (``options``).

A torch.export program exported for a batch of exactly one image is served one image at
a time (with a warning saying how to export it with a dynamic batch); one exported for a
fixed batch of several is refused, as monitord's batches vary in size.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .activations import LayerReading
from .devices import resolve_device
from .errors import ModelLoadError
from .fingerprint import file_digest
from .inference import DeviceDecodingModel, TorchvisionModel
from .loading import acceleration_for
from .options import TorchvisionOptions
from .preprocess import PreprocessSpec
from .signals import activation_statistics, pooled_features

logger = logging.getLogger("monitord.torchvision")

ProgramKind = Literal["torchscript", "torch.export"]

#: How to write each kind of file, for the error messages.
HOW_TO_EXPORT = (
    "torch.export.save(torch.export.export(model.eval(), (example,), dynamic_shapes="
    '({0: torch.export.Dim("batch")},)), path) with an example batch of 2 or more images'
)
HOW_TO_SAVE = f"{HOW_TO_EXPORT}, or torch.jit.save(torch.jit.script(model.eval()), path)"


def load_from_program(
    options: TorchvisionOptions, *, device: str | torch.device = "auto"
) -> TorchvisionModel:
    """Serve ``model.program`` with the classes and input the settings describe.

    ``model.channels_last``, ``model.autocast`` and ``model.decode_on_device`` apply as
    for architectures.
    """
    if options.program is None:
        raise ModelLoadError("model.program is needed")
    path = Path(options.program)
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    class_names, _ = options.listed_classes()
    spec = options.preprocess_spec()
    network, kind = load_program(path, spec, torch_device)
    model_class = DeviceDecodingModel if options.decode_on_device else TorchvisionModel
    return model_class(
        network,
        name=path.stem,
        class_names=class_names,
        spec=spec,
        device=torch_device,
        reference_signals={},
        acceleration=acceleration_for(options, torch_device),
        features=ProgramOutputs(),
        weights_digest=file_digest(path),
        kind=kind,
    )


def load_program(
    path: Path, spec: PreprocessSpec, device: torch.device
) -> tuple[ProgramNetwork, ProgramKind]:
    """The program in ``path`` on ``device``, and its kind; ``ModelLoadError`` saying why not."""
    where = f"model.program = '{path}'"
    kind = identify_program(path)
    if kind == "torchscript":
        with warnings.catch_warnings():
            # torch 2.14 marks TorchScript deprecated on every load; the README says so once.
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecated")
            try:
                module = torch.jit.load(str(path), map_location=device)
            except Exception as error:  # noqa: BLE001 - torch's verdict on the file
                raise ModelLoadError(
                    f"{where}: torch.jit.load cannot read it ({error}); save it again with "
                    "this torch version"
                ) from None
        return ProgramNetwork(module, kind), kind
    with zipfile.ZipFile(path) as archive:
        check_export_archive(archive, where)
    try:
        with open(path, "rb") as handle:
            program = torch.export.load(handle)
    except Exception as error:  # noqa: BLE001 - torch's verdict on the file
        raise ModelLoadError(
            f"{where}: torch.export.load cannot read it ({error}); export it again with "
            "this torch version"
        ) from None
    one_row_at_a_time = _checked_batch(program, spec, where)
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    return ProgramNetwork(program.module(), kind, one_row_at_a_time=one_row_at_a_time), kind


def identify_program(path: Path) -> ProgramKind:
    """What kind of program ``path`` holds, told from its content."""
    where = f"model.program = '{path}'"
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "no such file"
        raise ModelLoadError(f"{where}: {what}; give the path of a file saved with {HOW_TO_SAVE}")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            head = handle.read(16)
        what = (
            "an old-style torch.save pickle"
            if head[:1] == b"\x80"
            else "a safetensors file"
            if head[8:9] == b"{"
            else "not a zip archive"
        )
        raise ModelLoadError(
            f"{where}: {what}, neither a TorchScript nor a torch.export program; save the "
            f"model as a program with {HOW_TO_SAVE}"
        )
    with zipfile.ZipFile(path) as archive:
        inside = {_inside(name) for name in archive.namelist()}
        if any(name.startswith("code/") for name in inside):
            return "torchscript"
        from torch.export.pt2_archive import constants as pt2

        if pt2.ARCHIVE_FORMAT_PATH in inside:
            archived = archive.read(_full_name(archive, pt2.ARCHIVE_FORMAT_PATH)).decode(errors="replace")
            if archived.strip() == pt2.ARCHIVE_FORMAT_VALUE:
                return "torch.export"
    if "data.pkl" in inside:
        raise ModelLoadError(_pickle_message(path, where))
    raise ModelLoadError(
        f"{where}: a zip archive that is neither a TorchScript nor a torch.export program "
        f"(an older torch.export format, or another tool's); save the model with {HOW_TO_SAVE}"
    )


def _pickle_message(path: Path, where: str) -> str:
    """Why a ``torch.save`` file is refused; ``weights_only`` tells a state dict from a
    pickled object without running the pickle."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - refused by the safe unpickler: it holds objects
        return (
            f"{where}: a whole pickled module (torch.save(model)), which monitord does not "
            "load: unpickling it could run any code. Save the model as a program instead: "
            f"{HOW_TO_SAVE}"
        )
    held = "a state dict" if isinstance(loaded, Mapping) else f"a {type(loaded).__name__}"
    return (
        f"{where}: {held} saved with torch.save, weights without a network. For a "
        "torchvision architecture set model.architecture and model.weights = this file "
        f"instead of model.program; for any other network save it as a program: {HOW_TO_SAVE}"
    )


def check_export_archive(archive: zipfile.ZipFile, where: str) -> None:
    """Refuse a torch.export archive that ``torch.export.load`` would partly unpickle, or
    that holds compiled native code."""
    from torch.export.pt2_archive import constants as pt2

    def refuse(what: str) -> ModelLoadError:
        return ModelLoadError(
            f"{where}: {what}; monitord loads torch.export programs only when nothing in them "
            "needs Python's pickle, which can run any code. Export the model with plain "
            f"tensors and modules: {HOW_TO_SAVE}"
        )

    for name in archive.namelist():
        inner = _inside(name)
        if inner.startswith(pt2.AOTINDUCTOR_DIR):
            raise refuse("the archive holds an AOTInductor package (compiled native code)")
        if inner.startswith((pt2.WEIGHTS_DIR, pt2.CONSTANTS_DIR)) and inner.endswith(".json"):
            try:
                entries = json.loads(archive.read(name))["config"]
            except (ValueError, KeyError, TypeError):
                raise refuse(f"its index {inner} is not readable") from None
            for tensor_name, payload in entries.items():
                stored = str(payload.get("path_name", ""))
                if payload.get("use_pickle") or stored.startswith(
                    (pt2.OPAQUE_OBJ_FILENAME_PREFIX, pt2.CUSTOM_OBJ_FILENAME_PREFIX)
                ):
                    raise refuse(f"{tensor_name} is stored as a pickled object")
        if inner.startswith(pt2.SAMPLE_INPUTS_DIR):
            data = archive.read(name)
            if data:
                try:
                    torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                except Exception:  # noqa: BLE001 - the safe unpickler refused it
                    raise refuse(
                        f"its example inputs ({inner}) are pickled objects, not only tensors"
                    ) from None


def _inside(name: str) -> str:
    """An archive entry's path below the archive's top folder (named after the file)."""
    return name.split("/", 1)[1] if "/" in name else name


def _full_name(archive: zipfile.ZipFile, inner: str) -> str:
    return next(name for name in archive.namelist() if _inside(name) == inner)


def _checked_batch(program: torch.export.ExportedProgram, spec: PreprocessSpec, where: str) -> bool:
    """Check the exported input against the settings; True if it takes one image only."""
    names = list(program.graph_signature.user_inputs)
    if len(names) != 1:
        raise ModelLoadError(
            f"{where}: the program takes {len(names)} inputs ({', '.join(map(str, names))}); "
            "monitord passes one batch of images (N, C, H, W); export a module whose "
            "forward takes one tensor"
        )
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == names[0])
    value = node.meta.get("val")
    shape = list(value.shape) if isinstance(value, torch.Tensor) else []
    if len(shape) != 4:
        raise ModelLoadError(
            f"{where}: the program takes input of shape {tuple(shape)}; monitord passes "
            "images as (N, C, H, W)"
        )
    fixed = [size if isinstance(size, int) else None for size in shape]
    expected = spec.shape
    if any(got is not None and got != want for got, want in zip(fixed[1:], expected)):
        shown = ", ".join("N" if size is None else str(size) for size in fixed)
        raise ModelLoadError(
            f"{where}: the program was exported for input of shape ({shown}), but "
            f"model.channels = {spec.channels} and model.input_size = "
            f"{list(spec.input_size)}; set them to the input the program was exported for"
        )
    batch = fixed[0]
    if batch is None:
        return False
    if batch == 1:
        logger.warning(
            "%s was exported for batches of exactly one image: serving it one image at a "
            "time, which is slower; export it with a dynamic batch to serve whole batches: %s",
            where,
            HOW_TO_EXPORT,
        )
        return True
    raise ModelLoadError(
        f"{where}: the program was exported for batches of exactly {batch} images, and "
        f"monitord's batches vary in size; export it with a dynamic batch: {HOW_TO_EXPORT}"
    )


class ProgramNetwork(nn.Module):
    """A loaded program as a module the model can move, switch to eval and run.

    TorchScript modules refuse ``requires_grad_`` and exported ones ``eval``. ``train``
    and ``eval`` reach a TorchScript program (its code may read ``self.training``) and
    stop at an exported one, whose mode was fixed when it was exported.
    """

    def __init__(self, program: nn.Module, kind: ProgramKind, *, one_row_at_a_time: bool = False) -> None:
        super().__init__()
        self.program = program
        self.kind = kind
        self.one_row_at_a_time = one_row_at_a_time

    def train(self, mode: bool = True) -> ProgramNetwork:
        self.training = mode
        if self.kind == "torchscript":
            self.program.train(mode)
        return self

    def forward(self, inputs: torch.Tensor) -> Any:
        if not self.one_row_at_a_time:
            return self.program(inputs)
        return _concatenate([self.program(inputs[row : row + 1]) for row in range(inputs.shape[0])])


def _concatenate(outputs: list[Any]) -> Any:
    """Per-image outputs of the same structure joined along the batch."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, (tuple, list)):
        return type(first)(_concatenate(list(parts)) for parts in zip(*outputs))
    if isinstance(first, Mapping):
        return {key: _concatenate([output[key] for output in outputs]) for key in first}
    raise ValueError(f"the program returns a {type(first).__name__}; {_OUTPUT_RULE}")


_OUTPUT_RULE = (
    "it must return the logits (N, classes) as a tensor, or (logits, features) as a "
    'tuple or list of two tensors, or a dict with keys "logits" and "features"'
)


class ProgramOutputs:
    """The ``FeatureSource`` of a program: logits and features read from its output.

    ``description`` says which of the two the activation signals and the embedding come
    from, once the first forward pass has shown it.
    """

    def __init__(self) -> None:
        self.description = "output of the program"

    def reset(self) -> None:
        pass

    def logits(self, output: Any) -> Any:
        return _split(output)[0]

    def read(self, output: Any, batch_size: int) -> LayerReading:
        logits, features = _split(output)
        watched = logits if features is None else features
        self.description = "logits of the program" if features is None else "features of the program"
        if watched.ndim == 0 or watched.shape[0] != batch_size:
            raise RuntimeError(
                f"the {self.description} have shape {tuple(watched.shape)} for {batch_size} "
                "images; their first dimension must be the batch"
            )
        mean, std = activation_statistics(watched)
        return LayerReading(
            mean=mean.cpu().numpy(),
            std=std.cpu().numpy(),
            embedding=pooled_features(watched).cpu().numpy(),
        )

    def failure_message(self, error: str) -> str:
        return f"model.program: {error}; return the features as a (batch, ...) tensor"

    def remove(self) -> None:
        pass


def _split(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, features or None)`` from a program's output."""
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, (tuple, list)) and len(output) == 2 and all(
        isinstance(part, torch.Tensor) for part in output
    ):
        return output[0], output[1]
    if isinstance(output, Mapping) and set(output) == {"logits", "features"} and all(
        isinstance(part, torch.Tensor) for part in output.values()
    ):
        return output["logits"], output["features"]
    raise ValueError(f"the program returns {_describe(output)}; {_OUTPUT_RULE}")


def _describe(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"a dict with keys {', '.join(map(repr, output))}"
    if isinstance(output, (tuple, list)):
        parts = ", ".join(type(part).__name__ for part in output)
        return f"a {type(output).__name__} of {len(output)} ({parts})"
    return f"a {type(output).__name__}"
