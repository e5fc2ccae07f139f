"""The upload page in a real headless browser: picking several files uploads each with JS."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver

from handlers.storage import check_consistency
from tests.support import corpus
from tests.support.stack import running_stack

# The Makefile installs chromium and chromedriver; a missing browser is a failure, not a skip.
pytestmark = [pytest.mark.timeout(180)]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or ""
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


def test_choosing_two_files_uploads_both_and_links_their_pages(tmp_path: Path, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    files = []
    for n, fmt in enumerate(("JPEG", "PNG")):
        path = tmp_path / f"pick{n}.{fmt.lower()}"
        path.write_bytes(corpus.picture(fmt, (90, 60), corpus.colour_for(n + 7)))
        files.append(str(path))
    with running_stack(tmp_path) as stack:
        driver = browser
        driver.get(stack.base_url + "/")  # type: ignore[attr-defined]
        field = driver.find_element(By.CSS_SELECTOR, 'input[type="file"]')  # type: ignore[attr-defined]
        field.send_keys("\n".join(files))

        def links(d: object) -> list[str]:
            found = d.find_elements(By.CSS_SELECTOR, "#results li a[href] img")  # type: ignore[attr-defined]
            return [e.find_element(By.XPATH, "..").get_attribute("href") for e in found]

        WebDriverWait(driver, 60).until(lambda d: len(links(d)) == 2)
        pages = links(driver)
        assert all(p.startswith(stack.base_url + "/") for p in pages)
        driver.get(pages[0])  # type: ignore[attr-defined]
        # The upload sets the delete-key cookie, so the uploader's own page offers deletion.
        assert driver.find_elements(By.CSS_SELECTOR, "form.delete button")  # type: ignore[attr-defined]
        assert check_consistency(stack.media_root, deep=True) == []
