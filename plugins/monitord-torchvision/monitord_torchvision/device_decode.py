"""JPEG decoding and preprocessing on the model's device (``model.decode_on_device``).

With a GPU, decoding JPEGs with Pillow on the CPU sets the pace long before the network
does. Here a micro-batch of JPEGs is decoded in one ``torchvision.io.decode_jpeg`` call
on the model's device (nvJPEG on CUDA, batched, with the hardware decoder where the GPU
has one; libjpeg-turbo on the CPU) and then oriented, resized and normalised there, in
float32, with the same semantics as ``preprocess.preprocess_image``: pixels in [0, 1],
gray repeated over RGB or colour reduced to ITU-R 601 luma as the model needs, resizing
and cropping as ``preprocess`` does (whole blocks averaged unless the spec has a
``resize_size``, then bilinear or bicubic with antialiasing, then the centre crop when
it has one), then the model's mean and std.

Split in two halves, as the core's ``EncodedInputModel`` protocol calls them:

- ``read_encoded_jpeg`` (decode threads, no pixels decoded): the header's size against
  ``pipeline.max_image_pixels``, the EXIF orientation, and the marker structure
  (``jpeg_scan``); anything it is not sure the device decoder takes goes back to the
  core's Pillow decoder by returning None, which refuses broken files with its reason.
- ``DevicePreprocessor.inputs`` (the model's thread): the batch decode. Should the
  decoder still refuse an image, the batch is split in halves until the refused images
  are found, and those are decoded on the CPU by the core's decoder and
  ``preprocess_image``; the rest of the batch stays on the device.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monitord.decode import FORMATS, DecodeError, decode_image
from PIL import Image

from .jpeg_scan import NotPlainJpeg, scan_jpeg
from .preprocess import PreprocessSpec, preprocess_image

log = logging.getLogger("monitord.torchvision")


def decode_jpeg(encoded: list[torch.Tensor], **options: object) -> list[torch.Tensor]:
    """``torchvision.io.decode_jpeg`` to RGB, imported on first use: importing torchvision
    costs the daemon's start about a second, and only JPEGs decoded on the device need it."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as decode

    return decode(encoded, **{"mode": ImageReadMode.RGB, **options})

# torchvision 0.29 marks its image codecs deprecated (in favour of TorchCodec) and warns
# on every call; once per batch would flood a log that shows warnings.
warnings.filterwarnings(
    "ignore", category=DeprecationWarning, message=r"(?s).*TorchCodec", module=r"torchvision\.io"
)

#: EXIF tag 0x0112: how the stored pixels must be turned to be upright.
_ORIENTATION_TAG = 0x0112
#: ITU-R 601-2 luma weights, as in ``preprocess``.
_LUMA = (0.299, 0.587, 0.114)
#: Pixels decoded and converted at once, at most (unless one image alone is larger):
#: 128 M pixels are 384 MB as decoded bytes and 1.5 GB as float32.
CHUNK_PIXELS = 128 * 1024 * 1024


@dataclass(frozen=True, eq=False)
class EncodedJpeg:
    """A JPEG checked from its header and markers, to be decoded with its micro-batch."""

    data: bytes
    #: Width and height as stored (before the EXIF orientation is applied).
    width: int
    height: int
    #: EXIF orientation, 1 to 8 (1: as stored); applied after decoding.
    orientation: int
    #: ``pipeline.max_image_pixels`` when it was read, for the CPU fallback.
    max_pixels: int


def read_encoded_jpeg(data: bytes, max_pixels: int) -> EncodedJpeg | None:
    """``data`` as an ``EncodedJpeg``; None for anything that should take the Pillow path.

    Raises ``DecodeError`` (a ``ValueError``) with the core's wording for an image over
    ``max_pixels``: that is decided from the header, so a decompression bomb costs
    nothing. Non-JPEG data, CMYK, arithmetic-coded or damaged JPEGs give None; the core
    then decodes them with Pillow (or refuses them with its own reason).
    """
    if len(data) < 4 or data[:3] != b"\xff\xd8\xff":
        return None
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        if image.format not in ("JPEG", "MPO"):
            return None
        width, height = image.size
        mode = image.mode
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - unreadable header or EXIF: the core says why
        return None
    if width * height > max_pixels:
        raise DecodeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (pipeline.max_image_pixels); resize it before sending"
        )
    if mode not in ("L", "RGB"):
        return None
    try:
        layout = scan_jpeg(data)
    except NotPlainJpeg:
        return None
    if (layout.width, layout.height) != (width, height):
        return None
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        orientation = 1  # Pillow's exif_transpose ignores such values too
    return EncodedJpeg(data, width, height, orientation, max_pixels)


def chunks_by_pixels(images: list[EncodedJpeg], budget: int) -> list[list[EncodedJpeg]]:
    """``images`` in consecutive runs of at most ``budget`` pixels (one image at least)."""
    chunks: list[list[EncodedJpeg]] = []
    current: list[EncodedJpeg] = []
    pixels = 0
    for image in images:
        size = image.width * image.height
        if current and pixels + size > budget:
            chunks.append(current)
            current, pixels = [], 0
        current.append(image)
        pixels += size
    if current:
        chunks.append(current)
    return chunks


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """``image`` (..., H, W) turned upright per its EXIF orientation, as Pillow's
    ``ImageOps.exif_transpose`` turns it."""
    if orientation == 2:  # mirrored left-right
        return image.flip(-1)
    if orientation == 3:  # rotated 180°
        return image.flip(-2, -1)
    if orientation == 4:  # mirrored top-bottom
        return image.flip(-2)
    if orientation == 5:  # Pillow's TRANSPOSE
        return image.transpose(-2, -1)
    if orientation == 6:  # Pillow's ROTATE_270 (90° clockwise)
        return torch.rot90(image, -1, (-2, -1))
    if orientation == 7:  # Pillow's TRANSVERSE
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # Pillow's ROTATE_90 (90° counter-clockwise)
        return torch.rot90(image, 1, (-2, -1))
    return image


