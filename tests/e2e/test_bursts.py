"""Issue 17 item 3: bursts. Held requests grouped by container and registrable domain in a compact
view; bulk allow with a scope choice, its rules shown first, and progress; "Select all" limited to
what the filter shows; bulk delete on Rules."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.pendingutil import HOLD, VIEWPORTS, card, held, kill_all, rules, wait_pending


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_grouped_view_bulk_allow_with_scope_and_select_all_of_the_filter(gp_factory, dashboards, viewport_name):
    gp = gp_factory(hold_seconds=HOLD)
    assert rules(gp) == []
    burst = [("agent1", "api.example.com", 81), ("agent1", "cdn.example.com", 82), ("agent1", "www.example.org", 83),
             ("agent2", "api.example.com", 81), ("agent2", "static.example.com", 84)]
    procs = []
    try:
        for n, (who, host, port) in enumerate(burst):
            procs.append(held(gp, f"http://{host}:{port}/", user=who))
            wait_pending(gp, n + 1)
        dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/pending?view=grouped")
        page = dash.page
        groups = page.locator(".pending-group")
        expect(groups).to_have_count(3)
        titles = [g.locator(".group-head").inner_text().replace("\n", " ") for g in groups.all()]
        assert [re.sub(r"\s+", " ", t) for t in titles] == [
            "agent1 example.com 2 requests · 2 waiting", "agent1 example.org 1 request · 1 waiting",
            "agent2 example.com 2 requests · 2 waiting"]
        expect(page.locator(".pending-list.compact")).to_have_count(1)
        dash.shot(f"pending-grouped-{viewport_name}")

        # One tick selects a group; the bulk bar says which single rule the chosen scope makes.
        groups.nth(0).locator(".select-group").check()
        expect(page.locator("#selected-count")).to_have_text("2 selected")
        page.locator("#bulk-scope").select_option("subdomain_wildcard")
        page.locator("#bulk-duration").select_option("24h")
        expect(page.locator("#bulk-preview")).to_contain_text(
            "Allow creates 1 rule: allow agent1 → *.example.com : any port · expires in 24 h")
        page.locator("#bulk-allow").click()
        expect(page.locator("#bulk-progress .bulk-progress-text")).to_have_text(re.compile(r"^Allowed 2 of 2\b"))
        assert page.locator("#bulk-progress progress").evaluate("p => p.value === p.max")
        made = [(r["container_pattern"], r["destination_pattern"], r["port_pattern"]) for r in rules(gp)]
        assert made == [("agent1", "*.example.com", "*")]
        left = {(i["container_name"], i["destination_host"]) for i in wait_pending(gp, 0)}
        assert left == {("agent1", "www.example.org"), ("agent2", "api.example.com"), ("agent2", "static.example.com")}

        # Select all takes only what the filter shows: agent2's two, never agent1's.
        page.locator("#pending-filters [name=container]").fill("agent2")
        expect(page.locator(".pending-card")).to_have_count(2)
        expect(page.locator("#select-all-text")).to_have_text("Select all 2 shown")
        page.locator("#select-all").check()
        expect(page.locator("#selected-count")).to_have_text("2 selected")
        page.locator("#bulk-dismiss").click()
        expect(page.locator("#bulk-progress .bulk-progress-text")).to_have_text("Dismissed 2 requests")
        left = {(i["container_name"], i["destination_host"]) for i in wait_pending(gp, 0)}
        assert left == {("agent1", "www.example.org")}
        page.locator("#pending-filters [name=container]").fill("")
        expect(card(page, "www.example.org", 83)).to_be_visible()
        expect(page.locator("#selected-count")).to_have_text("0 selected")
        assert dash.errors == []
    finally:
        kill_all(procs)


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_bulk_delete_on_rules_takes_the_filtered_selection(gp, dashboards, viewport_name):
    keep = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": "keep.example"}).json()
    doomed = [gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": f"x{n}.burst.example",
                                                 "port_pattern": "443"}).json() for n in range(12)]
    dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/rules")
    page = dash.page
    page.locator("#rule-filters [name=destination]").fill("burst.example")
    expect(page.locator("#rules-table tbody tr[data-id]")).to_have_count(12)
    page.locator("#rules-select-all").check()
    expect(page.locator("#rules-selected-count")).to_have_text("12 selected")
    dash.shot(f"rules-bulk-{viewport_name}")
    page.once("dialog", lambda d: d.accept())
    page.locator("#rules-bulk-delete").click()
    expect(page.locator("#rules-bulk-progress .bulk-progress-text")).to_have_text("Deleted 12 of 12 rules")
    ids = {r["id"] for r in gp.api("GET", "/api/rules", params={"limit": 1000}).json()["items"]}
    assert keep["id"] in ids and not ids & {r["id"] for r in doomed}
    expect(page.locator("#rules-table tbody tr[data-id]")).to_have_count(0)
    assert dash.errors == []
