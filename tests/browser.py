"""Debian's chromium driven by selenium through Debian's chromedriver, headless.

Tests that need it call ``require_browser``: without chromium or chromedriver they skip
with the reason, unless ``MONITORD_REQUIRE_BROWSER`` is set (``.ci/run`` sets it after
installing the packages), where a missing browser is a failure. Selenium is given the
driver's path, so selenium-manager never runs (it would try to download a browser).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def missing_browser() -> str | None:
    """Why the browser cannot run here (None: it can); a failure under ``MONITORD_REQUIRE_BROWSER``."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if not missing:
        return None
    message = f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)"
    if os.environ.get("MONITORD_REQUIRE_BROWSER"):
        pytest.fail(message)
    return message


def require_browser() -> None:
    """Skip the test (fail it under ``MONITORD_REQUIRE_BROWSER``) without the browser."""
    message = missing_browser()
    if message is not None:
        pytest.skip(message)


def start_browser(width: int = 1280, height: int = 1000) -> Any:
    """A headless chromium that keeps its console log (``driver.get_log("browser")``)."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def console_errors(driver: Any) -> list[dict]:
    """The console messages of level SEVERE since the last call (errors, failed loads, CSP)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def save_small_png(png: bytes, path: Path, colours: int, max_width: int | None = None) -> None:
    """A screenshot for the README: at most ``max_width`` wide, reduced to ``colours``: a small PNG."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        small = image.convert("RGB")
    if max_width is not None:
        small.thumbnail((max_width, small.height))
    path.parent.mkdir(parents=True, exist_ok=True)
    small.quantize(colors=colours).save(path, format="PNG", optimize=True)
