"""Log format for the daemon: one line per event, to stderr, with the logger's name."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        force=True,
    )
    for noisy in ("aiohttp.access", "watchfiles.main"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
