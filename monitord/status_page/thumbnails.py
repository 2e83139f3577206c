"""A few recent images per predicted class, as small PNG thumbnails kept in memory only.

The decode threads offer every decoded image (``sample``); a token bucket lets through at
most ``RATE`` a second (``BURST`` at once), so the cost per image stays a clock read
while the page still sees a steady trickle. A taken image is shrunk and encoded there,
off the event loop; once its prediction is known it is filed under its class (``add``),
keeping the latest ``per_class``. Classes past ``MAX_CLASSES`` push out the one seen
longest ago, so a model with thousands of classes cannot grow the buffer without bound.
Nothing is ever written to disk.
"""

from __future__ import annotations

import base64
import io
import itertools
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from PIL import Image

#: Longest side of a thumbnail, in pixels.
MAX_SIDE = 64
#: Thumbnails taken per second at most, and at once after a quiet spell.
RATE = 10.0
BURST = 20.0
#: Classes kept at most (the least recently predicted go first).
MAX_CLASSES = 100


@dataclass(frozen=True)
class Thumbnail:
    id: int
    class_name: str
    confidence: float
    time: str
    png: bytes

    def to_json(self, with_image: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": self.id, "confidence": self.confidence, "time": self.time}
        if with_image:
            entry["src"] = "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")
        return entry


def shrink(image: Image.Image) -> bytes:
    """``image`` as a PNG no larger than ``MAX_SIDE`` on either side."""
    small = image.copy()
    small.thumbnail((MAX_SIDE, MAX_SIDE))
    if small.mode not in ("L", "RGB", "RGBA"):
        small = small.convert("RGBA" if "A" in small.getbands() else "RGB")
    out = io.BytesIO()
    small.save(out, format="PNG")
    return out.getvalue()


class Thumbnails:
    """The buffer. ``sample`` runs in the decode threads, everything else on the event loop."""

    def __init__(self, per_class: int, clock: Any = time.monotonic) -> None:
        self.per_class = per_class
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = BURST
        self._filled_at = clock()
        self._ids = itertools.count(1)
        self._classes: OrderedDict[str, deque[Thumbnail]] = OrderedDict()

    def sample(self, image: Image.Image) -> bytes | None:
        """A thumbnail of ``image`` if the rate allows one now, else None (the usual case)."""
        return shrink(image) if self.take() else None

    def take(self) -> bool:
        """Whether to make a thumbnail of the image at hand (the rate allows one now)."""
        if self.per_class == 0:
            return False
        with self._lock:
            now = self._clock()
            self._tokens = min(BURST, self._tokens + (now - self._filled_at) * RATE)
            self._filled_at = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def add(self, class_name: str, confidence: float, time: str, png: bytes) -> None:
        """File a sampled thumbnail under the class its image was predicted as."""
        kept = self._classes.get(class_name)
        if kept is None:
            kept = self._classes[class_name] = deque(maxlen=self.per_class)
            while len(self._classes) > MAX_CLASSES:
                self._classes.popitem(last=False)
        else:
            self._classes.move_to_end(class_name)
        kept.append(Thumbnail(next(self._ids), class_name, confidence, time, png))

    def to_json(self, after: int = 0) -> dict[str, list[dict[str, Any]]]:
        """The newest first, per class (sorted by name); the image itself only for thumbnails
        with an id above ``after`` (the page keeps those it already has)."""
        return {
            name: [thumbnail.to_json(thumbnail.id > after) for thumbnail in reversed(kept)]
            for name, kept in sorted(self._classes.items())
        }
