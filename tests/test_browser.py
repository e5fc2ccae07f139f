"""A real browser (headless Chromium) uses the site through lighttpd: upload, then the picture page."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import chromium
from tests.support.stack import Stack, running_stack, small_jpeg

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("chromium and chromium-driver are needed (make system-deps installs them)")
    with chromium(tmp_path) as driver:
        yield driver


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path / "site") as stack:
        yield stack


def test_upload_with_the_form_then_see_the_picture_page_with_its_thumbnail(
    browser: object, stack: Stack, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    picture = tmp_path / "holiday.jpg"
    picture.write_bytes(small_jpeg(seed=3, size=(640, 480)))

    browser.get(stack.url("/"))
    wait = WebDriverWait(browser, 60)
    browser.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys(str(picture))
    # The page's script uploads the picked file and lists a link to its page.
    link = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results a[href]")))
    page_url = link.get_attribute("href")
    assert page_url and page_url.startswith(stack.base_url + "/"), stack.logs()

    browser.get(page_url)
    thumb = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "img.thumb")))

    def natural_width(img: object) -> int:
        script = "return arguments[0].complete ? arguments[0].naturalWidth : 0;"
        return int(browser.execute_script(script, img))

    wait.until(lambda _: natural_width(thumb) > 0)
    assert (thumb.get_attribute("src") or "").startswith(stack.base_url + "/thumbs/")
    full = browser.find_element(By.CSS_SELECTOR, "img.full")
    wait.until(lambda _: natural_width(full) > 0)
    assert natural_width(full) == 640

    shot = tmp_path / "picture-page.png"
    # Kept with the test's temp files, for a look at what the browser showed.
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 1000
