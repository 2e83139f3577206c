"""Make a centroid file from a folder of labelled images: ``DIR/<class>/<image>``.

    python -m monitord_example_model.build DIR centroids.json [--size 8 8] [--held-out-every 4]

Every ``--held-out-every``-th image of each class is left out of the class means and kept
in the file as the reference the detectors compare the stream with.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .centroids import fit_centroids, save


def read_labelled_folder(folder: Path) -> tuple[list[Image.Image], list[str]]:
    """Images of ``folder/<class>/*`` and their class names; a file Pillow cannot read is
    an error naming it."""
    images, labels = [], []
    for class_folder in sorted(path for path in folder.iterdir() if path.is_dir()):
        for path in sorted(p for p in class_folder.iterdir() if p.is_file()):
            try:
                with Image.open(path) as image:
                    images.append(image.convert("L"))
            except (UnidentifiedImageError, OSError) as error:
                raise ValueError(f"{path}: not an image Pillow can read ({error}); remove it or convert it") from None
            labels.append(class_folder.name)
    if not images:
        raise ValueError(f"{folder} holds no images in class folders; lay them out as {folder}/<class>/<image>")
    return images, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitord_example_model.build", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="labelled images: FOLDER/<class>/<image>")
    parser.add_argument("output", type=Path, help="the centroid file to write (JSON)")
    parser.add_argument("--size", type=int, nargs=2, default=(8, 8), metavar=("WIDTH", "HEIGHT"),
                        help="gray grid the images are reduced to (default 8 8)")
    parser.add_argument("--held-out-every", type=int, default=4, metavar="K",
                        help="keep every K-th image of a class as the reference (0: none; default 4)")
    args = parser.parse_args(argv)
    if min(args.size) < 1 or args.held_out_every < 0:
        parser.error("--size takes two positive numbers and --held-out-every one of at least 0")
    try:
        images, labels = read_labelled_folder(args.folder)
        centroids = fit_centroids(images, labels, tuple(args.size), args.held_out_every)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    save(centroids, args.output)
    print(f"{args.output}: {len(centroids.class_names)} classes from {len(images)} images "
          f"({len(centroids.reference)} held out as the reference), {args.size[0]}x{args.size[1]} pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
