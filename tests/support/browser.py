"""Headless Chromium driven by Selenium, for tests of the pages (a missing browser fails the test:
the Makefile installs chromium and chromedriver)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextlib.contextmanager
def chromium(folder: Path, *, window: tuple[int, int] = (1200, 900)) -> Iterator[Any]:
    """A browser with its profile and driver log in ``folder``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={folder / 'chromium-profile'}",
                f"--window-size={window[0]},{window[1]}", "--hide-scrollbars"):
        options.add_argument(arg)
    # An explicit driver path: Selenium must never try to fetch a driver of its own.
    driver_path = shutil.which("chromedriver") or CHROMEDRIVER
    service = Service(driver_path, log_output=str(folder / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
