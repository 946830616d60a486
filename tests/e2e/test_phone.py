"""Issue 17 item 4: usable on a phone (and still right on a laptop): details open where the user
is, the nav shows the current page, host:port never wraps inside a label, thumb-sized buttons,
Deny kept away from Always."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.pendingutil import HOLD, VIEWPORTS, card, held, kill_all, wait_pending
from tests.integration.netutil import curl

LONG_HOST = "a-rather-long-subdomain-label.another-long-label-here.example-company.com"

# Where the rendered text of an element breaks into lines: the character before each break.
BREAKS_JS = """el => {
  const chars = [];
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (let i = 0; i < node.length; i++) {
      const range = document.createRange();
      range.setStart(node, i); range.setEnd(node, i + 1);
      const rect = range.getClientRects()[0];
      if (rect) chars.push([node.data[i], Math.round(rect.top)]);
    }
  }
  const before = [];
  for (let i = 1; i < chars.length; i++) if (chars[i][1] > chars[i - 1][1] + 2) before.push(chars[i - 1][0]);
  return before;
}"""


def gap(a: dict, b: dict) -> float:
    """Distance between two boxes (0 when they touch or overlap)."""
    dx = max(b["x"] - (a["x"] + a["width"]), a["x"] - (b["x"] + b["width"]), 0)
    dy = max(b["y"] - (a["y"] + a["height"]), a["y"] - (b["y"] + b["height"]), 0)
    return max(dx, dy)


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_nav_shows_the_current_page(gp, dashboards, viewport_name):
    viewport = VIEWPORTS[viewport_name]
    dash = dashboards(gp, viewport=viewport).login()
    for name in ("settings", "audit", "credentials", "dashboard"):
        dash.goto(f"/{name}")
        link = dash.page.locator(f'.nav a[aria-current=page][href="/{name}"]')
        box = link.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], f"{name}: {box}"
    assert dash.errors == []


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_pending_card_on_a_phone_wraps_at_dots_big_buttons_deny_apart(gp_factory, dashboards, viewport_name):
    gp = gp_factory(hold_seconds=HOLD)
    procs = [held(gp, f"http://{LONG_HOST}:8443/")]
    try:
        wait_pending(gp, 1)
        dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/pending")
        page = dash.page
        c = card(page, LONG_HOST, 8443)
        expect(c).to_be_visible()
        breaks = c.locator(".dest-token").evaluate(BREAKS_JS)
        assert all(ch == "." for ch in breaks), f"host:port broke inside a label after {breaks}"
        if viewport_name == "phone":
            assert breaks, "the long name should need more than one line at 390 px"
            for button in c.locator(".actions .btn").all():
                assert button.bounding_box()["height"] >= 44, button.inner_text()
        always = c.locator("button[data-label=Always]").bounding_box()
        deny = c.locator("button[data-label=Deny]").bounding_box()
        assert gap(always, deny) >= 20, (always, deny)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        dash.shot(f"pending-long-host-{viewport_name}")
        assert dash.errors == []
    finally:
        kill_all(procs)


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_transaction_detail_opens_where_the_user_is(gp, origin, dashboards, viewport_name):
    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                              "port_pattern": str(origin.port)}).status_code == 201
    for n in range(25):
        proc = curl("-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", "-o", "/dev/null",
                    f"http://{origin.host}:{origin.port}/item{n}", timeout=10)
        proc.communicate(timeout=15)
    if gp.api("GET", "/api/transactions").status_code == 404:
        pytest.skip("no transactions API in this build")
    dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/activity?tab=traffic")
    page = dash.page
    rows = page.locator("#traffic-table tbody tr[data-id]")
    expect(rows.first).to_be_visible()
    row = page.locator("#traffic-table tbody tr[data-id]", has_text="/item0")  # the oldest: the bottom of the list
    row.scroll_into_view_if_needed()
    row.click()
    detail = page.locator("#txn-detail")
    expect(detail).to_contain_text("/item0")
    box = detail.bounding_box()
    height = VIEWPORTS[viewport_name]["height"]
    assert 0 <= box["y"] < height * 0.5, f"the detail opened out of sight at y={box['y']}"
    dash.shot(f"activity-detail-{viewport_name}")
    detail.locator("button", has_text="Close").click()
    expect(detail).to_be_hidden()
    row_box = row.bounding_box()
    assert 0 <= row_box["y"] < height, "closing returns to the row"
    assert dash.errors == []
