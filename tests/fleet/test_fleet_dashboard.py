"""The dashboard on node A lists a request held on node B, live, with B's waiter, and its
approval there releases B's connection (issue 14). Debian's Chromium, as tests/e2e."""

from __future__ import annotations

import re

from tests.integration.netutil import curl


def test_dashboard_on_a_lists_and_allows_a_request_held_on_b(two_nodes, origin, dashboards):  # noqa: F811
    from playwright.sync_api import expect

    a, b = two_nodes
    dash = dashboards(a).login("/pending")
    page = dash.page
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    proc = curl("-x", f"http://agent1:x@127.0.0.1:{b.ports['http']}", "-w", "\\n%{http_code}",
                f"http://{origin.host}:{origin.port}/", timeout=30)
    try:
        card = page.locator(".pending-card", has=page.locator(".dest-host", has_text=origin.host)).filter(
            has=page.locator(".dest-port", has_text=f":{origin.port}"))
        expect(card).to_be_visible()
        expect(card.locator(".chip-container")).to_have_text("agent1")
        expect(card.locator(".waiting")).to_contain_text(re.compile(r"1 waiting"))  # B's waiter, seen from A
        assert page.evaluate("window.__sameDocument") is True  # it arrived live over A's WebSocket
        dash.shot("fleet-pending-from-other-node")
        card.locator("button[data-action=allow]").first.click()
        out, _ = proc.communicate(timeout=10)
        body, _, status = out.decode().rpartition("\n")
        assert status == "200" and body.encode() == origin.body
        expect(card).to_have_count(0)
    finally:
        proc.kill()
