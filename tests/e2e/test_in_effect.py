"""Issue 17 item 1: silent allow-all and per-container open/report modes are shown on every page,
with the time left and a way to end them, at desktop and phone size."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import DESKTOP, PHONE
from tests.integration.netutil import curl

VIEWPORTS = {"desktop": DESKTOP, "phone": PHONE}


def fetch_status(gp, url: str) -> str:
    """HTTP status curl gets through the proxy as agent1 (a held request ends at the short hold)."""
    proc = curl("-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", "-o", "/dev/null", "-w", "%{http_code}", url,
                timeout=20)
    out, _ = proc.communicate(timeout=25)
    return out.decode()


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_silent_allow_all_banner_on_every_page_with_time_left_and_off(gp_factory, origin, dashboards, viewport_name):
    gp = gp_factory(hold_seconds=2)
    dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/rules")
    page = dash.page
    banner = page.locator("#mode-banner")
    expect(banner).to_be_hidden()
    page.evaluate("window.__sameDocument = true")

    # Turned on elsewhere (API): the open page shows it live, with the time left counting down.
    assert gp.api("POST", "/api/allowall", json={"mode": "allow", "duration": "1h"}).status_code == 200
    line = banner.locator(".mode-line[data-kind=silent]")
    expect(line).to_be_visible()
    expect(line).to_contain_text("every connection is allowed without asking")
    expect(line.locator(".mode-left")).to_have_text(re.compile(r"^59 min \d+ s left\.$"))
    first = line.locator(".mode-left").inner_text()
    expect(line.locator(".mode-left")).not_to_have_text(first, timeout=3000)  # it counts down
    assert page.evaluate("window.__sameDocument") is True
    assert fetch_status(gp, f"http://{origin.host}:{origin.port}/silent") == "200"
    assert [r["path"] for r in origin.requests] == ["/silent"]

    # Every page carries it, at this size without sideways scrolling.
    for name in ("dashboard", "pending", "logs", "activity", "audit", "settings"):
        dash.goto(f"/{name}")
        expect(line).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), name
    dash.shot(f"banner-silent-{viewport_name}")

    # Off from the banner: the proxy asks again (the next request is held, then refused), the
    # origin sees nothing more.
    line.locator("button.mode-off").click()
    expect(banner).to_be_hidden()
    assert gp.api("GET", "/api/allowall").json() == {"active": False}
    assert fetch_status(gp, f"http://{origin.host}:{origin.port}/after") == "403"
    assert [r["path"] for r in origin.requests] == ["/silent"]

    # Until restart: no countdown, said in words; deny-all is named as such.
    assert gp.api("POST", "/api/allowall", json={"mode": "deny", "duration": "restart"}).status_code == 200
    expect(line).to_contain_text("Silent deny-all is on")
    expect(line.locator(".mode-left")).to_have_text("Until greyproxy restarts.")
    assert dash.errors == []


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_container_open_and_report_modes_are_shown_and_can_be_ended(gp, dashboards, viewport_name):
    dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/pending")
    page = dash.page
    banner = page.locator("#mode-banner")
    report = gp.api("POST", "/api/container-modes", json={"container_pattern": "agent1", "mode": "report"}).json()
    gp.api("POST", "/api/container-modes", json={"container_pattern": "build-*", "mode": "open"})
    gp.api("POST", "/api/container-modes", json={"container_pattern": "ci", "mode": "enforce"})
    lines = banner.locator(".mode-line[data-kind=container]")
    expect(lines).to_have_count(2)  # enforce is the normal state, not shown
    expect(lines.nth(0)).to_contain_text("Container agent1 is in report mode")
    expect(lines.nth(1)).to_contain_text("Container build-* is in open mode")
    dash.shot(f"banner-modes-{viewport_name}")

    lines.nth(0).locator("button.mode-off").click()
    expect(lines).to_have_count(1)
    modes = {m["container_pattern"]: m["mode"] for m in gp.api("GET", "/api/container-modes").json()["items"]}
    assert modes == {"build-*": "open", "ci": "enforce"}
    assert report["id"] not in [m["id"] for m in gp.api("GET", "/api/container-modes").json()["items"]]
    assert dash.errors == []
