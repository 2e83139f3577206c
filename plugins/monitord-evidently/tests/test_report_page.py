"""The report page in a real browser (Debian's headless chromium through selenium): it
draws Evidently's dashboard offline, its summary matches the JSON, and with
``MONITORD_WRITE_SCREENSHOTS=1`` it is photographed for the README
(docs/images/evidently-report.png).

Without chromium the test is skipped, saying so; with ``MONITORD_REQUIRE_BROWSER=1`` (CI)
a missing browser fails it instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from browser import console_errors, save_small_png, start_browser
from digit_logs import DigitRows, write_log
from monitord_evidently.report import report_for
from monitord_evidently.window import parse_window

SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "images" / "evidently-report.png"
#: The README's images stay small: a palette of this many colours.
COLOURS = 48


def test_the_report_page_draws_offline_and_matches_its_json(
        tmp_path: Path, digits_artifact: Path, rotated_rows: DigitRows) -> None:
    write_log(tmp_path / "state", rotated_rows, rotated_rows.stream(500, seed=21), labelled=True)
    report = report_for(tmp_path / "state", digits_artifact, parse_window("500"))
    page = tmp_path / "report.html"
    page.write_text(report.html, encoding="utf-8")
    driver = start_browser(1200, 1000)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        driver.get(page.as_uri())
        verdict = driver.find_element(By.ID, "verdict").text
        assert verdict.startswith(f"drift in {len(report.drifted)} of {len(report.document['signals'])} columns")
        shown = {row.find_elements(By.TAG_NAME, "td")[0].text: row.find_elements(By.TAG_NAME, "td")[1].text
                 for row in driver.find_elements(By.CSS_SELECTOR, "#signals tbody tr")}
        assert shown == {name: "drift" if verdict["drifted"] else "no drift"
                         for name, verdict in report.document["signals"].items()}
        frames = driver.find_elements(By.CSS_SELECTOR, "iframe.evidently-ui-iframe")
        assert len(frames) == 2  # drift, and quality (the log is labelled)
        driver.switch_to.frame(frames[0])
        # Evidently's dashboard is drawn by its inlined script: wait for its text to appear.
        WebDriverWait(driver, 60).until(lambda d: "drift" in d.find_element(By.TAG_NAME, "body").text.lower())
        drawn = driver.find_element(By.TAG_NAME, "body").text
        assert "Dataset Drift is detected" in drawn and f"{len(report.document['signals'])}\nColumns" in drawn
        driver.switch_to.default_content()
        errors = console_errors(driver)
        assert errors == [], errors
        if os.environ.get("MONITORD_WRITE_SCREENSHOTS") == "1":
            WebDriverWait(driver, 30).until(lambda d: float(frames[0].get_attribute("height") or 0) > 400)
            # Evidently's dashboard, with the end of the summary above it.
            driver.set_window_size(1200, 1300)
            driver.execute_script("window.scrollTo(0, document.querySelector('#signals').getBoundingClientRect().bottom"
                                  " + window.scrollY - 160)")
            save_small_png(driver.get_screenshot_as_png(), SCREENSHOT, COLOURS)
    finally:
        driver.quit()