class DevicePreprocessor:
    """Turns a list of ``EncodedJpeg`` into one normalised batch on ``device``.

    Used from the model's thread only. ``fallbacks`` counts the images the device
    decoder refused and the CPU decoded instead (for tests and the log).
    """

    def __init__(self, spec: PreprocessSpec, device: torch.device) -> None:
        self.spec = spec
        self.device = device
        self.fallbacks = 0
        self._mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self._luma = torch.tensor(_LUMA, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def inputs(self, images: list[EncodedJpeg]) -> tuple[torch.Tensor, dict[int, str]]:
        """(M, C, H, W) float32 on the device for the images that decode, in the order of
        ``images``, and the others by row with the reason (M = N less those).

        Decoded ``CHUNK_PIXELS`` at a time, so that a batch of large photos cannot take
        the device's memory (256 images of 40 megapixels would be 30 GB of pixels). An
        image is left out only if neither the device decoder nor the CPU path can decode
        it (``read_encoded_jpeg`` lets none such through in practice: it checks every
        marker libjpeg refuses).
        """
        pieces: list[torch.Tensor] = []
        rejected: dict[int, str] = {}
        start = 0
        for chunk in chunks_by_pixels(images, CHUNK_PIXELS):
            tensor, refused = self._chunk_inputs(chunk)
            rejected.update({start + row: reason for row, reason in refused.items()})
            pieces.append(tensor)
            start += len(chunk)
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces)), rejected

    def _chunk_inputs(self, images: list[EncodedJpeg]) -> tuple[torch.Tensor, dict[int, str]]:
        encoded = [torch.frombuffer(bytearray(image.data), dtype=torch.uint8) for image in images]
        decoded = self._decode(encoded)
        groups: dict[tuple[int, int], list[int]] = {}
        upright: dict[int, torch.Tensor] = {}
        on_cpu: dict[int, torch.Tensor] = {}
        rejected: dict[int, str] = {}
        for row, (image, pixels) in enumerate(zip(images, decoded)):
            if isinstance(pixels, Exception):
                try:
                    on_cpu[row] = self._on_cpu(image, pixels)
                except DecodeError as error:
                    rejected[row] = str(error)
                continue
            upright[row] = orient(pixels, image.orientation)
            groups.setdefault(tuple(upright[row].shape[-2:]), []).append(row)
        if len(groups) == 1 and not on_cpu and not rejected:
            # The usual case, every image of one size: no scatter into a second tensor.
            return self._preprocess(torch.stack(list(upright.values()))), {}
        kept = [row for row in range(len(images)) if row not in rejected]
        position = {row: index for index, row in enumerate(kept)}
        out = torch.empty((len(kept), *self.spec.shape), dtype=torch.float32, device=self.device)
        for rows in groups.values():
            prepared = self._preprocess(torch.stack([upright[row] for row in rows]))
            out[torch.tensor([position[row] for row in rows], device=self.device)] = prepared
        for row, tensor in on_cpu.items():
            out[position[row]] = tensor
        return out, rejected

    def _decode(self, encoded: list[torch.Tensor]) -> list[torch.Tensor | Exception]:
        """Each image decoded to (3, H, W) uint8 on the device, or why it was refused.

        ``decode_jpeg`` gives all of a list or nothing; on failure the list is split in
        halves, so a few bad images among many cost a few extra calls, not one per image.
        """
        try:
            return list(decode_jpeg(encoded, device=self.device))
        except Exception as error:  # noqa: BLE001 - the decoder's verdict on the data
            if len(encoded) == 1:
                return [error]
        middle = len(encoded) // 2
        return self._decode(encoded[:middle]) + self._decode(encoded[middle:])

    def _preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """(G, 3, h, w) uint8 of one size → (G, C, H, W) normalised float32."""
        values = pixels.to(torch.float32).div_(255.0)
        if self.spec.channels == 1:
            values = (values * self._luma).sum(dim=1, keepdim=True)
        resized = self.spec.resized_size(tuple(values.shape[-2:]))
        if values.shape[-2:] != resized:
            factors = self.spec.block_factors_for(tuple(values.shape[-2:]))
            if factors != (1, 1):
                # Pillow's Image.reduce: the last, partial block is averaged over what it holds.
                values = F.avg_pool2d(values, factors, ceil_mode=True)
            if values.shape[-2:] != resized:
                values = F.interpolate(
                    values, size=resized, mode=self.spec.interpolation, align_corners=False, antialias=True
                )
                if self.spec.interpolation == "bicubic":
                    values = values.clamp_(0.0, 1.0)  # as ``preprocess`` clips bicubic's overshoot
        if resized != self.spec.input_size:
            top, left = self.spec.crop_origin(resized)
            height, width = self.spec.input_size
            values = values[..., top : top + height, left : left + width]
        return (values - self._mean) / self._std

    def _on_cpu(self, image: EncodedJpeg, error: Exception) -> torch.Tensor:
        """The core's decoder and ``preprocess_image`` for an image the device refused."""
        self.fallbacks += 1
        log.warning(
            "the %s JPEG decoder refused a %dx%d image (%s); decoding it on the CPU instead",
            self.device.type, image.width, image.height, str(error).splitlines()[0][:200],
        )
        try:
            array = preprocess_image(decode_image(image.data, image.max_pixels), self.spec)
        except ValueError as cpu_error:
            raise DecodeError(f"{cpu_error} (the {self.device.type} decoder also refused it: {error})") from None
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
