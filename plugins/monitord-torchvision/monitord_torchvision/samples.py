"""``monitord samples``: held-out digits as PNG files, to send to the daemon by hand.

The quick start needs real images to post and to drop into the inbox; these are the
digits the default model never saw in training, written as ``DIR/<label>/<n>.png`` (the
folder layout from which the daemon also learns the true label), clean or drifted the
way ``monitord demo`` drifts them. The order is fixed by ``--seed``: the k-th image is a
``k % 10``, so ``DIR/5/0.png`` exists as soon as six images are written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from .drifts import DRIFT_KINDS, PIXEL_KINDS, DriftError, drift_image, validate_drift

#: Shown per label folder before the listing is cut short.
_LISTED_PER_LABEL = 4


@dataclass(frozen=True)
class Sample:
    """One image to write: its class, its number within the class, and its pixels."""

    label: int
    number: int
    pixels: np.ndarray

    def relative(self) -> Path:
        return Path(str(self.label), f"{self.number}.png")


def samples(count: int, seed: int = 0, kind: str | None = None, amount: float | None = None,
            split: str = "held-out") -> Iterator[Sample]:
    """``count`` held-out digits, classes in turn (0, 1, ..., 9, 0, ...), each class's
    images in an order drawn from ``seed``, drifted by ``kind`` at full ``amount`` if given.

    A class's images are used again, in the same order, once all of them were written.
    ``split`` = ``training`` takes the digits the default model trained on instead, for a
    dataset to train another model on (``monitord train --data``) that never overlaps the
    held-out ones.
    """
    from .digits import held_out_digits, training_digits

    images, labels = training_digits() if split == "training" else held_out_digits()
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels.tolist()))
    order = {label: rng.permutation(np.flatnonzero(labels == label)) for label in classes}
    for k in range(count):
        label = classes[k % len(classes)]
        number = k // len(classes)
        pixels = images[order[label][number % len(order[label])]]
        if kind is not None:
            pixels = drift_image(pixels, kind, amount, rng=rng)
        yield Sample(label, number, pixels)


def write_samples(folder: Path, items: Iterator[Sample], size: int = 8) -> list[Path]:
    """Write each sample as ``folder/<label>/<n>.png`` (replacing a file of that name),
    enlarged to ``size`` x ``size`` pixels (whole pixels repeated) when over 8."""
    from .demo_files import write_atomically
    from .digits import digit_png_bytes

    written = []
    for sample in items:
        path = folder / sample.relative()
        pixels = sample.pixels
        if size > pixels.shape[0]:
            pixels = np.kron(pixels, np.ones((-(-size // pixels.shape[0]),) * 2, dtype=pixels.dtype))[:size, :size]
        write_atomically(path, digit_png_bytes(np.ascontiguousarray(pixels)))
        written.append(path)
    return written


def describe_written(folder: Path, written: list[Path]) -> list[str]:
    """A line per label folder, naming its first files."""
    by_label: dict[str, list[Path]] = {}
    for path in written:
        by_label.setdefault(path.parent.name, []).append(path)
    lines = []
    for label in sorted(by_label, key=int):
        paths = by_label[label]
        shown = " ".join(str(path) for path in paths[:_LISTED_PER_LABEL])
        more = f" and {len(paths) - _LISTED_PER_LABEL} more" if len(paths) > _LISTED_PER_LABEL else ""
        lines.append(f"  {label}: {shown}{more}")
    return lines


@click.command("samples")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", type=click.IntRange(min=1), default=20, show_default=True,
              help="Images to write, the classes in turn (20: two of each digit).")
@click.option("--drift", "kind", type=click.Choice(list(PIXEL_KINDS)),
              help="Drift every image, as `monitord demo --drift` does.  [default: clean]")
@click.option("--amount", type=float,
              help="The drift's strength in its units. Defaults: "
              + "; ".join(f"{name} {DRIFT_KINDS[name].default_amount:g}" for name in PIXEL_KINDS) + ".")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Which held-out digits, and the noise of a noise drift.")
@click.option("--split", type=click.Choice(["held-out", "training"]), default="held-out", show_default=True,
              help="training: the digits the default model trained on (a dataset for `monitord train --data`).")
@click.option("--size", type=click.IntRange(min=8), default=8, show_default=True,
              help="Width and height of the PNGs in pixels (each digit pixel repeated).")
def samples_command(folder: Path, count: int, kind: str | None, amount: float | None, seed: int, split: str,
                    size: int) -> None:
    """Write held-out digits as PNGs to FOLDER/<label>/<n>.png, to send to the daemon.

    The digits are those the default model never saw in training (8x8 grayscale), the
    classes in turn, so FOLDER/5/0.png is a 5. Post one with curl --data-binary
    @FOLDER/5/0.png, or copy it into the inbox (inbox/5/ tells the daemon its label).
    Files of the same name are replaced.
    """
    if amount is not None and kind is None:
        raise click.UsageError("--amount needs --drift (which drift it measures)")
    if kind is not None:
        try:
            validate_drift(kind, DRIFT_KINDS[kind].default_amount if amount is None else amount)
        except DriftError as error:
            raise click.UsageError(str(error)) from None
    try:
        written = write_samples(folder, samples(count, seed, kind, amount, split), size)
    except OSError as error:
        raise click.ClickException(f"cannot write into {folder}: {error.strerror or error}") from None
    if kind is None:
        what = "clean"
    else:
        strength = DRIFT_KINDS[kind].default_amount if amount is None else amount
        what = f"drifted: {kind} {strength:g} ({DRIFT_KINDS[kind].unit})"
    click.echo(f"wrote {len(written)} {split} digits ({size}x{size} grayscale PNGs, {what}) as "
               f"{folder}/<label>/<n>.png:")
    for line in describe_written(folder, written):
        click.echo(line)
