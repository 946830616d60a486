"""Pending page: "until restart" in the duration chooser and the bulk bar (issue 17 item 2). The
rule shows "until greyproxy restarts" before it exists, lets the held request through, and is
gone once greyproxy starts again (the next request is held)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.pendingutil import HOLD, VIEWPORTS, card, held, kill_all, rules, status, wait_pending


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_until_restart_in_the_chooser(gp_factory, origin, dashboards, viewport_name):
    gp = gp_factory(hold_seconds=HOLD)
    assert rules(gp) == []
    procs = [held(gp, f"http://{origin.host}:{origin.port}/first")]
    try:
        wait_pending(gp, 1)
        dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/pending")
        page = dash.page
        c = card(page, origin.host, origin.port)
        expect(c).to_be_visible()
        c.locator("details.more summary").click()
        chooser = c.locator(".chooser-preview")
        # Typed by hand as a custom duration it is the same thing, never "never expires".
        c.locator("select[name=duration]").select_option("custom")
        c.locator("input[name=custom]").fill("restart")
        expect(chooser).to_contain_text(
            f"Allow creates: allow agent1 → {origin.host} : {origin.port} · until greyproxy restarts")
        c.locator("select[name=duration]").select_option(label="until restart")
        expect(chooser).to_contain_text(
            f"Allow creates: allow agent1 → {origin.host} : {origin.port} · until greyproxy restarts")
        expect(chooser).to_contain_text(
            f"Deny creates: deny agent1 → {origin.host} : {origin.port} · until greyproxy restarts")
        assert rules(gp) == []
        dash.shot(f"pending-until-restart-{viewport_name}")
        c.locator("button[data-chosen][data-action=allow]").click()
        expect(c).to_have_count(0)
        assert status(procs[0]) == "200"
        assert [r["path"] for r in origin.requests] == ["/first"]
        made = rules(gp)
        assert [(r["action"], r["container_pattern"], r["destination_pattern"], r["port_pattern"], r["rule_type"],
                 r["expires_at"]) for r in made] == [
            ("allow", "agent1", origin.host, str(origin.port), "until_restart", None)]
        dash.goto("/rules")  # the Rules page says when it goes
        row = dash.page.locator("#rules-table tbody tr", has=dash.page.locator(
            "td[data-label=Destination]", has_text=origin.host))
        expect(row.locator("td[data-label=Expires]")).to_have_text("at restart")
        assert dash.errors == []
    finally:
        kill_all(procs)

    # Restarted: the rule is gone and the same request is held again.
    gp.restart()
    assert rules(gp) == []
    procs = [held(gp, f"http://{origin.host}:{origin.port}/second")]
    try:
        wait_pending(gp, 1)
        assert [r["path"] for r in origin.requests] == ["/first"]
    finally:
        kill_all(procs)


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_until_restart_in_the_bulk_bar(gp_factory, dashboards, viewport_name):
    gp = gp_factory(hold_seconds=HOLD)
    assert rules(gp) == []
    procs = [held(gp, "http://127.0.0.7:81/")]
    try:
        wait_pending(gp, 1)
        dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/pending")
        page = dash.page
        c = card(page, "127.0.0.7", 81)
        expect(c).to_be_visible()
        c.locator(".select").check()
        page.locator("#bulk-duration").select_option("restart")
        expect(page.locator("#bulk-preview")).to_contain_text(
            "allow agent1 → 127.0.0.7 : 81 · until greyproxy restarts")
        page.locator("#bulk-allow").click()
        gp.wait_for(lambda: rules(gp))
        assert [(r["destination_pattern"], r["rule_type"]) for r in rules(gp)] == [("127.0.0.7", "until_restart")]
        assert dash.errors == []
    finally:
        kill_all(procs)
