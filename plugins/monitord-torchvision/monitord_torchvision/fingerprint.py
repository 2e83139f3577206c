"""A model's fingerprint: which weights, read through which preprocessing, watched where.

A saved drift reference (``monitord reference``) describes one model's signals and
embedding; served with other weights, another input size or another watched layer it
would flag drift that is not there, or hide drift that is. The core compares the
fingerprint saved with a reference against the served model's ``fingerprint`` attribute.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from torch import nn

from .preprocess import PreprocessSpec


def file_digest(path: Path) -> str:
    """sha256 hex digest of a file's bytes, read in chunks (a 45 MB file takes ~0.1 s)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def state_digest(network: nn.Module) -> str:
    """sha256 of a network's tensors, for a network built in code rather than read from a file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode("utf-8"))
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(*, weights_digest: str, kind: str, spec: PreprocessSpec, features: str) -> str:
    """sha256 hex digest of the weights' digest, what kind of network reads them (the
    architecture, or the program format), every field of the preprocessing and what the
    embedding measures (e.g. ``input of fc``)."""
    described = {
        "weights_sha256": weights_digest,
        "kind": kind,
        "preprocess": dataclasses.asdict(spec),
        "features": features,
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
