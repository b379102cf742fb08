"""Headless Chromium for the web pages' browser tests (test_web_browser.py): Debian's chromium
and chromium-driver (scripts/browser-install) driven by selenium, nothing downloaded.

A `Browser` is one Chromium with a fresh profile, pointed at one `slurmrunner serve`: sign in
through the login form, open pages, read the browser's own Navigation Timing, and save
screenshots 1200 px wide.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from .conftest import wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDTH = 1200
HEIGHT = 900
# Flags that work as root in a container with no GPU and no network but 127.0.0.0/8: no
# sandbox (root), nothing fetched in the background (updates, sync, QUIC probes).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    f"--window-size={WIDTH},{HEIGHT}",
    "--force-device-scale-factor=1",
    "--hide-scrollbars",
)

# What a page sets on load and keeps until the next navigation: the test's proof that live
# updates came without a reload.
MARK = "window.__slurmrunnerTestMark"


class Browser:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.profile = Path(tempfile.mkdtemp(prefix="sr-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # see console()
        # The driver by its path: selenium's own manager would try to download one.
        self.driver = webdriver.Chrome(options=options, service=DriverService(CHROMEDRIVER))
        self.driver.set_page_load_timeout(60)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    # ---------------------------------------------------------------------------- pages

    def go(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    @property
    def path(self) -> str:
        url: str = self.driver.current_url
        return url.removeprefix(self.base_url)

    def sign_in(self, token: str) -> None:
        """Through the login form, as a person would: type the token, press the button."""
        self.driver.delete_all_cookies()
        self.go("/web/login")
        self.css("#token").send_keys(token)
        self.css("form[action='/web/login'] button[type=submit]").click()
        wait_for(lambda: self.path.startswith("/web/runs"), 30, f"the runs page ({self.path})")

    def css(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def text(self, selector: str) -> str:
        """The element's visible text, or "" when it is not there (or was just replaced)."""
        try:
            return str(self.css(selector).text)
        except (NoSuchElementException, StaleElementReferenceException):
            return ""

    def console(self) -> list[str]:
        """The console's messages since the last call (a blocked script or style is one)."""
        return [str(e.get("message", "")) for e in self.driver.get_log("browser")]

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def mark(self) -> None:
        self.js(f"{MARK} = 'set on load'")

    def marked(self) -> bool:
        return bool(self.js(f"return {MARK} === 'set on load'"))

    def navigation(self) -> dict[str, Any]:
        """The page's Navigation Timing entry (PerformanceNavigationTiming), once loaded."""
        wait_for(
            lambda: self.js(
                "const e = performance.getEntriesByType('navigation')[0];"
                "return e !== undefined && e.loadEventEnd > 0"
            ),
            30,
            "the page's load event",
            step=0.05,
        )
        entry: dict[str, Any] = self.js(
            "return performance.getEntriesByType('navigation')[0].toJSON()"
        )
        return entry

    def status(self) -> int:
        """The HTTP status of the page shown (Navigation Timing's responseStatus)."""
        return int(self.navigation().get("responseStatus", 0))

    # ------------------------------------------------------------------------ screenshots

    def screenshot(self, path: Path, selector: str | None = None, max_height: int = 1400) -> int:
        """A PNG of the page WIDTH px wide and at most `max_height` px tall: the element of
        `selector`, else the page from its top to the end of its <main>; its size in bytes."""
        top, height = self.js(
            "const el = document.querySelector(arguments[0] || 'main');"
            "const box = el.getBoundingClientRect();"
            "const top = arguments[0] ? Math.max(0, box.top + window.scrollY - 8) : 0;"
            "return [top, box.bottom + window.scrollY + 8 - top];",
            selector,
        )
        clip = {"x": 0, "y": top, "width": WIDTH, "height": min(height, max_height), "scale": 1}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": True},
        )
        data = base64.b64decode(shot["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return len(data)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is no PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
