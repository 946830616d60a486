"""Issue 17 item 6: when greyproxy is unreachable the page says so once (a banner), its controls
are disabled and no toast piles up; when it is back, everything is live again."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.pendingutil import HOLD, VIEWPORTS, card, held, kill_all, wait_pending


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_offline_banner_disables_buttons_and_recovers(gp_factory, dashboards, viewport_name):
    gp = gp_factory(hold_seconds=HOLD)
    procs = [held(gp, "http://127.0.0.9:81/")]
    try:
        wait_pending(gp, 1)
        dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/pending")
        page = dash.page
        c = card(page, "127.0.0.9", 81)
        expect(c).to_be_visible()
        api_port = gp.ports["api"]

        gp.stop()
        kill_all(procs)
        procs = []
        banner = page.locator("#offline-banner")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("greyproxy is not reachable")
        expect(c.locator("button[data-label='Allow once']")).to_be_disabled()
        expect(page.locator("#select-all")).to_be_disabled()
        # Typing a filter (a REST call that fails) adds no error toast.
        page.locator("#pending-filters [name=container]").evaluate("el => el.dispatchEvent(new Event('input', {bubbles: true}))")
        page.wait_for_timeout(1500)
        expect(page.locator(".toast-error")).to_have_count(0)
        dash.shot(f"offline-{viewport_name}")

        # Back on the same port: the banner goes, the buttons work again, the list is re-read.
        gp.extra_args += ["--listen-api", f"127.0.0.1:{api_port}"]
        gp.start()
        expect(banner).to_be_hidden(timeout=20_000)
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
        expect(c.locator("button[data-label='Allow once']")).to_be_enabled()
        c.locator("button[data-label=Dismiss]").click()
        assert gp.wait_for(lambda: gp.api("GET", "/api/pending/count").json()["count"] == 0, timeout=10)
        assert dash.errors == []
    finally:
        kill_all(procs)
