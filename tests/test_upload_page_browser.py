"""The upload page as people use it, in headless Chromium through lighttpd: pick, paste, copy,
delete with the key; checks made in the browser before sending; screenshots of every page at
1280x800 and 390x844, light and dark (kept under the test's temp dir, and copied to
docs/screenshots/ when UPLOAD_SCREENSHOTS_TO_DOCS=1)."""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from handlers.storage import check_consistency
from tests.support import corpus, isobmff
from tests.support.browser import chromium
from tests.support.stack import Stack, running_stack

pytestmark = [pytest.mark.timeout(300)]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
SIZES = {"desktop": (1280, 800, False), "phone": (390, 844, True)}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path, window=(1280, 800)) as driver:
        yield driver


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path / "site", env={"UPLOAD_SITE_NAME": "Snapshelf"}) as stack:
        yield stack


def viewport(driver: Any, name: str, dark: bool = False) -> None:
    width, height, mobile = SIZES[name]
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
    scheme = {"name": "prefers-color-scheme", "value": "dark" if dark else "light"}
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [scheme]})


def shoot(driver: Any, folder: Path, name: str) -> Path:
    """A screenshot of the viewport, as a small PNG; copied to docs/ when asked."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = base64.b64decode(driver.get_screenshot_as_base64())
    with Image.open(io.BytesIO(raw)) as im:
        # 256 colours by octree: flat page colours stay exact, the file stays small.
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
        path = folder / f"{name}.png"
        small.save(path, optimize=True)
    if os.environ.get("UPLOAD_SCREENSHOTS_TO_DOCS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / path.name)
    return path


def grant_clipboard(driver: Any, origin: str) -> None:
    driver.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": origin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})


def wait_for(driver: Any, condition: Any, timeout: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def in_viewport(driver: Any, element: Any) -> bool:
    script = ("const r = arguments[0].getBoundingClientRect();"
              "return r.top >= 0 && r.bottom <= window.innerHeight && r.left >= 0"
              " && r.right <= window.innerWidth;")
    return bool(driver.execute_script(script, element))


def test_pick_paste_copy_and_delete_through_the_real_page(browser: Any, stack: Stack, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    shots = tmp_path / "screenshots"
    grant_clipboard(browser, stack.base_url)
    viewport(browser, "desktop")
    browser.get(stack.url("/"))
    assert "Snapshelf" in browser.title and css(browser, "header .brand")[0].text == "Snapshelf"
    shoot(browser, shots, "upload-desktop-light")

    # Pick two files: each gets its own row, progress, then its links and delete key.
    files = []
    for n, (fmt, size) in enumerate((("JPEG", (2400, 1600)), ("PNG", (300, 200)))):
        path = tmp_path / f"pick{n}.{fmt.lower()}"
        path.write_bytes(corpus.photo_jpeg(size, seed=n) if fmt == "JPEG" else corpus.picture(fmt, size))
        files.append(str(path))
    css(browser, 'input[type="file"]')[0].send_keys("\n".join(files))
    wait_for(browser, lambda d: len(css(d, "#results li input[id$='-key']")) == 2)
    keys = [e.get_attribute("value") for e in css(browser, "#results li input[id$='-key']")]
    assert all(k and len(k) >= 30 for k in keys)
    shoot(browser, shots, "results-desktop-light")

    # Paste a picture from the clipboard (a real Ctrl+V of an image the clipboard holds).
    browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const c = document.createElement('canvas'); c.width = 120; c.height = 80;
        const g = c.getContext('2d'); g.fillStyle = '#3a7'; g.fillRect(0, 0, 120, 80);
        c.toBlob(b => navigator.clipboard.write([new ClipboardItem({'image/png': b})])
                       .then(() => done('ok'), e => done(String(e))), 'image/png');""")
    ActionChains(browser).key_down(Keys.CONTROL).send_keys("v").key_up(Keys.CONTROL).perform()
    wait_for(browser, lambda d: len(css(d, "#results li input[id$='-key']")) == 3)
    pasted_page = css(browser, "#results li input[id$='-page']")[0].get_attribute("value")
    assert pasted_page and pasted_page.startswith(stack.base_url + "/")

    # Drop a file on the zone (Selenium cannot drag from the desktop: the drop event is made
    # in the page, with a real File in its DataTransfer).
    browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const c = document.createElement('canvas'); c.width = 90; c.height = 60;
        c.getContext('2d').fillRect(0, 0, 90, 60);
        c.toBlob(b => {
          const t = new DataTransfer();
          t.items.add(new File([b], 'dropped.png', {type: 'image/png'}));
          const zone = document.getElementById('drop');
          zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: t, bubbles: true, cancelable: true}));
          zone.dispatchEvent(new DragEvent('drop', {dataTransfer: t, bubbles: true, cancelable: true}));
          done('ok');
        }, 'image/png');""")
    wait_for(browser, lambda d: len(css(d, "#results li input[id$='-key']")) == 4)

    # Checked in the browser, never sent: too big, not a picture.
    big = tmp_path / "huge.jpg"
    with open(big, "wb") as f:
        f.truncate(21 * 1024 * 1024)
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    before = sorted(os.listdir(stack.media_root / "pictures"))
    css(browser, 'input[type="file"]')[0].send_keys(f"{big}\n{text}")
    wait_for(browser, lambda d: len(css(d, "#results .error")) == 2)
    rows = [r.text for r in css(browser, "#results li") if css(r, ".error")]
    assert any("huge.jpg" in r and "Not sent: over 20 MB." in r for r in rows), rows
    assert any("notes.txt" in r and "Not sent: not a picture" in r for r in rows), rows
    assert sorted(os.listdir(stack.media_root / "pictures")) == before

    # Copy: the button puts the code on the clipboard.
    button = css(browser, "#results li .copy-btn[data-copy$='-markdown']")[0]
    expected = css(browser, "#results li input[id$='-markdown']")[0].get_attribute("value")
    button.click()
    copied = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.clipboard.readText().then(done, e => done('error: ' + e));")
    assert copied == expected and copied.startswith("[![Picture ")

    viewport(browser, "phone")
    shoot(browser, shots, "results-phone-light")
    viewport(browser, "desktop")

    # The picture page: medium rendition shown, share box above the fold at 1280x800.
    page_url = css(browser, "#results li input[id$='-page']")[-1].get_attribute("value")
    browser.get(page_url)
    img = css(browser, "img.full")[0]
    loaded = "return arguments[0].complete && arguments[0].naturalWidth"
    wait_for(browser, lambda d: d.execute_script(loaded, img))
    assert "/medium/" in (img.get_attribute("src") or "")
    assert browser.execute_script("return arguments[0].naturalWidth", img) == 1280
    assert in_viewport(browser, css(browser, ".share")[0]), "share box below the fold"
    assert in_viewport(browser, css(browser, ".share .copy-btn")[0])
    assert css(browser, ".share .copy-btn")[0].is_displayed()
    shoot(browser, shots, "picture-desktop-light")
    viewport(browser, "desktop", dark=True)
    shoot(browser, shots, "picture-desktop-dark")
    viewport(browser, "phone")
    browser.get(page_url)
    fields = css(browser, ".share input")
    inside = "const r = arguments[0].getBoundingClientRect(); return r.right <= window.innerWidth;"
    assert fields and all(browser.execute_script(inside, f) for f in fields if f.is_displayed())
    shoot(browser, shots, "picture-phone-light")
    viewport(browser, "phone", dark=True)
    shoot(browser, shots, "picture-phone-dark")
    browser.get(stack.url("/"))
    shoot(browser, shots, "upload-phone-dark")
    viewport(browser, "phone")
    shoot(browser, shots, "upload-phone-light")

    # Delete with the key: the page's button leads to a confirmation, which deletes.
    viewport(browser, "desktop")
    browser.get(page_url)
    css(browser, "form.delete button")[0].click()
    wait_for(browser, lambda d: "/delete" in d.current_url)
    assert css(browser, "#token")[0].get_attribute("value")
    shoot(browser, shots, "confirm-desktop-light")
    css(browser, ".delete-confirm button")[0].click()
    wait_for(browser, lambda d: "is gone" in d.page_source)
    pid = page_url.rsplit("/", 1)[1]
    assert not list(stack.media_root.rglob(f"{pid}.*"))
    assert check_consistency(stack.media_root, deep=True) == []
    for name in ("upload-desktop-light", "picture-desktop-light", "picture-phone-light"):
        assert (shots / f"{name}.png").stat().st_size > 2000


def test_heic_and_avif_pass_the_browser_check_and_are_stored_as_jpeg(browser: Any, stack: Stack,
                                                                     tmp_path: Path) -> None:
    # Picked from disk, the browser names the type from the extension (or not at all).
    paths = []
    for fmt, name in (("HEIF", "phone.heic"), ("AVIF", "modern.avif")):
        path = tmp_path / name
        path.write_bytes(isobmff.encoded(fmt, (120, 90)))
        paths.append(str(path))
    browser.get(stack.url("/"))
    css(browser, 'input[type="file"]')[0].send_keys("\n".join(paths))
    wait_for(browser, lambda d: len(css(d, "#results li input[id$='-key'], #results .error")) == 2)
    assert css(browser, "#results .error") == [], [r.text for r in css(browser, "#results li")]
    assert sorted(p.suffix for p in (stack.media_root / "pictures").iterdir()) == [".jpg", ".jpg"]


def test_the_page_works_without_javascript_and_shows_every_key(browser: Any, stack: Stack,
                                                               tmp_path: Path) -> None:
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    viewport(browser, "desktop")
    browser.get(stack.url("/"))
    paths = []
    for n in range(2):
        path = tmp_path / f"nojs{n}.jpg"
        path.write_bytes(corpus.picture("JPEG", (200, 150), corpus.colour_for(n + 40)))
        paths.append(str(path))
    css(browser, 'input[type="file"]')[0].send_keys("\n".join(paths))
    css(browser, 'form#upload-form button[type="submit"]')[0].click()
    wait_for(browser, lambda d: len(css(d, "section.picture")) == 2)
    assert "," in browser.current_url
    assert len(css(browser, ".keybox input[id$='-key']")) == 2
    assert len(css(browser, "form.delete")) == 2
    # Copy buttons need the script: without it they are not shown (the fields are selectable).
    assert css(browser, ".copy-btn") and not any(b.is_displayed() for b in css(browser, ".copy-btn"))
    shoot(browser, tmp_path / "screenshots", "several-nojs-desktop-light")
