"""Keep the garbage collector off the objects that live as long as the process.

Once the model is loaded, PyTorch, NumPy, aiohttp and the model hold some 365,000
objects that are never freed, and every full collection walks all of them again: 80 to
160 ms on the 2-core CI machine, a pause in the middle of whatever batch is running.
``gc.freeze()`` moves everything alive at the end of start-up to a permanent generation
the collector does not scan, so a full collection only looks at what came later.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Call once start-up is done (the model loaded), before the work begins."""
    gc.collect()
    gc.freeze()
