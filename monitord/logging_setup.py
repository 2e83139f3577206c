"""Log format for the daemon: one line per event, to stderr, with the logger's name."""

from __future__ import annotations

import logging


def configure_logging(level: str, process: str | None = None) -> None:
    """``process`` names one of the processes ``pipeline.workers`` starts in each of its lines."""
    where = f"[{process}] " if process else ""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s.%(msecs)03d %(levelname)-7s {where}%(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        force=True,
    )
    for noisy in ("aiohttp.access", "watchfiles.main"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
