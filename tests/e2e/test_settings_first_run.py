"""Issue 17 item 9: settings and the first run. The CA from the page, the Conversations toggle,
the bypass list checked with every bad line named, the notify-send hint; an empty Pending page
that says how to point an agent here and offers browser notifications at the first held
request; and no axe-core findings on any page."""

from __future__ import annotations

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from tests.e2e.pendingutil import HOLD, VIEWPORTS, card, kill_all
from tests.integration.netutil import curl

PAGES = ["dashboard", "pending", "rules", "logs", "activity", "conversations", "sessions", "credentials", "audit",
         "settings"]

# Headless Chromium answers "denied" without asking; this stands in for a browser that asks.
ASKING_NOTIFICATIONS = """
window.__asked = 0;
window.Notification = class {
  static permission = "default";
  static requestPermission() { window.__asked += 1; window.Notification.permission = "granted"; return Promise.resolve("granted"); }
  constructor() {}
  close() {}
};
"""


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_settings_ca_conversations_bypass_and_notifier_hint(gp, dashboards, viewport_name):
    dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/settings")
    page = dash.page
    ca = gp.data_dir / "ca-cert.pem"

    # The notifier hint: this machine has no notify-send.
    if not gp.api("GET", "/api/settings").json()["notifications"]["available"]:
        expect(page.locator("#notify-hint")).to_be_visible()
        expect(page.locator("#notify-hint")).to_contain_text("apt-get install libnotify-bin")

    # The CA: generated at first start (issue 15), so the page offers to replace it.
    expect(page.locator("#cert-status")).to_contain_text("CA certificate")
    before = ca.read_bytes()
    page.once("dialog", lambda d: d.accept())
    page.locator("#cert-replace").click()
    expect(page.locator(".toast")).to_contain_text("CA replaced and loaded")
    assert ca.read_bytes() != before

    # Conversations on and off from the page.
    box = page.locator("#conv-enabled")
    expect(box).to_be_checked()
    box.uncheck()
    assert gp.wait_for(lambda: gp.api("GET", "/api/settings").json()["conversations"]["enabled"] is False)
    box.check()
    assert gp.wait_for(lambda: gp.api("GET", "/api/settings").json()["conversations"]["enabled"] is True)

    # The bypass list: every bad line named at once, nothing saved; then a good list is.
    form = page.locator("#bypass-form")
    form.locator("textarea").fill("good.example\nbad host!\n*.bank.example\nwhat?")
    form.locator("button[type=submit]").click()
    error = form.locator(".form-error")
    expect(error).to_contain_text("2 lines to fix, nothing saved")
    expect(error).to_contain_text('line 2: "bad host!"')
    expect(error).to_contain_text('line 4: "what?"')
    assert gp.api("GET", "/api/settings").json()["mitm"]["bypass"] == []
    form.locator("textarea").fill("good.example\n*.bank.example")
    form.locator("button[type=submit]").click()
    expect(error).to_be_hidden()
    assert gp.wait_for(lambda: gp.api("GET", "/api/settings").json()["mitm"]["bypass"] == ["good.example", "*.bank.example"])
    dash.shot(f"settings-{viewport_name}")
    assert dash.errors == []


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_first_run_pending_says_how_and_offers_notifications(gp_factory, dashboards, viewport_name):
    gp = gp_factory(hold_seconds=HOLD)
    dash = dashboards(gp, viewport=VIEWPORTS[viewport_name], init_script=ASKING_NOTIFICATIONS).login("/pending")
    page = dash.page
    how = page.locator(".pending-list .empty .how-to")
    expect(how).to_be_visible()
    expect(how).to_contain_text(f"export HTTP_PROXY=http://agent1:x@127.0.0.1:{gp.ports['http']}")
    expect(how).to_contain_text(f"ALL_PROXY=socks5h://agent1:x@127.0.0.1:{gp.ports['socks5']}")
    expect(page.locator("#notify-offer")).to_be_hidden()
    dash.shot(f"pending-first-run-{viewport_name}")

    # Do what it says: the request appears, and the page offers notifications once.
    proc = curl("-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", "-o", "/dev/null", "http://127.0.0.11:81/",
                timeout=int(HOLD) + 10)
    try:
        expect(card(page, "127.0.0.11", 81)).to_be_visible()
        offer = page.locator("#notify-offer")
        expect(offer).to_be_visible()
        offer.locator("#notify-offer-yes").click()
        expect(offer).to_be_hidden()
        assert page.evaluate("window.__asked") == 1
        expect(page.locator(".toast")).to_contain_text("Browser notifications are on")
        dash.goto("/pending")
        expect(card(page, "127.0.0.11", 81)).to_be_visible()
        expect(page.locator("#notify-offer")).to_be_hidden()  # asked once, not at every visit
        assert dash.errors == []
    finally:
        kill_all([proc])


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_no_axe_findings_on_any_page(gp_factory, dashboards, viewport_name):
    gp = gp_factory(hold_seconds=HOLD)
    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": "a.example"}).ok
    procs = [curl("-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", "-o", "/dev/null", f"http://127.0.0.12:{p}/",
                  timeout=int(HOLD) + 10) for p in (81, 82)]
    try:
        dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/pending")
        expect(dash.page.locator(".pending-card")).to_have_count(2)
        found = {}
        for name in PAGES:
            dash.goto(f"/{name}")
            dash.page.wait_for_timeout(300)  # the lists fill in
            violations = Axe().run(dash.page).response["violations"]
            if violations:
                found[name] = [(v["id"], v["impact"], len(v["nodes"])) for v in violations]
        assert found == {}
    finally:
        kill_all(procs)
