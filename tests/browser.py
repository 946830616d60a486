"""Browser fixtures: Playwright (Python) driving Debian's Chromium, headless.

One definition for every browser test (tests/e2e and the fleet dashboard test), registered in
tests/conftest.py: a second copy of the session-wide `browser` fixture would start a second
Playwright inside the first one's event loop, which Playwright refuses.

Chromium comes from apt (`.ci/run` installs it), never from `playwright install`: nothing is
downloaded at test time. Without /usr/bin/chromium the browser tests are skipped on a developer
machine and fail in CI (`CI` set), where a skipped dashboard test would hide a broken build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--no-proxy-server",  # the dashboard is on loopback; an environment proxy must not get in between
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 10_000  # every Playwright wait is bounded by this unless a test says otherwise


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: install Debian's chromium (.ci/run does)")
        pytest.skip("no /usr/bin/chromium (apt-get install chromium); the browser tests run in CI")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


class Dashboard:
    """One browser context (cookie jar) on one greyproxy, with page errors collected."""

    def __init__(self, browser: Any, gp: Any, viewport: dict[str, int] = DESKTOP, init_script: str | None = None) -> None:
        self.gp = gp
        self.context = browser.new_context(viewport=viewport)
        self.context.set_default_timeout(WAIT_MS)
        if init_script:
            self.context.add_init_script(init_script)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def url(self, path: str) -> str:
        return f"{self.gp.api_url}{path}"

    def login(self, path: str = "/dashboard") -> Dashboard:
        """The URL `serve` prints; the server swaps the token for a cookie and redirects."""
        self.page.goto(self.url(f"/dashboard?token={self.gp.token}"))
        self.wait_live()
        if path != "/dashboard":
            self.goto(path)
        return self

    def wait_live(self) -> None:
        # Once /ws is up nothing published afterwards can be missed by the page.
        self.page.locator("#live-status[data-state=live]").wait_for(timeout=WAIT_MS)

    def goto(self, path: str) -> Any:
        response = self.page.goto(self.url(path))
        self.wait_live()
        return response

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def dashboards(browser: Any) -> Iterator[Any]:
    """open(gp, viewport=..., init_script=...) -> Dashboard; every one is closed afterwards."""
    opened: list[Dashboard] = []

    def open_(gp: Any, viewport: dict[str, int] = DESKTOP, init_script: str | None = None) -> Dashboard:
        dash = Dashboard(browser, gp, viewport, init_script)
        opened.append(dash)
        return dash

    yield open_
    for dash in opened:
        dash.close()
